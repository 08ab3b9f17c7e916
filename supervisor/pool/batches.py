"""Asynchronous pool calls (`submit`, `map`): queueing, batching on the wire, settling.

    submit() ─▶ pending: deque of Jobs (a call, or a map  ─▶ plan(): per slot with room,
    map()    ─▶   chunk run by the worker's _batch)            the calls it can take
                                                        ─▶ send_jobs(): ONE write per slot
    replies  ─▶ the link's reader files them ─▶ settle(): future result / map slot

Batching is Nagle's rule applied to calls: a call goes out at once when some worker is
idle; while every worker has calls in flight, new calls wait in `pending` until replies
free room (the reader then plans and writes all that waits, up to the cap, in one go). A
call is therefore never held back while a worker idles, and under load many frames share
one write and one wake-up of the worker. A submitted call is its own frame and command;
a map chunk (chunksize > 1) is one `_batch` frame the worker runs item by item and
answers with one reply of all the chunk's results.

Every function here runs in the caller's or a reader's thread; those named "(under lock)"
expect the pool core's lock to be held.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import CancelledError
from typing import TYPE_CHECKING, Any

from ..client.channel import reply_value
from ..errors import EncodeError, ProtocolError, SupervisorError, WorkerCrashed, WorkerError
from ..wire import messages as P
from .io import link_of, lose_link, wake_io, watch_progress
from .link import BUFFERED, STAR, Job
from .overflow import maybe_grow

if TYPE_CHECKING:
    from .core import PoolCore, Slot

__all__ = ["enqueue", "plan", "cancel_queued", "send_jobs", "settle",
           "settle_all", "Tracker", "MapResults"]

_PENDING = object()


def enqueue(core: PoolCore, jobs: list[Job], force: bool) -> None:
    """Queue calls and send what can go now; fails them if the tree is gone."""
    if not jobs:
        return
    if not core._started:
        core.start()
    owner = jobs[0].owner  # one view's calls
    with core.lock:
        owner.count += len(jobs)
        gone = core.gone
        if not gone:
            # Calls already queued mean every worker was busy (or down): whoever frees
            # one plans again, so a submit that queues behind them plans nothing.
            queued = core.pending
            was_queued = bool(queued)
            queued.extend(jobs)
            plans = plan(core, force) if force or not was_queued else []
    if gone:
        exc = WorkerCrashed("the tree is not running", path=core.path)
        core.run([(job, exc, core.path) for job in jobs], ())
    elif plans:
        core.run((), plans)


def plan(core: PoolCore, force: bool) -> list[tuple[Slot, list[Job]]]:
    """Assign queued calls to slots with room, evening out their loads (under lock).

    Without `force` (a new submit), only idle slots are given calls: busy ones are
    planned again by their readers when replies come, which is when a batch has gathered
    and is worth one write. Loads are levelled rather than filled one slot at a time, so
    a short map of slow calls runs on every worker instead of queueing behind one.
    """
    pending = core.pending
    if not pending or core.gone:
        return []
    if core.waiters and any(w.session is None for w in core.waiters):
        return []  # queued blocking callers first: let a slot drain to them
    gather = not force
    slots = [s for s in core.slots if not (gather and s.load) and core.usable(s)]
    if not slots:
        if not gather:
            maybe_grow(core)
        return []
    if len(slots) > 1:
        slots.sort(key=_load)
    level = -(-(sum(s.load for s in slots) + len(pending)) // len(slots))
    plans = []
    for slot in slots:
        jobs = _take(core, slot, level)
        if jobs:
            plans.append((slot, jobs))
        if not pending:
            break
    if pending and not gather:
        maybe_grow(core)  # calls still queued: every worker is at its cap
    return plans


def _load(slot: Slot) -> int:
    return slot.load


def _take(core: PoolCore, slot: Slot, level: int) -> list[Job]:
    # Calls up to `level`, while the slot stays under the calls' cap (their view's
    # pipeline); an idle slot takes at least one.
    jobs: list[Job] = []
    load = slot.load
    pending = core.pending
    while pending and (load < level or not load):
        if load >= pending[0].cap:
            break
        jobs.append(pending.popleft())
        load += 1
    slot.load = load
    return jobs


def cancel_queued(core: PoolCore, owner: Tracker) -> None:
    """Take `owner`'s calls that were not sent yet out of the queue and cancel them."""
    with core.lock:
        dropped = [job for job in core.pending if job.owner is owner and not job.started]
        if dropped:
            kept = [job for job in core.pending if not (job.owner is owner and not job.started)]
            core.pending.clear()
            core.pending.extend(kept)
    for job in dropped:
        if job.index < 0:
            job.sink.cancel()
        else:  # the map's iterator raises it when it reaches the item, as a future would
            job.sink.settle(job.index, [], CancelledError())
    if dropped:
        owner.done(len(dropped))


