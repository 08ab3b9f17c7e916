"""The pool's dispatch state, and every decision made under its lock.

    call()         ──checkout──▶ least-loaded Slot (every slot busy: a FIFO of Waiters)
    submit()/map() ──enqueue───▶ `pending` Jobs ──plan──▶ per slot with room, its batch
    a reader's replies ──file──▶ blocking callers' SyncCalls, async settlements
    a link's death  ──lose_link─▶ its async calls failed or re-sent, its sessions lost

Lock discipline: every method of `PoolState` runs with `lock` held (the caller takes it)
and does no I/O and no waiting. What must happen outside the lock (settling futures, which
runs their callbacks; writing batches; timers; starting an overflow worker; closing a
dead link's sockets) is returned as `Effects` for `PoolIO.run` to carry out. The lock is
never held across blocking I/O or a request to the tree: the App's reader thread delivers
the answers to those requests, and the pool's telemetry hook runs on that thread too. The
one thing done under it besides `notify` is its event-loop twin: a loop caller's `wake()`
(Waiter, SyncCall), which only schedules a callback on that loop (``call_soon_threadsafe``:
a non-blocking write to the loop's wake-up channel, no lock of the loop's taken).
Settling is done under it in one case: a plain reply to a `PoolFuture` nobody waits on
(no Condition, so no waiter and no callback), which `results.settle_filed` settles as it
is filed, a batch at a time; every other outcome goes to `Effects`.

Busy. A blocking caller needs ``load < max_in_flight`` (1 by default: one caller per
worker at a time, as in a classic checkout pool, so a long call never queues another
caller behind it while a sibling is free); an asynchronous call needs ``load < pipeline``
(a worker serves its channel in order, so keeping several calls on the wire keeps it busy
and lets them go out in one write). Queued blocking callers go first: while any waits,
asynchronous calls are not topped up, so a long `map` cannot starve `call`.

Batching is Nagle's rule applied to calls: a call goes out at once when some worker is
idle; while every worker has calls in flight, new calls wait in `pending` until replies
free room (the reader then plans all that waits, up to the cap, as one batch per worker).

Never ran vs. may have run. A call refused with NotRun, or whose frames never left (the
link was already broken or draining), is dispatched again. A call in flight when its
worker died fails with WorkerCrashed, unless its method is idempotent (the worker's
policy) and the connection_error row has retries left.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import CallTimeout, PoolExhausted, SessionLost, WorkerCrashed
from ..wire import messages as P
from .link import NOT_SENT, Job, Link, Slot, SyncCall
from .results import settle_filed
from .sessions import Sessions

__all__ = ["PoolState", "Waiter", "Effects", "Presend"]


@attrs.define(eq=False)
class Waiter:
    """A blocking caller queued for a slot (FIFO); `slot` is set when one is handed over.

    The caller's frame (`cid`, `frame`) waits with it: whoever hands it a slot whose
    channel is open also writes the frame (`sent` = the link and its SyncCall), so the
    worker starts on it without waiting for the queued thread to wake up.
    """

    session: str | None
    limit: int
    on_lost: str
    cond: threading.Condition
    cid: int
    frame: bytes
    wake: Callable[[], None] | None = None  # a caller on an event loop (see SyncCall)
    slot: Slot | None = None
    sent: tuple[Link, SyncCall] | None = None
    error: BaseException | None = None


@attrs.frozen
class Presend:
    """A queued caller's frame, written for it on the link it was handed."""

    link: Link
    frame: bytes
    cid: int
    entry: SyncCall


