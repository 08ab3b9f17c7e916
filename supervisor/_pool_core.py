"""The pool client's dispatcher: which worker serves a call, and what a worker's death does.

    call() ──checkout──▶ least-loaded Slot ──▶ its Link ──▶ worker process
             (every slot busy: a FIFO queue of Waiters; PoolExhausted after checkout_timeout)
    submit()/map() ──▶ `pending` units ──plan──▶ one batch per slot, one write each
    replies ◀── whoever holds the link's reading role (a blocking caller, or the link's
               pump thread while async calls are in flight) files them under `lock`

Busy. A slot's `load` counts the blocking callers checked out on it plus the asynchronous
calls in flight on it. A blocking caller needs ``load < max_in_flight`` (1 by default: one
caller per worker at a time, as in a classic checkout pool, so a long call never queues
another caller behind it on the same worker while a sibling is free); an asynchronous
call needs ``load < pipeline`` (a worker serves its channel in order, so keeping several
calls on the wire keeps it busy and lets us write them in one batch). Queued blocking
callers go first: while any waits, asynchronous calls are not topped up, so a long `map`
cannot starve `call`.

Never ran vs. may have run. A call refused with NotRun, or whose frames never left (the
link was already broken or draining), is dispatched again, to another worker or to the
replacement. A call in flight when its worker died fails with WorkerCrashed, unless its
method is idempotent (the worker's policy) and the connection_error row has retries left.

One mutex guards all of it; link and waiter conditions are built on it. It is never held
across blocking I/O or an App request: the App's reader thread delivers replies to those
requests, and our telemetry hook runs on that thread, so the hook only schedules work.
"""

from __future__ import annotations

import socket
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from . import protocol as P
from . import telemetry
from ._pool_async import plan, requeue, send_jobs, settle
from ._pool_link import BUFFERED, Link, SyncCall
from ._pool_overflow import Timers, maybe_grow, note_idle
from ._router import NotRunning
from .errors import (
    CallTimeout,
    CircuitOpen,
    NoSuchChild,
    PoolExhausted,
    SessionLost,
    SupervisorError,
    WorkerCrashed,
)

if TYPE_CHECKING:
    from .app import App

__all__ = ["PoolCore", "Slot"]

OPEN_TIMEOUT = 30.0  # seconds to get a channel from the tree (a control round trip)


@attrs.define(eq=False)
class Slot:
    """One worker position of the pool as the client sees it; its process comes and goes."""

    id: str
    path: str
    index: int
    overflow: bool
    load: int = 0
    link: Link | None = None  # None until opened, and again once lost or draining
    # Set while the worker is known not to run: the App's start count for the path then.
    # The slot is usable again once a newer start was reported (no fixed wait).
    down_gen: int | None = None
    opening: bool = False
    retiring: bool = False
    idle_since: float = 0.0
    retire_timer: bool = False


@attrs.define(eq=False)
class Session:
    """A session's affinity: its worker position and process; `lost` says why it is gone
    (sticky until `end_session`, so a session never silently continues elsewhere)."""

    slot: Slot
    pid: int | None = None  # None until its first call reached the worker
    lost: str | None = None


@attrs.define(eq=False)
class Waiter:
    """A blocking caller queued for a slot (FIFO); `slot` is set when one is handed over."""

    session: str | None
    limit: int
    on_lost: str
    cond: threading.Condition
    slot: Slot | None = None
    error: BaseException | None = None