def send_jobs(core: PoolCore, slot: Slot, jobs: list[Job]) -> None:
    """Write `jobs` (already counted in `slot.load`) to the slot's worker in one write;
    jobs that cannot go there are queued again."""
    try:
        link = link_of(core, slot)
    except SupervisorError as exc:  # the tree is gone or does not answer
        with core.lock:
            slot.load -= len(jobs)
        for job in jobs:
            settle(job, exc, slot.path)
        return
    live = _start(core, slot, jobs) if link is not None else []
    if link is None or not live:
        _give_back(core, slot, jobs if link is None else [])
        return
    msgs, data, live = _encode(core, slot, link, live)
    if not live:
        return
    with core.lock:
        if link.closed is not None or link.draining is not None:
            slot.load -= len(live)
            core.requeue(live)
            plans = core.refresh()
        else:
            plans = None
            waiting = link.waiting
            for msg, job in zip(msgs, live, strict=True):
                waiting[msg.id] = job
                if job.batch and len(job.args) > link.chunk:
                    link.chunk = len(job.args)
            if not link.async_count:
                link.last_progress = time.monotonic()
                watch_progress(core, link)
            link.async_count += len(live)
    if plans is not None:
        core.run((), plans)
        return
    _write(core, link, msgs, live, data)


def _write(core: PoolCore, link: Any, msgs: list[Any], live: list[Job], data: bytes) -> None:
    try:
        status = link.write(data)
    except OSError as exc:
        # Not one byte of these frames left: they never ran, so they go elsewhere. Only
        # those still registered, though: a reader that saw the link die meanwhile has
        # settled the others already (they count as in flight when it died).
        with core.lock:
            mine = [job for msg, job in zip(msgs, live, strict=True)
                    if link.waiting.pop(msg.id, None) is job]
            link.async_count -= len(mine)
            link.slot.load -= len(mine)
            if mine:
                core.requeue(mine)
            lost = [] if link.draining else lose_link(core, link, f"send failed: {exc}")
            plans = core.refresh()
        core.run(lost, plans)
        return
    if status is BUFFERED:
        wake_io(core, link)


def _give_back(core: PoolCore, slot: Slot, jobs: list[Job]) -> None:
    with core.lock:
        if jobs:
            slot.load -= len(jobs)
            core.requeue(jobs)
        plans = core.refresh()
    core.run((), plans)


def _start(core: PoolCore, slot: Slot, jobs: list[Job]) -> list[Job]:
    """Mark the calls running; drop those cancelled meanwhile (they are never sent)."""
    live = []
    dropped = 0
    for job in jobs:
        if not job.started:
            job.started = True
            sink = job.sink
            if not (sink.set_running_or_notify_cancel() if job.index < 0
                    else not sink.cancelled):
                dropped += 1
                job.owner.done()
                continue
        live.append(job)
    if dropped:
        with core.lock:
            slot.load -= dropped
    return live


def _encode(core: PoolCore, slot: Slot, link: Any, live: list[Job]
            ) -> tuple[list[Any], bytes, list[Job]]:
    ids = core.ids
    msgs = [P.Call(id=next(ids), method=P.BATCH, args=(job.method, job.args, job.batch == STAR))
            if job.batch
            else P.Call(id=next(ids), method=job.method, args=job.args, kwargs=job.kwargs)
            for job in live]
    try:
        return msgs, P.CALL_CODEC.encode_many(msgs), live
    except EncodeError:
        pass  # find the culprits: only their calls fail
    good_msgs, good_jobs, frames = [], [], []
    for msg, job in zip(msgs, live, strict=True):
        try:
            frames.append(P.CALL_CODEC.encode(msg))
        except EncodeError as exc:
            with core.lock:
                slot.load -= 1
            settle(job, exc, slot.path)
            continue
        good_msgs.append(msg)
        good_jobs.append(job)
    return good_msgs, b"".join(frames), good_jobs