class Effects:
    """What a section under the lock decided that must happen outside it.

    Lists are made on first use (most sections decide nothing): `settle` holds
    (job, outcome, path) for futures and map tables; `send` (slot, jobs) batches to write,
    one write per slot; `presend` queued callers' frames; `progress` links whose progress
    check is due at `when`; `retire` overflow slots to look at when their idle time is up;
    `resend` (delay, jobs) idempotent calls to send again; `close` dead links whose
    sockets nobody reads any more; `stop_writing` links of leaving workers; `grow` asks
    for an overflow worker.
    """

    __slots__ = ("settle", "send", "presend", "progress", "retire", "resend", "close",
                 "stop_writing", "grow")

    def __init__(self) -> None:
        self.settle: list[tuple[Job, Any, str]] | None = None
        self.send: list[tuple[Slot, list[Job]]] | None = None
        self.presend: list[Presend] | None = None
        self.progress: list[tuple[float, Link]] | None = None
        self.retire: list[tuple[float, Slot]] | None = None
        self.resend: list[tuple[float, list[Job]]] | None = None
        self.close: list[Link] | None = None
        self.stop_writing: list[Link] | None = None
        self.grow = False

    def settled(self, items: list[tuple[Job, Any, str]]) -> None:
        if items:
            if self.settle is None:
                self.settle = items
            else:
                self.settle.extend(items)

    def add(self, field: str, item: Any) -> None:
        items = getattr(self, field)
        if items is None:
            setattr(self, field, [item])
        else:
            items.append(item)