class PoolCore:
    """Dispatch state of one pool, shared by every client view of it (see `_pool`)."""

    def __init__(self, app: App, path: str) -> None:
        self.app = app
        self.path = path
        self.lock = threading.Lock()
        self.open_cond = threading.Condition(self.lock)
        self.slots: list[Slot] = []
        self.waiters: deque[Waiter] = deque()
        self.queued = threading.Condition(self.lock)  # notified when a caller queues
        self.pending: deque[tuple[int, list[Any]]] = deque()  # (pipeline cap, jobs) units
        self.pending_jobs = 0
        self.sessions: dict[str, Session] = {}
        self.size = self.max_overflow = 0
        self.checkout_timeout = 5.0
        self.retire_after = 1.0
        self.batch = 64
        self.growing = False
        self.grow_after = 0.0
        self.gone = False
        self.timers = Timers(f"pool-timers-{path}")
        self._started = False
        self._start_lock = threading.Lock()

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Learn the pool's size, limits and workers (once). Raises NoSuchChild when
        `path` is not a Pool."""
        if self._started:
            return
        with self._start_lock:
            if self._started:
                return
            raw = self.app._request(P.GetStatus(id=0, path=self.path))
            facts = raw.get("pool")
            if facts is None:
                raise NoSuchChild(f"{self.path!r} is a supervisor, not a Pool", path=self.path)
            self.size, self.max_overflow = facts["size"], facts["max_overflow"]
            self.checkout_timeout = facts["checkout_timeout"]
            for info in msgspec.convert(raw["children"], list[P.ChildInfo]):
                slot = self.new_slot(info.id, overflow=False)
                slot.overflow = slot.index >= self.size  # adopted: retired when idle
                self.add_slot(slot)
            _watch_tree(self)
            self._started = True

    def new_slot(self, child_id: str, *, overflow: bool) -> Slot:
        """A Slot for the pool's child `child_id` (``<pool id>-<index>``)."""
        path = f"{self.path}/{child_id}" if self.path else child_id
        return Slot(id=child_id, path=path, index=int(child_id.rpartition("-")[2]),
                    overflow=overflow)

    def add_slot(self, slot: Slot) -> None:
        self.slots.append(slot)
        self.slots.sort(key=lambda s: s.index)

    # ------------------------------------------------------------------ checkout
    def checkout(self, session: str | None, limit: int, on_lost: str,
                 deadline: float) -> Slot:
        """A slot with room for one blocking call, in arrival order (FIFO).

        Raises PoolExhausted past `deadline`, SessionLost for a lost session (unless
        `on_lost` is "reassign"), WorkerCrashed once the tree is gone.
        """
        with self.lock:
            if not self.waiters:
                slot = self._pick(session, limit, on_lost)
                if slot is not None:
                    return self._assign(slot, session)
            waiter = Waiter(session, limit, on_lost, threading.Condition(self.lock))
            self.waiters.append(waiter)
            self.queued.notify_all()
            try:
                self._serve()
                if waiter.slot is None:
                    maybe_grow(self)
                while waiter.slot is None:
                    if waiter.error is not None:
                        raise waiter.error
                    if self.gone:
                        raise WorkerCrashed("the tree is not running", path=self.path)
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        raise self._exhausted(session)
                    waiter.cond.wait(remaining)
                return waiter.slot
            finally:
                if waiter.slot is None and waiter in self.waiters:
                    self.waiters.remove(waiter)

    def _serve(self) -> None:
        """Hand free capacity to queued callers, first come first served (under lock)."""
        for waiter in list(self.waiters):
            try:
                slot = self._pick(waiter.session, waiter.limit, waiter.on_lost)
            except SessionLost as exc:
                waiter.error = exc
            else:
                if slot is None:
                    continue
                waiter.slot = self._assign(slot, waiter.session)
            self.waiters.remove(waiter)
            waiter.cond.notify()

    def _assign(self, slot: Slot, session: str | None) -> Slot:
        slot.load += 1
        if session is not None and session not in self.sessions:
            self.sessions[session] = Session(slot)
        return slot

    def _pick(self, session: str | None, limit: int, on_lost: str) -> Slot | None:
        if session is not None:
            sess = self.sessions.get(session)
            if sess is not None:
                if sess.lost is None and not self.usable(sess.slot):
                    sess.lost = "is not running"
                if sess.lost is None:
                    return sess.slot if sess.slot.load < limit else None
                if on_lost != "reassign":
                    raise self.session_lost(session, sess)
                del self.sessions[session]  # opted in: a fresh worker, empty state
        best = None
        for slot in self.slots:  # in index order: ties go to base workers, so overflow idles
            if slot.load < limit and (best is None or slot.load < best.load) \
                    and self.usable(slot):
                best = slot
        return best

    def usable(self, slot: Slot) -> bool:
        if slot.retiring:
            return False
        if slot.down_gen is not None:
            if self.app._generation_of(slot.path) == slot.down_gen:
                return False
            slot.down_gen = None  # a newer process started since
        return True

    def refresh(self) -> list[Any]:
        """Capacity changed: serve queued callers, then plan queued async calls (under lock)."""
        self._serve()
        return plan(self, force=True)

    def checkin(self, slot: Slot) -> None:
        with self.lock:
            slot.load -= 1
            plans = self.refresh()
            note_idle(self, slot)
        self.run((), plans)

    def _exhausted(self, session: str | None) -> PoolExhausted:
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

    # ------------------------------------------------------------------ sessions
    def session_lost(self, session: str, sess: Session) -> SessionLost:
        return SessionLost(
            f"session {session!r} is lost: its worker {sess.slot.path!r} (pid {sess.pid}) "
            f"{sess.lost}; the session's state is gone (end_session({session!r}) to reuse "
            "the id, or use on_lost='reassign')",
            path=sess.slot.path, context={"session_id": session})

    def session_reached(self, session: str, link: Link, on_lost: str) -> bool:
        """Check that the session's worker is still the process it started on; False when
        it must be dispatched again (reassign). Raises SessionLost."""
        with self.lock:
            sess = self.sessions.get(session)
            if sess is None or sess.slot is not link.slot:
                return sess is None  # ended meanwhile: a new session; moved: ask again
            if sess.pid is None:
                sess.pid = link.pid
            elif sess.pid != link.pid and sess.lost is None:
                sess.lost = f"was replaced by pid {link.pid}"
            if sess.lost is None:
                return True
            if on_lost != "reassign":
                raise self.session_lost(session, sess)
            return False

    def _lose_sessions(self, slot: Slot, pid: int | None, why: str) -> None:
        for sess in self.sessions.values():
            if sess.slot is slot and sess.pid == pid and sess.lost is None:
                sess.lost = why
        for waiter in self.waiters:
            if waiter.session is not None:
                waiter.cond.notify()  # a caller queued for that worker must hear it

    def has_sessions(self, slot: Slot) -> bool:
        return any(sess.slot is slot for sess in self.sessions.values())

    # ------------------------------------------------------------------ links
    def link_of(self, slot: Slot) -> Link | None:
        """The slot's open link, opened if needed; None when its worker is not running.

        Raises WorkerCrashed when the tree is gone, CallTimeout when it does not answer.
        """
        with self.lock:
            while True:
                link = slot.link
                if link is not None and link.closed is None and link.draining is None:
                    return link
                if self.gone:
                    raise WorkerCrashed("the tree is not running", path=slot.path)
                if not self.usable(slot) or slot not in self.slots:
                    return None
                if not slot.opening:
                    break
                self.open_cond.wait()  # another thread is opening it; share theirs
            slot.opening = True
        link = None
        try:
            link = self._open(slot)
        finally:
            with self.lock:
                slot.opening = False
                if link is not None:
                    slot.link = link
                self.open_cond.notify_all()
        return link

    def _open(self, slot: Slot) -> Link | None:
        # Read the start count before asking: if the worker is down, a start reported
        # after this read makes the slot usable again (no lost wake-up, see `usable`).
        generation = self.app._generation_of(slot.path)
        mine, theirs = socket.socketpair()
        try:
            policy = self.app._request(P.OpenChannel(id=0, path=slot.path),
                                       fds=(theirs.fileno(),), timeout=OPEN_TIMEOUT)
        except (NotRunning, CircuitOpen):
            mine.close()
            with self.lock:
                slot.down_gen = generation
            return None
        except NoSuchChild:  # deleted behind our back (terminate_child + delete_child)
            mine.close()
            with self.lock:
                if slot in self.slots:
                    self.slots.remove(slot)
                self._lose_sessions(slot, None, "was deleted")
            return None
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return Link(slot, mine, policy, generation, self.lock)

    def wake_io(self, link: Link) -> None:
        """Bytes wait in the link's outbuf: make sure a reader runs and polls for them."""
        link.wake_reader()
        with self.lock:
            self.ensure_pump(link)
            link.cond.notify_all()

    def ensure_pump(self, link: Link) -> None:
        if link.pump is None and link.closed is None:
            link.pump = threading.Thread(target=self._pump, args=(link,), daemon=True,
                                         name=f"pool-pump-{link.slot.id}")
            link.pump.start()

    # ------------------------------------------------------------------ blocking calls
    def send_sync(self, link: Link, data: bytes, cid: int) -> bool:
        """Write one registered frame; False when it never left (dispatch it again)."""
        try:
            status = link.write(data)
        except OSError as exc:
            with self.lock:
                link.waiting.pop(cid, None)
                lost = [] if link.draining else self.lose_link(link, f"send failed: {exc}")
                plans = self.refresh()
            self.run(lost, plans)
            return False
        if status is BUFFERED:
            self.wake_io(link)
        return True

    def await_reply(self, link: Link, entry: SyncCall, cid: int,
                    deadline: float | None) -> Any:
        """The reply to `cid`, reading the link ourselves when nobody else is (no thread
        hand-off for a lone caller). Raises WorkerCrashed, TimeoutError past `deadline`."""
        lock = self.lock
        with lock:
            try:
                while entry.reply is None:
                    if link.closed is not None:
                        link.waiting.pop(cid, None)
                        raise WorkerCrashed(
                            f"worker {link.slot.path!r} (pid {link.pid}) died while the "
                            f"call was in flight ({link.closed})", path=link.slot.path)
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        link.waiting.pop(cid, None)
                        raise TimeoutError
                    if link.reading:
                        link.cond.wait(remaining)
                        continue
                    self._read_once(link, remaining)
            finally:
                if link.closed is not None and not link.reading:
                    link.close_fds()
        return entry.reply

    def timed_out(self, link: Link, method: str, limit: float) -> CallTimeout:
        exc = CallTimeout(f"call {method!r} to {link.slot.path!r} got no answer within "
                          f"{limit:.3g}s", path=link.slot.path)
        exc.policy = link.policy
        if link.policy.get("on_timeout", "restart") == "restart":
            # Its state is unknown after a call it did not finish: the supervisor replaces
            # it, and this link is finished with it.
            with self.lock:
                lost = self.lose_link(link, "a call timed out; the worker is replaced")
                plans = self.refresh()
            self.run(lost, plans)
            self._report_failure(link.slot)
        return exc

    def _report_failure(self, slot: Slot) -> None:
        parent, _, child_id = slot.path.rpartition("/")
        try:
            self.app._request(P.ReportFailure(id=0, path=parent, child_id=child_id,
                                              category="timeout_error", reason="timeout"),
                              timeout=5.0)
        except SupervisorError:
            pass  # already gone or restarting: its supervisor handles that on its own

    # ------------------------------------------------------------------ reading
    def _read_once(self, link: Link, timeout: float | None) -> None:
        """Hold the reading role for one read, file what came, run the follow-ups
        (called and returning with the lock held)."""
        link.reading = True
        self.lock.release()
        try:
            msgs, why = link.io_once(timeout)
        finally:
            self.lock.acquire()
            link.reading = False
        done, plans = self._file(link, msgs, why)
        if done or plans:
            self.lock.release()
            try:
                self.run(done, plans)
            finally:
                self.lock.acquire()

    def _pump(self, link: Link) -> None:
        """Reads a link while async calls are in flight on it (or bytes wait to go out)."""
        with self.lock:
            while link.closed is None:
                if link.reading or not (link.async_count or link.outbuf):
                    link.cond.wait()
                    continue
                timeout = None
                if link.async_count and link.call_timeout is not None:
                    timeout = link.last_progress + link.call_timeout - time.monotonic()
                    if timeout <= 0:
                        self._async_timed_out(link)
                        continue
                self._read_once(link, timeout)
            if not link.reading:
                link.close_fds()

    def _async_timed_out(self, link: Link) -> None:
        """No reply for call_timeout with async calls in flight (called with the lock)."""
        lost = self.lose_link(link, f"no reply within {link.call_timeout:g}s",
                              error=CallTimeout, row="timeout_error")
        plans = self.refresh()
        self.lock.release()
        try:
            self.run(lost, plans)
            if link.policy.get("on_timeout", "restart") == "restart":
                self._report_failure(link.slot)
        finally:
            self.lock.acquire()

    def _file(self, link: Link, msgs: list[Any], why: str | None) -> tuple[list, list]:
        """File replies (under lock); returns (async settlements, send plans)."""
        slot = link.slot
        done: list[Any] = []
        again: list[Any] = []
        for msg in msgs:
            if msg.id == 0:
                self._drain(link, msg.message)
                continue
            entry = link.waiting.pop(msg.id, None)
            if entry is None:
                continue  # its caller gave up (timeout)
            if type(entry) is SyncCall:
                entry.reply = msg
                continue
            link.async_count -= 1
            slot.load -= 1
            if type(msg) is P.Fail and msg.type == "NotRun":
                again.append(entry)
            else:
                done.append((entry, msg, slot.path))
        if done:
            link.last_progress = time.monotonic()
        if again:
            requeue(self, again)
        if why is None and link.draining is not None and not link.waiting:
            why = "drained"  # the leaving worker answered everything: let go of the link
        if why is not None:
            done.extend(self.lose_link(link, why))
        link.cond.notify_all()
        plans = self.refresh()
        note_idle(self, slot)
        return done, plans

    def _drain(self, link: Link, message: str) -> None:
        # The worker's Closing notice: it serves nothing new on any channel; what it
        # already read is answered (NotRun if not run). New calls go to the replacement.
        link.draining = message
        link.stop_writing()
        slot = link.slot
        if slot.link is link:
            slot.link = None
            slot.down_gen = link.generation
        self._lose_sessions(slot, link.pid, f"is leaving ({message})")

    def lose_link(self, link: Link, why: str, *, error: type = WorkerCrashed,
                  row: str = "connection_error") -> list[Any]:
        """The link is dead (under lock): fail or re-send its async calls; returns the
        settlements to run outside the lock. Blocking callers see `closed` themselves."""
        if link.closed is not None:
            return []
        link.closed = why
        slot = link.slot
        if slot.link is link:
            slot.link = None
        self._lose_sessions(slot, link.pid, f"died ({why})")
        delays = link.policy.get("retries", {}).get(row) or []
        failed, again = [], []
        for cid, entry in list(link.waiting.items()):
            if type(entry) is SyncCall:
                continue
            del link.waiting[cid]
            slot.load -= 1
            if entry.method in link.idempotent and entry.attempt <= len(delays):
                delay = delays[entry.attempt - 1]
                entry.attempt += 1
                if delay > 0:
                    self.timers.call_later(delay, lambda job=entry: self._resend([job]))
                else:
                    again.append(entry)
                continue
            if error is WorkerCrashed:
                text = (f"worker {slot.path!r} (pid {link.pid}) died while the call was "
                        f"in flight ({why})")
            else:
                text = f"call {entry.method!r} to {slot.path!r} got {why}"
            exc = error(text, path=slot.path, attempt=entry.attempt,
                        context={"operation": entry.method})
            exc.policy = link.policy
            failed.append((entry, exc, slot.path))
        link.async_count = 0
        if again:
            requeue(self, again)
        link.cond.notify_all()
        link.interrupt()  # a reader blocked in poll returns now
        if not link.reading:
            link.close_fds()
        return failed

    def _resend(self, jobs: list[Any]) -> None:
        with self.lock:
            requeue(self, jobs)
            plans = self.refresh()
        self.run((), plans)

    # ------------------------------------------------------------------ follow-ups
    def run(self, done: Any, plans: Any) -> None:
        """Settle async calls and send planned batches (never under the lock: settling
        runs the futures' callbacks, which may call back into the pool)."""
        for job, outcome, path in done:
            settle(job, outcome, path)
        for slot, jobs in plans:
            send_jobs(self, slot, jobs)

    def kick(self) -> None:
        """A worker of the pool (re)started: serve whoever waits for capacity."""
        with self.lock:
            plans = self.refresh()
        self.run((), plans)

    def tree_gone(self) -> None:
        """The root exited: fail everything still queued, wake every waiter."""
        with self.lock:
            self.gone = True
            jobs = [job for _, unit in self.pending for job in unit]
            self.pending.clear()
            self.pending_jobs = 0
            for waiter in self.waiters:
                waiter.cond.notify()
        exc = WorkerCrashed("the tree is not running", path=self.path)
        for job in jobs:
            settle(job, exc, self.path)


def _watch_tree(core: PoolCore) -> None:
    """Hear about the pool's workers starting (to un-down slots), and the tree's end.

    The telemetry hook runs on the App's reader thread: it only schedules `kick` on the
    timer thread (a request from the reader thread would wait for itself). Both hold the
    core weakly, so a dropped App takes its pool client with it.
    """
    ref = weakref.ref(core)
    handler_id = f"supervisor-pool-{id(core)}"
    prefix = f"{core.path}/" if core.path else ""

    def on_started(event: Any, measurements: Any, metadata: Any) -> None:
        target = ref()
        if target is None:
            telemetry.detach(handler_id)
            return
        path = metadata.get("path") or ""
        if path.startswith(prefix) and "/" not in path[len(prefix):]:
            target.timers.call_soon(target.kick)

    def await_exit(exited: threading.Event) -> None:
        exited.wait()
        telemetry.detach(handler_id)
        target = ref()
        if target is not None:
            target.tree_gone()

    telemetry.attach(handler_id, [("supervisor", "child", "started")], on_started)
    threading.Thread(target=await_exit, args=(core.app._exited,), daemon=True,
                     name=f"pool-watch-{core.path}").start()