def settle(job: Job, outcome: Any, path: str) -> None:
    """Give the call's result or error (a Reply/Fail message, or an exception) to its
    future or map slot, and count it done."""
    settle_all([(job, outcome, path)])


def settle_all(done: Any) -> None:
    """`settle` for many calls: a map's results go in per batch, and calls are counted
    done once per client view (one lock each, not one per call)."""
    owner, count = None, 0
    table, batch = None, []
    for job, outcome, path in done:
        value, exc = _outcome(job, outcome, path)
        if job.index < 0:
            _finish(job, value, exc)
        else:
            if job.sink is not table:
                if batch:
                    table.settle_many(batch)
                table, batch = job.sink, []
            if not job.batch:
                batch.append((job.index, [] if exc else [value], exc))
            elif exc is not None:
                batch.append((job.index, [], exc))
            else:
                batch.append((job.index, *_chunk(job, value, path)))
        if job.owner is not owner:
            if owner is not None:
                owner.done(count)
            owner, count = job.owner, 0
        count += 1
    if batch:
        table.settle_many(batch)
    if owner is not None:
        owner.done(count)


def _outcome(job: Job, outcome: Any, path: str) -> tuple[Any, BaseException | None]:
    if type(outcome) is P.Reply and not outcome.pickled:
        return outcome.value, None  # the common case, without a call
    if isinstance(outcome, BaseException):
        return None, outcome
    try:
        return reply_value(outcome, path, job.method), None
    except WorkerError as error:
        return None, error


def _chunk(job: Job, value: Any, path: str) -> tuple[list[Any], BaseException | None]:
    # A `_batch` reply: the results in order, and the failure of the item after them.
    try:
        results, failure = value
        if failure is None:
            return results, None
        reply_value(P.Fail(0, *failure), path, job.method)
    except WorkerError as error:
        return results, error
    except (TypeError, ValueError):
        pass
    return [], ProtocolError(f"malformed {P.BATCH} reply from {path!r}: {value!r:.200}")


def _finish(job: Job, value: Any, exc: BaseException | None) -> None:
    fut = job.sink
    if job.started or fut.set_running_or_notify_cancel():
        if exc is None:
            fut.set_result(value)
        else:
            fut.set_exception(exc)


class Tracker:
    """Counts one client view's outstanding async calls, for ``shutdown(wait=True)``.

    `count` is guarded by the pool core's lock: `enqueue` adds under the lock it takes
    anyway, so a submit pays no lock of its own; `done` runs outside that lock.
    """

    def __init__(self, core: PoolCore) -> None:
        self.lock = core.lock
        self.idle = threading.Condition(core.lock)
        self.count = 0

    def done(self, n: int = 1) -> None:
        with self.lock:
            self.count -= n
            if not self.count:
                self.idle.notify_all()

    def wait_idle(self) -> None:
        with self.lock:
            while self.count:
                self.idle.wait()


class MapResults:
    """The results of one `map`, by unit (a chunk, or one item when chunksize is 1):
    each unit's results in order, and the error of the item after them, if any. The
    iterator waits on one unit at a time."""

    def __init__(self, n: int) -> None:
        self.values: list[Any] = [_PENDING] * n
        self.errors: dict[int, BaseException] = {}
        self.cond = threading.Condition(threading.Lock())
        self.want = -1
        self.cancelled = False

    def settle(self, index: int, values: list[Any], exc: BaseException | None) -> None:
        self.settle_many([(index, values, exc)])

    def settle_many(self, units: list[tuple[int, list[Any], BaseException | None]]) -> None:
        values, errors = self.values, self.errors
        with self.cond:
            for index, results, exc in units:
                if exc is not None:
                    errors[index] = exc  # before the value: `get` may look without the lock
                values[index] = results
            if self.want >= 0 and values[self.want] is not _PENDING:
                self.cond.notify()

    def get(self, index: int, deadline: float | None) -> tuple[list[Any], BaseException | None]:
        """Unit `index`'s results and error; TimeoutError past `deadline`."""
        values = self.values[index]
        if values is _PENDING:  # else it is in, error included (set first): no lock needed
            with self.cond:
                self.want = index
                while self.values[index] is _PENDING:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    self.cond.wait(remaining)
                values = self.values[index]
        self.values[index] = None  # free it as we go
        return values, self.errors.pop(index, None)
