"""The pool client's dispatcher: which worker serves a call, and what a worker's death does.

    call() ──checkout──▶ least-loaded Slot ──▶ its Link ──▶ worker process
             (every slot busy: a FIFO queue of Waiters; PoolExhausted after checkout_timeout)
    submit()/map() ──▶ `pending` units ──plan──▶ one batch per slot, one write each
    replies ◀── whoever holds the link's reading role (a blocking caller, or
               the pool's watcher thread, see pool.watcher) files them under `lock`

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

import itertools
import threading
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from .. import telemetry
from ..errors import NoSuchChild, PoolExhausted, SessionLost, WorkerCrashed
from ..wire import messages as P
from .batches import plan, send_jobs, settle_all
from .io import drain, lose_link, presend, register_sync
from .link import Job, Link, SyncCall
from .overflow import Timers, maybe_grow, note_idle
from .sessions import Session, bind, bound_slot, may_presend
from .watcher import Watcher

if TYPE_CHECKING:
    from ..app import App

__all__ = ["PoolCore", "Slot"]


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
    slot: Slot | None = None
    sent: tuple[Link, SyncCall] | None = None
    error: BaseException | None = None


class PoolCore:
    """Dispatch state of one pool, shared by every client view of it (see `pool.client`)."""

    def __init__(self, app: App, path: str) -> None:
        self.app = app
        self.path = path
        self.lock = threading.Lock()
        self.open_cond = threading.Condition(self.lock)
        self.slots: list[Slot] = []
        self.waiters: deque[Waiter] = deque()
        self.queued = threading.Condition(self.lock)  # notified when a caller queues
        self.pending: deque[Job] = deque()  # async calls (a map chunk is one) not sent yet
        self.sessions: dict[str, Session] = {}
        self.size = self.max_overflow = 0
        self.checkout_timeout = 5.0
        self.retire_after = 1.0
        self.growing = False
        self.grow_after = 0.0
        self.gone = False
        self.ids = itertools.count(1)  # call ids, unique per pool (so per link too)
        self.timers = Timers(f"pool-timers-{path}")
        self.watcher = Watcher(self)
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
    def checkout(self, session: str | None, limit: int, on_lost: str, deadline: float,
                 cid: int, frame: bytes) -> tuple[Slot, tuple[Link, SyncCall] | None, bool]:
        """A slot with room for one blocking call, in arrival order (FIFO).

        Also, when the slot's channel is open: the link and the entry registered there
        for `cid` (else None), and whether the frame was already written for the caller
        (a queued caller's is, see `Waiter`). One pass under the lock for all of it.

        Raises PoolExhausted past `deadline`, SessionLost for a lost session (unless
        `on_lost` is "reassign"), WorkerCrashed once the tree is gone.
        """
        plans: list[Any] = []
        try:
            with self.lock:
                slot, sent, written = self._checkout(session, limit, on_lost, deadline, cid,
                                                     frame, plans)
        finally:
            if plans:
                self.run((), plans)
        if sent is not None and not written:
            self.watcher.apply(sent[0])  # registered here: the watcher steps back
        return slot, sent, written

    def _checkout(self, session: str | None, limit: int, on_lost: str, deadline: float,
                  cid: int, frame: bytes, plans: list[Any]) -> Any:
        if not self.waiters:
            slot = self._pick(session, limit, on_lost)
            if slot is not None:
                self._assign(slot, session)
                return slot, self._register_on(slot, session, cid), False
        waiter = Waiter(session, limit, on_lost, threading.Condition(self.lock), cid, frame)
        self.waiters.append(waiter)
        self.queued.notify_all()
        try:
            self._serve(plans)
            if waiter.slot is None:
                maybe_grow(self)
            self._await_slot(waiter, deadline)
            return waiter.slot, waiter.sent, waiter.sent is not None
        finally:
            if waiter.slot is None and waiter in self.waiters:
                self.waiters.remove(waiter)

    def _await_slot(self, waiter: Waiter, deadline: float) -> None:
        while waiter.slot is None:
            if waiter.error is not None:
                raise waiter.error
            if self.gone:
                raise WorkerCrashed("the tree is not running", path=self.path)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._exhausted(waiter.session)
            waiter.cond.wait(remaining)

    def _serve(self, plans: list[Any]) -> None:
        """Hand free capacity to queued callers, first come first served (under lock);
        the frames to write for them go to `plans` as ``(None, presend)``."""
        if not self.waiters:
            return
        for waiter in list(self.waiters):
            try:
                slot = self._pick(waiter.session, waiter.limit, waiter.on_lost)
            except SessionLost as exc:
                waiter.error = exc
            else:
                if slot is None:
                    continue
                waiter.slot = self._assign(slot, waiter.session)
                waiter.sent = self._register_on(slot, waiter.session, waiter.cid)
                if waiter.sent is not None:
                    link, entry = waiter.sent
                    plans.append((None, (link, waiter.frame, waiter.cid, entry)))
            self.waiters.remove(waiter)
            waiter.cond.notify()

    def _register_on(self, slot: Slot, session: str | None, cid: int
                     ) -> tuple[Link, SyncCall] | None:
        link = slot.link
        if link is None or link.closed is not None or link.draining is not None \
                or not may_presend(self, session, link):
            return None  # the caller opens the link, or learns the session is lost
        return link, register_sync(self, link, cid)

    def _assign(self, slot: Slot, session: str | None) -> Slot:
        slot.load += 1
        if session is not None:
            bind(self, session, slot)
        return slot

    def _pick(self, session: str | None, limit: int, on_lost: str) -> Slot | None:
        if session is not None:
            bound = bound_slot(self, session, on_lost)
            if bound is not None:
                return bound if bound.load < limit else None
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

    def requeue(self, jobs: list[Any]) -> None:
        """Put calls that never ran back at the front of the queue, in order (under lock)."""
        self.pending.extendleft(reversed(jobs))

    def refresh(self) -> list[Any]:
        """Capacity changed: serve queued callers, then plan queued async calls (under lock)."""
        plans: list[Any] = []
        self._serve(plans)
        plans.extend(plan(self, force=True))
        return plans

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

    # ------------------------------------------------------------------ follow-ups
    def run(self, done: Any, plans: Any) -> None:
        """Settle async calls and send planned batches (never under the lock: settling
        runs the futures' callbacks, which may call back into the pool)."""
        if done:
            settle_all(done)
        for slot, jobs in plans:
            if slot is None:
                presend(self, *jobs)
            else:
                send_jobs(self, slot, jobs)

    def worker_leaving(self, path: str, why: str) -> int | None:
        """Its supervisor is stopping the worker at `path` (over its memory limit): send it
        nothing new, as if it had sent its Closing notice. Returns the pid it had, or
        None when no open link went to it. Takes only the lock (runs on the App's reader
        thread)."""
        with self.lock:
            for slot in self.slots:
                link = slot.link
                if slot.path == path and link is not None and link.closed is None:
                    drain(self, link, why)
                    return link.pid
        return None

    def kick(self) -> None:
        """A worker of the pool (re)started: serve whoever waits for capacity."""
        with self.lock:
            plans = self.refresh()
        self.run((), plans)

    def tree_gone(self) -> None:
        """The root exited: fail everything still queued or in flight, wake every waiter,
        and release the pool's descriptors (its links, its watcher). Idempotent."""
        with self.lock:
            if self.gone:
                return
            self.gone = True
            self.watcher.closed = True
            jobs = list(self.pending)
            self.pending.clear()
            for waiter in self.waiters:
                waiter.cond.notify()
            lost = []
            for slot in self.slots:
                if slot.link is not None:
                    # Closed here unless a caller is reading it; that caller is woken
                    # and closes it as it lets go (see `release`).
                    lost.extend(lose_link(self, slot.link, "the tree stopped"))
        self.watcher.close()
        exc = WorkerCrashed("the tree is not running", path=self.path)
        self.run([(job, exc, self.path) for job in jobs] + lost, ())


def _watch_tree(core: PoolCore) -> None:
    """Hear about the pool's workers (re)starting or being stopped, and the tree's end.

    The telemetry hook runs on the App's reader thread: it only takes the lock, or
    schedules work on the timer thread (a request from the reader thread would wait for
    itself). Both hooks hold the core weakly, so a dropped App takes its pool client
    with it.
    """
    ref = weakref.ref(core)
    handler_id = f"supervisor-pool-{id(core)}"

    def on_event(event: Any, measurements: Any, metadata: Any) -> None:
        target = ref()
        if target is None:
            telemetry.detach(handler_id)
        else:
            _on_child_event(target, event[-1], metadata)

    def await_exit(exited: threading.Event) -> None:
        exited.wait()
        telemetry.detach(handler_id)
        target = ref()
        if target is not None:
            target.tree_gone()

    telemetry.attach(handler_id, [("supervisor", "child", "started"),
                                  ("supervisor", "child", "memory_exceeded")], on_event)
    threading.Thread(target=await_exit, args=(core.app._exited,), daemon=True,
                     name=f"pool-exit-{core.path}").start()


def _on_child_event(core: PoolCore, name: str, metadata: Any) -> None:
    # A worker over its memory limit is stopped gracefully by its supervisor, which says
    # so first ("memory_exceeded"): the pool stops sending it calls at once, so calls
    # queued meanwhile go to its replacement.
    path = metadata.get("path") or ""
    prefix = f"{core.path}/" if core.path else ""
    if not path.startswith(prefix) or "/" in path[len(prefix):]:
        return  # not one of our workers
    if name == "started":
        core.timers.call_soon(core.kick)
        return
    pid = core.worker_leaving(path, "is leaving (over its memory limit)")
    if pid is not None:
        telemetry.execute(("supervisor", "pool", "worker_leaving"), {"time": time.time()},
                          {"path": path, "id": metadata.get("id"), "pid": pid,
                           "pool": core.path, "reason": "memory_limit",
                           "category": "resource_error"})
