"""Where pool results go: futures, map tables, and the count of a view's open calls.

    settle_all([(job, outcome, path), ...])   a Reply / Fail / exception per call:
        job.index < 0  ─▶ its PoolFuture (submit)
        job.index >= 0 ─▶ its MapResults unit (map), a chunk's results at once

Settling runs futures' callbacks, so it never happens under the pool's lock, with one
exception that runs none: `settle_filed`, a reader's batch of plain replies to futures
nobody waits on (no Condition: no waiter, no callback), settled as they are filed.

`PoolFuture` is a `concurrent.futures.Future` that builds its lock only when needed.

`Future()` builds a `threading.Condition` up front: an RLock, a deque and five bound
methods, a dozen objects the cyclic GC has to track for every call. Under `submit` load
that tracking was 40% of the caller's CPU (measured: 78k calls/s with the collector on,
130k/s with it off). Most pool futures are settled before anybody waits on them, so
`PoolFuture` makes the Condition (and its waiter and callback lists) on first use, and its
state changes that no waiter can observe yet (running, result, exception, all before any condition exists) skip it.

Why this is safe: a waiter (`result`/`exception` with a wait, `add_done_callback`,
`concurrent.futures.wait`/`as_completed`, `cancel`) always goes through `_condition`,
which creates the Condition under `_CREATE`; the fast state changes check, under the same
lock, that it does not exist. So either the setter sees the Condition and takes the
ordinary path (notifying waiters and calling callbacks), or the waiter creates it after
the change and finds the final state when it looks under it. Everything else is the
standard library's Future, unchanged.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

from ..client.channel import reply_value
from ..errors import ProtocolError, WorkerError
from ..wire import messages as P
from .link import Job

__all__ = ["PoolFuture", "MapResults", "Tracker", "settle", "settle_all", "settle_filed",
           "start_all"]

_CREATE = threading.Lock()  # creating a Condition vs. a change made without one
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class PoolFuture(Future):
    """A `concurrent.futures.Future`, cheaper to make and to settle unobserved."""

    # Future.__init__ without the Condition and lists, and without a Python frame: the
    # initial values are class attributes (immutable, so sharing them is safe; every
    # change is an assignment, which lands on the instance), and the constructor is
    # object's own. One future is made per `submit`: this halves its cost (0.21 -> 0.11
    # us measured).
    _state = PENDING
    _result: Any = None
    _exception: BaseException | None = None
    _cond: threading.Condition | None = None
    _lists: tuple[list[Any], list[Any]] | None = None
    __init__ = object.__init__

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _CREATE:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    # The waiter and callback lists are only touched by code that holds the Condition (or
    # settles after it): made on first use, like it.
    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        return (self._lists or self._make_lists())[0]

    @property
    def _done_callbacks(self) -> list[Any]:  # type: ignore[override]
        return (self._lists or self._make_lists())[1]

    def _make_lists(self) -> tuple[list[Any], list[Any]]:
        with _CREATE:
            if self._lists is None:
                self._lists = ([], [])
            return self._lists

    def _quietly(self, state: str, old: tuple[str, ...], result: Any = None,
                 exception: BaseException | None = None) -> bool:
        """Move from one of `old` to `state` if nobody can be watching; False if not."""
        with _CREATE:
            if self._cond is not None or self._state not in old:
                return False
            self._result = result
            self._exception = exception
            self._state = state
            return True

    def set_running_or_notify_cancel(self) -> bool:
        if self._quietly(RUNNING, (PENDING,)):
            return True
        return super().set_running_or_notify_cancel()

    def set_result(self, result: Any) -> None:
        if not self._quietly(FINISHED, (PENDING, RUNNING), result=result):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._quietly(FINISHED, (PENDING, RUNNING), exception=exception):
            super().set_exception(exception)

    def done(self) -> bool:
        return self._state in _DONE  # a state read is atomic; FINISHED is final

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # noqa: PLW0642 - break the frame/exception cycle, as Future does
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)


PENDING_UNIT = object()  # a map unit whose results are not in yet


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


def settle_filed(jobs: list[Job], replies: list[Any], path: str) -> Any:
    """Settle, as a reader files them, the calls of `jobs` whose reply (the same index
    of `replies`) is a plain Reply and whose sink is a running PoolFuture without a
    Condition (the common case under `submit` load), all under one acquisition of
    `_CREATE`, and count them done; return the others as (job, reply, path), in order,
    for `settle_all` outside the lock (an empty tuple if none).

    Runs under the pool's lock, which is every Tracker's lock (so the count needs no lock
    of its own), and takes `_CREATE` inside it; nothing takes them the other way round
    (`_CREATE` is only held for a few assignments). As `PoolFuture._quietly` for one
    future: no Condition exists, and none can be made while we hold `_CREATE`, so nobody
    waits and no callback is registered, and no callback runs here; a waiter that comes
    later makes the Condition and finds the final state. `_result` is stored before
    `_state`, so a lock-free `result()` that sees FINISHED sees it."""
    rest = None
    owner, count = None, 0
    reply, future, running = P.Reply, PoolFuture, RUNNING  # bound once: a loop per reply
    with _CREATE:
        for job, outcome in zip(jobs, replies, strict=True):
            fut = job.sink
            if type(outcome) is reply and type(fut) is future and fut._cond is None \
                    and fut._state == running and not outcome.pickled:
                fut._result = outcome.value
                fut._state = FINISHED
                if job.owner is not owner:
                    if owner is not None:
                        owner.done_locked(count)
                    owner, count = job.owner, 0
                count += 1
            elif rest is None:
                rest = [(job, outcome, path)]
            else:
                rest.append((job, outcome, path))
    if owner is not None:
        owner.done_locked(count)
    return () if rest is None else rest


def start_all(jobs: list[Job]) -> list[Job] | None:
    """Mark the calls of a batch running before their frames are written, the common case
    (a fresh PoolFuture nobody waits on) under one acquisition of `_CREATE` (as
    `settle_filed`: no waiter exists, none can appear meanwhile). Returns None when
    that was all of them, else the calls whose sinks must go the ordinary way (outside
    that lock: `set_running_or_notify_cancel` takes it, and notifies waiters), in order.
    A Job not yet `started` and left out is for the caller to start."""
    slow = None
    with _CREATE:
        for job in jobs:
            if job.started:
                continue
            fut = job.sink
            if type(fut) is PoolFuture and fut._cond is None and fut._state == PENDING:
                fut._state = RUNNING
                job.started = True
            elif slow is None:
                slow = [job]
            else:
                slow.append(job)
    return slow


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

    `count` is guarded by the pool state's lock: `enqueue` adds under the lock it takes
    anyway, so a submit pays no lock of its own; `done` runs outside that lock, and
    `done_locked` under it (a reader counting the calls it settled as it filed them).
    """

    def __init__(self, lock: threading.Lock) -> None:
        self.lock = lock
        self.idle = threading.Condition(lock)
        self.count = 0

    def done(self, n: int = 1) -> None:
        with self.lock:
            self.done_locked(n)

    def done_locked(self, n: int) -> None:
        """`done` by a caller that holds the pool state's lock."""
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
        self.values: list[Any] = [PENDING_UNIT] * n
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
            if self.want >= 0 and values[self.want] is not PENDING_UNIT:
                self.cond.notify()

    def get(self, index: int, deadline: float | None) -> tuple[list[Any], BaseException | None]:
        """Unit `index`'s results and error; TimeoutError past `deadline`."""
        values = self.values[index]
        if values is PENDING_UNIT:  # else it is in, error included (set first): no lock needed
            with self.cond:
                self.want = index
                while self.values[index] is PENDING_UNIT:
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise TimeoutError
                    self.cond.wait(remaining)
                values = self.values[index]
        self.values[index] = None  # free it as we go
        return values, self.errors.pop(index, None)