class PoolState:
    """The dispatch state of one pool, shared by every client view of it.

    `generation_of(path)` is the App's count of reported starts of the worker at `path`
    (a slot marked down at one count is usable again at a higher one). `size`,
    `max_overflow` and `checkout_timeout` are the pool's, learned when it starts.
    """

    def __init__(self, path: str, generation_of: Callable[[str], int]) -> None:
        self.path = path
        self.generation_of = generation_of
        self.lock = threading.Lock()
        self.open_cond = threading.Condition(self.lock)  # a slot's link finished opening
        self.queued = threading.Condition(self.lock)  # notified when a caller queues
        self.slots: list[Slot] = []
        self.waiters: deque[Waiter] = deque()
        # What the queued callers want, kept as they queue and leave (so that `serve` and
        # `plan` need not scan them): how many are tied to a session's worker, and how
        # many want each `limit` (a view's max_in_flight).
        self.session_waiters = 0
        self.waiter_limits: Counter[int] = Counter()
        self.pending: deque[Job] = deque()  # async calls (a map chunk is one) not sent yet
        self.sessions = Sessions(self.usable)
        self.size = self.max_overflow = 0
        self.checkout_timeout = 5.0
        self.retire_after = 1.0
        self.growing = False
        self.grow_after = 0.0
        self.gone = False
        self.ids = itertools.count(1)  # call ids, unique per pool (so per link too)

    # ------------------------------------------------------------------ slots
    def new_slot(self, child_id: str, *, overflow: bool) -> Slot:
        """A Slot for the pool's child `child_id` (``<pool id>-<index>``)."""
        path = f"{self.path}/{child_id}" if self.path else child_id
        return Slot(id=child_id, path=path, index=int(child_id.rpartition("-")[2]),
                    overflow=overflow)

    def add_slot(self, slot: Slot) -> None:
        self.slots.append(slot)
        self.slots.sort(key=lambda s: s.index)

    def remove_slot(self, slot: Slot, why: str | None = None) -> None:
        """The slot's child is gone from the tree (by identity: a new slot may reuse the
        id); with `why`, the sessions that never reached it are lost too."""
        if slot in self.slots:
            self.slots.remove(slot)
        if why is not None:
            self._lose_sessions(slot, None, why)

    def usable(self, slot: Slot) -> bool:
        if slot.retiring:
            return False
        if slot.down_gen is not None:
            if self.generation_of(slot.path) == slot.down_gen:
                return False
            slot.down_gen = None  # a newer process started since
        return True

    def mark_down(self, slot: Slot, generation: int) -> None:
        """The slot's worker was not running when asked (start count `generation`)."""
        slot.down_gen = generation

    # ------------------------------------------------------------------ checkout
    def checkout(self, session: str | None, limit: int, on_lost: str, cid: int,
                 frame: bytes, wake: Callable[[], None] | None = None
                 ) -> tuple[Slot, tuple[Link, SyncCall] | None] | Waiter:
        """A slot with room for one blocking call and, when its link is open, the entry
        registered there for `cid`; or, when the caller must queue, its Waiter (queued
        here; hand it to `serve`, then wait on its `cond`). Raises SessionLost."""
        if not self.waiters:
            slot = self._pick(session, limit, on_lost)
            if slot is not None:
                self._assign(slot, session)
                return slot, self._register_on(slot, session, cid, wake)
        waiter = Waiter(session, limit, on_lost, threading.Condition(self.lock), cid, frame,
                        wake)
        self.waiters.append(waiter)
        self.session_waiters += session is not None
        self.waiter_limits[limit] += 1
        self.queued.notify_all()
        return waiter

    def waiter_gives_up(self, waiter: Waiter) -> None:
        if waiter.slot is None and waiter in self.waiters:
            self.waiters.remove(waiter)
            self._left(waiter)

    def _left(self, waiter: Waiter) -> None:
        self.session_waiters -= waiter.session is not None
        self.waiter_limits[waiter.limit] -= 1
        if not self.waiter_limits[waiter.limit]:
            del self.waiter_limits[waiter.limit]

    def serve(self, fx: Effects) -> None:
        """Hand free capacity to queued callers, first come first served; the frames to
        write for them go to `fx.presend`.

        When no queued caller is tied to a session's worker and all want the same room,
        the first one that finds no slot means no later one would either: serving stops
        there, so a check-in costs the same with ten thousand callers queued as with one.
        Otherwise each queued caller is looked at (one tied to a free session worker may
        go ahead of one that waits for any)."""
        waiters = self.waiters
        if not waiters:
            return
        if not self.session_waiters and len(self.waiter_limits) == 1:
            while waiters:
                waiter = waiters[0]
                slot = self._pick(None, waiter.limit, waiter.on_lost)
                if slot is None:
                    return
                waiters.popleft()
                self._left(waiter)
                self._hand(waiter, slot, fx)
            return
        for waiter in list(waiters):
            try:
                slot = self._pick(waiter.session, waiter.limit, waiter.on_lost)
            except SessionLost as exc:
                waiter.error = exc
                slot = None
            else:
                if slot is None:
                    continue
            waiters.remove(waiter)
            self._left(waiter)
            if slot is None:
                _notify(waiter)  # its session is lost: it raises
            else:
                self._hand(waiter, slot, fx)

    def _hand(self, waiter: Waiter, slot: Slot, fx: Effects) -> None:
        """Give a queued caller its slot (and write its frame for it when the slot's
        channel is open), then wake it."""
        waiter.slot = self._assign(slot, waiter.session)
        waiter.sent = self._register_on(slot, waiter.session, waiter.cid, waiter.wake)
        if waiter.sent is not None:
            link, entry = waiter.sent
            entry.unsent = True  # until `PoolIO.presend` has written it
            fx.add("presend", Presend(link, waiter.frame, waiter.cid, entry))
        _notify(waiter)

    def exhausted(self, session: str | None) -> PoolExhausted:
        busy = sum(1 for s in self.slots if s.load and not s.retiring)
        down = sum(1 for s in self.slots if s.down_gen is not None)
        overflow = sum(1 for s in self.slots if s.overflow)
        whose = f" for session {session!r}'s worker" if session is not None else ""
        return PoolExhausted(
            f"pool {self.path!r}: no worker became free{whose} within "
            f"{self.checkout_timeout:g}s (size {self.size}, overflow {overflow} of "
            f"{self.max_overflow}; {busy} busy, {down} not running, "
            f"{len(self.waiters)} callers queued)",
            path=self.path, context={"session_id": session})

    def _register_on(self, slot: Slot, session: str | None, cid: int,
                     wake: Callable[[], None] | None) -> tuple[Link, SyncCall] | None:
        link = slot.link
        if link is None or link.closed is not None or link.draining is not None \
                or not self.sessions.may_presend(session, link):
            return None  # the caller opens the link, or learns the session is lost
        return link, self.register_sync(link, cid, wake)

    def _assign(self, slot: Slot, session: str | None) -> Slot:
        slot.load += 1
        if session is not None:
            self.sessions.bind(session, slot)
        return slot

    def _pick(self, session: str | None, limit: int, on_lost: str) -> Slot | None:
        if session is not None:
            bound = self.sessions.bound_slot(session, on_lost)
            if bound is not None:
                return bound if bound.load < limit and not _alone(bound) else None
        best = None
        for slot in self.slots:  # in index order: ties go to base workers, so overflow idles
            if slot.load < limit and (best is None or slot.load < best.load) \
                    and not _alone(slot) and self.usable(slot):
                best = slot
        return best

    def checkin(self, slot: Slot, fx: Effects) -> None:
        slot.load -= 1
        self.refresh(fx)
        self.note_idle(slot, fx)

    # ------------------------------------------------------------------ async calls
    def enqueue(self, jobs: list[Job], force: bool) -> bool | None:
        """Queue calls: None when the tree is gone (the caller fails them), else whether
        to `plan` now. Calls already queued mean every worker was busy (or down): whoever
        frees one plans again, so a submit that queues behind them plans nothing (the
        common case under load costs no more than this)."""
        jobs[0].owner.count += len(jobs)  # one view's calls
        if self.gone:
            return None
        was_queued = bool(self.pending)
        self.pending.extend(jobs)
        return force or not was_queued

    def plan(self, force: bool, fx: Effects) -> None:
        """Assign queued calls to slots with room, evening out their loads.

        Without `force` (a new submit), only idle slots are given calls: busy ones are
        planned again by their readers when replies come, which is when a batch has
        gathered and is worth one write. Loads are levelled rather than filled one slot at
        a time, so a short map of slow calls runs on every worker instead of queueing
        behind one.
        """
        pending = self.pending
        if not pending or self.gone:
            return
        if len(self.waiters) > self.session_waiters:  # some queued caller wants any worker
            return  # queued blocking callers first: let a slot drain to them
        gather = not force
        slots = [s for s in self.slots if not (gather and s.load) and self.usable(s)]
        if not slots:
            if not gather:
                self.maybe_grow(fx)
            return
        if len(slots) > 1:
            slots.sort(key=_load)
        level = -(-(sum(s.load for s in slots) + len(pending)) // len(slots))
        for slot in slots:
            jobs = self._take(slot, level)
            if jobs:
                fx.add("send", (slot, jobs))
            if not pending:
                break
        if pending and not gather:
            self.maybe_grow(fx)  # calls still queued: every worker is at its cap

    def _take(self, slot: Slot, level: int) -> list[Job]:
        # Calls up to `level`, while the slot stays under the calls' cap (their view's
        # pipeline); an idle slot takes at least one.
        jobs: list[Job] = []
        load = slot.load
        pending = self.pending
        if _alone(slot):
            return jobs
        # `level` >= 1 whenever calls are queued (see `plan`), so an idle slot may take one.
        popleft, append = pending.popleft, jobs.append
        for _ in range(min(len(pending), level - load)):
            head = pending[0]
            if head.timeout is not None:
                # A call with its own timeout runs alone on an idle worker (when it times
                # out, that worker is replaced: nothing else may be lost with it).
                if not load:
                    append(popleft())
                    load = 1
                    slot.alone = True
                break
            if load >= head.cap:
                break
            append(popleft())
            load += 1
        slot.load = load
        return jobs

    def take_unsent(self, owner: Any) -> list[Job]:
        """`owner`'s queued calls that were not sent yet, out of the queue (to cancel)."""
        dropped = [job for job in self.pending if job.owner is owner and not job.started]
        if dropped:
            kept = [job for job in self.pending if not (job.owner is owner and not job.started)]
            self.pending.clear()
            self.pending.extend(kept)
        return dropped

    def unload(self, slot: Slot, count: int) -> None:
        """`count` calls planned for `slot` will not be sent (cancelled, unencodable)."""
        slot.load -= count

    def requeue(self, jobs: list[Job]) -> None:
        """Put calls that never ran back at the front of the queue, in order."""
        self.pending.extendleft(reversed(jobs))

    def give_back(self, slot: Slot, jobs: list[Job], fx: Effects) -> None:
        """Planned calls that cannot go to `slot` after all (not counted there any more)."""
        if jobs:
            slot.load -= len(jobs)
            self.requeue(jobs)
        self.refresh(fx)

    def refresh(self, fx: Effects) -> None:
        """Capacity changed: serve queued callers, then plan queued async calls."""
        self.serve(fx)
        self.plan(True, fx)

    def sent(self, link: Link, calls: list[tuple[int, Job]]) -> bool:
        """Register async calls about to be written to `link` (already counted in its
        slot's load); False when the link cannot take them (they were queued again)."""
        if link.closed is not None or link.draining is not None:
            link.slot.load -= len(calls)
            self.requeue([job for _, job in calls])
            return False
        waiting = link.waiting
        for cid, job in calls:
            waiting[cid] = job
            job.sending = True  # until `written` or `not_sent`
            if job.batch and len(job.args) > link.chunk:
                link.chunk = len(job.args)
            if job.timeout is not None:
                link.timed = job.timeout
        return True

    def after_send(self, link: Link, count: int, fx: Effects) -> None:
        """`count` async calls went out on `link`: watch that they progress."""
        if not link.async_count:
            link.last_progress = time.monotonic()
            self.watch_progress(link, fx)
            if link.timed is not None and link.progress_timer:
                # A check armed earlier may be due later than this call's own timeout.
                fx.add("progress", (link.last_progress + link.timed, link))
        link.async_count += count

    def not_sent(self, link: Link, calls: list[tuple[int, Job]], why: str,
                 fx: Effects) -> None:
        """Not one byte of these async calls' frames left: they never ran, so they go
        elsewhere. Only those still registered, though: a reader that saw the link die
        meanwhile has settled the others already (they were in flight when it died)."""
        for _, job in calls:
            job.sending = False
        mine = [job for cid, job in calls if link.waiting.pop(cid, None) is job]
        link.async_count -= len(mine)
        link.slot.load -= len(mine)
        if mine:
            self.requeue(mine)
        self.write_failed(link, why, fx)
        self.refresh(fx)

    def written(self, link: Link, fx: Effects) -> None:
        """Async calls' frames were handed to the kernel (their `sending` marks cleared)
        while the link died: they were in flight, settled as `_in_flight_lost` settles
        calls in flight (a reader that saw the death left them to their writer)."""
        self._in_flight_lost(link, link.closed, WorkerCrashed, "connection_error", fx)
        self.refresh(fx)

    def write_failed(self, link: Link, why: str, fx: Effects) -> None:
        """A write to `link` failed: the worker stopped reading (it is leaving, or dead).
        Nothing more is sent on it; what it answered before is still read, to the end
        of the channel, which fails whatever is left unanswered (see `file`)."""
        if link.draining is None and link.closed is None:
            self.drain(link, why, fx)
            if not link.waiting:
                self.lose_link(link, why, fx)

    # ------------------------------------------------------------------ blocking calls
    def register_sync(self, link: Link, cid: int,
                      wake: Callable[[], None] | None = None) -> SyncCall:
        """A blocking caller's entry, before its frame is written. Until it leaves its
        wait, it reads the link itself: the link is disarmed in the watcher, or the
        watcher would race that caller for its own reply (a hand-off for nothing). A
        caller on an event loop (`wake`) never reads: the watcher stays armed for it."""
        entry = SyncCall(wake)
        link.waiting[cid] = entry
        if wake is not None:
            return entry
        link.readers += 1
        link.armed = False  # the caller applies it in the watcher once out of the lock
        return entry

    def sync_not_sent(self, link: Link, cid: int, why: str, fx: Effects,
                      reader: bool = True) -> None:
        """A blocking caller's own write failed: its call never left (`reader`: the
        caller counted as one of the link's readers, as a thread does)."""
        link.waiting.pop(cid, None)
        if reader:
            link.readers -= 1
        self.write_failed(link, why, fx)
        if reader:
            self.release(link, fx)
        self.refresh(fx)

    def presend_failed(self, send: Presend, why: str, fx: Effects) -> None:
        """Writing a queued caller's frame for it failed: its caller dispatches it again."""
        send.entry.unsent = False
        if send.link.waiting.pop(send.cid, None) is send.entry:
            send.entry.reply = NOT_SENT
            if send.entry.wake is not None:
                send.entry.wake()
        self.write_failed(send.link, why, fx)
        send.link.cond.notify_all()
        self.refresh(fx)

    def present(self, send: Presend) -> None:
        """A queued caller's frame was written for it: a dead link now means the worker
        may have run the call (its caller stops waiting for the write, see `unsent`)."""
        send.entry.unsent = False
        if send.link.closed is not None:
            send.link.cond.notify_all()
            if send.entry.wake is not None:
                send.entry.wake()

    def release(self, link: Link, fx: Effects) -> None:
        """Whoever stops reading a link hands it back to the watcher (or closes it)."""
        if link.reading or link.readers:
            return
        if link.closed is not None:
            fx.add("close", link)
        else:
            link.armed = True  # `apply` follows, outside the lock

    # ------------------------------------------------------------------ replies
    def file(self, link: Link, msgs: list[Any], why: str | None, fx: Effects) -> None:
        """File what a reader read: blocking callers get their reply, async calls are
        settled, NotRun calls go back to the queue, freed capacity is planned again."""
        slot = link.slot
        path = slot.path
        waiting = link.waiting
        done: list[Job] = []  # answered async calls, and their replies (two lists:
        replies: list[Any] = []  # no tuple per call for the cyclic GC to count)
        again: list[Any] = []
        # Names bound once: this loop runs once per reply under `submit` load.
        pop, closing, not_run = waiting.pop, P.Closing, P.NotRun
        add_done, add_reply = done.append, replies.append
        for msg in msgs:
            kind = type(msg)
            if kind is closing:
                self.drain(link, msg.reason, fx)
                continue
            entry = pop(msg.id, None)
            if type(entry) is Job:  # an async call (the common case)
                if kind is not_run:
                    again.append(entry)
                else:
                    add_done(entry)
                    add_reply(msg)
                continue
            if entry is None:
                continue  # its caller gave up (timeout)
            entry.reply = msg  # a blocking caller's SyncCall
            if entry.wake is not None:
                entry.wake()
        answered = len(done) + len(again)  # async calls: counted off once per read
        if answered:
            link.async_count -= answered
            slot.load -= answered
            if not link.async_count:
                link.chunk = 1
                link.timed = None
        if done:
            link.last_progress = time.monotonic()
            # Plain replies to futures nobody waits on are settled here, in bulk (no
            # callback can run: see `settle_filed`); the rest outside the lock.
            fx.settled(settle_filed(done, replies, path))
        if again:
            self.requeue(again)
        if why is None and link.draining is not None and not link.waiting:
            why = "drained"  # the leaving worker answered everything: let go of the link
        if why is not None:
            self.lose_link(link, why, fx)
        link.cond.notify_all()
        self.refresh(fx)
        self.note_idle(slot, fx)

    def drain(self, link: Link, message: str, fx: Effects) -> None:
        """The worker is leaving (its Closing notice, or its supervisor's word): send
        nothing more on the link. What it already read is answered (NotRun if not run);
        new calls go to the replacement."""
        link.draining = message
        fx.add("stop_writing", link)
        slot = link.slot
        if slot.link is link:
            slot.link = None
            slot.down_gen = link.generation
        self._lose_sessions(slot, link.pid, f"is leaving ({message})")

    def lose_link(self, link: Link, why: str, fx: Effects, *, error: type = WorkerCrashed,
                  row: str = "connection_error") -> None:
        """The link is dead: its async calls fail (or are re-sent when idempotent), its
        sessions are lost. Blocking callers see `closed` themselves."""
        if link.closed is not None:
            return
        link.closed = why
        slot = link.slot
        if slot.link is link:
            slot.link = None
        self._lose_sessions(slot, link.pid, f"died ({why})")
        self._in_flight_lost(link, why, error, row, fx)
        link.async_count = 0
        link.cond.notify_all()
        for entry in link.waiting.values():
            if type(entry) is SyncCall and entry.wake is not None:
                entry.wake()  # a caller on an event loop sees `closed` when it looks
        fx.add("close", link)  # interrupts a reader blocked in poll; closed once unread

    def _in_flight_lost(self, link: Link, why: str, error: type, row: str,
                        fx: Effects) -> None:
        # Async calls in flight on a dead link may have run: re-sent only when idempotent
        # and the matrix row has retries left (after its delay), else failed with `error`.
        slot = link.slot
        delays = link.policy.retries.get(row, ())
        failed, again = [], []
        for cid, entry in list(link.waiting.items()):
            if type(entry) is SyncCall or entry.sending:
                continue  # a frame still being written: its writer settles it
            del link.waiting[cid]
            slot.load -= 1
            if entry.method in link.idempotent and entry.attempt <= len(delays):
                delay = delays[entry.attempt - 1]
                entry.attempt += 1
                if delay > 0:
                    fx.add("resend", (delay, [entry]))
                else:
                    again.append(entry)
                continue
            if error is WorkerCrashed:
                text = (f"worker {slot.path!r} (pid {link.pid}) died while the call was "
                        f"in flight ({why})")
            else:
                text = f"call {entry.method!r} to {slot.path!r} got {why}"
            failed.append((entry, error(text, path=slot.path, attempt=entry.attempt,
                                        context={"operation": entry.method}), slot.path))
        if again:
            self.requeue(again)
        fx.settled(failed)

    def _lose_sessions(self, slot: Slot, pid: int | None, why: str) -> None:
        self.sessions.lose(slot, pid, why)
        for waiter in self.waiters:
            if waiter.session is not None:
                _notify(waiter)  # a caller queued for that worker must hear it

    def leaving(self, path: str, why: str, fx: Effects) -> int | None:
        """Its supervisor is stopping the worker at `path`: send it nothing new, as if it
        had sent its Closing notice. The pid it had, or None when no open link went to it."""
        for slot in self.slots:
            link = slot.link
            if slot.path == path and link is not None and link.closed is None:
                self.drain(link, why, fx)
                return link.pid
        return None

    # ------------------------------------------------------------------ progress
    def watch_progress(self, link: Link, fx: Effects) -> None:
        """Async calls went out on an idle link: check that they progress."""
        if (link.call_timeout is not None or link.timed is not None) \
                and not link.progress_timer:
            link.progress_timer = True
            fx.add("progress", (link.last_progress + _allowance(link), link))

    def progress_due(self, link: Link, fx: Effects) -> bool:
        """The progress check of `link` is due; True when its worker is stuck (no reply
        for its allowance with async calls in flight: those calls fail with CallTimeout)."""
        link.progress_timer = False
        if link.closed is not None or not link.async_count:
            return False
        allowance = _allowance(link)
        if allowance is None:  # no call_timeout, and the call with its own is done
            return False
        if link.last_progress + allowance > time.monotonic():
            self.watch_progress(link, fx)
            return False
        self.lose_link(link, f"no reply within {allowance:g}s", fx, error=CallTimeout,
                       row="timeout_error")
        if link.policy.restarts_on_timeout:
            self.mark_down(link.slot, link.generation)  # see `timed_out`
        self.refresh(fx)
        return True

    def timed_out(self, link: Link, fx: Effects) -> None:
        """A call on `link` timed out and its worker is being replaced: let go of the
        link, and send nothing to that worker until its replacement's start is reported
        (a link opened meanwhile would reach the old process, about to be killed)."""
        self.lose_link(link, "a call timed out; the worker is replaced", fx)
        self.mark_down(link.slot, link.generation)
        self.refresh(fx)

    # ------------------------------------------------------------------ overflow
    def maybe_grow(self, fx: Effects) -> None:
        """Every usable worker is busy: ask for an overflow worker if allowed.

        One start at a time; none while every worker is down (restarting is not busy, and
        more workers would only crash alike); none for `retire_after` s after a failed
        start.
        """
        if self.growing or self.gone or self.max_overflow <= 0:
            return
        if time.monotonic() < self.grow_after:
            return
        if sum(1 for s in self.slots if s.overflow) >= self.max_overflow:
            return
        if not any(self.usable(s) for s in self.slots):
            return
        self.growing = True
        fx.grow = True

    def grown(self, slot: Slot | None, fx: Effects) -> None:
        """The overflow worker asked for started (`slot`), or failed to (None)."""
        self.growing = False
        if slot is None:
            self.grow_after = time.monotonic() + self.retire_after
            return
        self.add_slot(slot)
        self.refresh(fx)
        self.note_idle(slot, fx)

    def note_idle(self, slot: Slot, fx: Effects) -> None:
        """An overflow slot may have gone idle: arm its retirement check."""
        if not slot.overflow or slot.load or slot.retiring:
            return
        slot.idle_since = time.monotonic()
        if not slot.retire_timer:
            # One check per idle period: a slot busy again in between is seen when it runs.
            slot.retire_timer = True
            fx.add("retire", (slot.idle_since + self.retire_after, slot))

    def retire_due(self, slot: Slot, fx: Effects) -> bool:
        """The retirement check of an overflow slot; True when it retires now (no call is
        dispatched to it from here on; its link is let go)."""
        slot.retire_timer = False
        if slot.retiring or slot not in self.slots or slot.load \
                or self.sessions.pinned(slot):
            return False  # busy again (its next idle period arms a new check), or pinned
        due = slot.idle_since + self.retire_after
        if due > time.monotonic():  # it was busy in between: wait out its new idle period
            slot.retire_timer = True
            fx.add("retire", (due, slot))
            return False
        slot.retiring = True
        if slot.link is not None:
            self.lose_link(slot.link, "the overflow worker retired", fx)
        return True

    # ------------------------------------------------------------------ the tree's end
    def tree_gone(self, fx: Effects) -> bool:
        """The root exited: fail everything queued or in flight and wake every waiter.
        False when this was already done."""
        if self.gone:
            return False
        self.gone = True
        jobs = list(self.pending)
        self.pending.clear()
        for waiter in self.waiters:
            _notify(waiter)
        for slot in self.slots:
            if slot.link is not None:
                # Closed once no caller reads it; a reading caller is woken and lets go.
                self.lose_link(slot.link, "the tree stopped", fx)
        exc = WorkerCrashed("the tree is not running", path=self.path)
        fx.settled([(job, exc, self.path) for job in jobs])
        return True


def _notify(waiter: Waiter) -> None:
    waiter.cond.notify()
    if waiter.wake is not None:
        waiter.wake()


def _load(slot: Slot) -> int:
    return slot.load


def _alone(slot: Slot) -> bool:
    """A call with its own timeout is in flight on the slot: it takes nothing else."""
    if slot.alone and not slot.load:
        slot.alone = False  # that call is done
    return slot.alone


def _allowance(link: Link) -> float | None:
    # A call's own timeout (it runs alone), else call_timeout per call: a map chunk of k
    # items answers once, after k calls.
    if link.timed is not None:
        return link.timed
    return None if link.call_timeout is None else link.call_timeout * link.chunk
