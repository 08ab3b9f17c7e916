"""`app.pool(path)`: the dispatching client of a `Pool`, usable like a process pool executor.

    pool = app.pool("py")
    pool.call("predict", x)                          # least-loaded worker, FIFO when all busy
    pool.call("step", 1, session="user-7")           # sticks to one worker process
    pool.execute_in_session("user-7", "step", [1])   # the same, args as a list
    pool.end_session("user-7")                       # drops the worker's session state
    fut = pool.submit("predict", x)                  # a concurrent.futures.Future
    ys = list(pool.map("predict", xs, chunksize=256))
    pool.options(on_lost="reassign").call(...)       # a view with other options

Calls go straight to the workers over the client's own channels (one per worker process);
no supervisor sits on the path, and a blocking caller writes its frame and reads its own
reply (no thread hand-off). Threads of the client: one watcher per pool (epoll) reads the
channels nobody else is reading (async replies, a leaving worker's notice, a dead idle
worker's EOF); one timer thread exists while a timer is due; overflow workers are started
and retired from short-lived threads. The rooms, by lock discipline:

    state.py       every decision, under the pool's one lock; returns Effects
    io.py          opening, writing and reading links, and carrying out Effects,
                   outside the lock
    membership.py  the pool's workers: start, overflow growth and retirement, the tree's end
    results.py     futures and map tables (settled outside the lock)
    link.py        one worker's slot and channel (non-blocking I/O only)
    sessions.py    session affinity
    threads.py     the watcher and the timers

Deviations from `concurrent.futures`, on purpose: the workers belong to the tree, not to
the client, so `shutdown()` waits for (or cancels) the client's outstanding calls and the
client stays usable afterwards; `submit`'s first argument is a command name (or a method of
the worker class, whose name is used).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future
from itertools import chain, islice
from typing import Any

import msgspec

from ..client.channel import reply_value
from ..client.link import RootLink
from ..client.retry import Attempt, with_retries
from ..errors import (
    SessionLost,
    WorkerCrashed,
)
from ..wire import messages as P
from .io import PoolIO
from .link import NOT_SENT, ONE, STAR, Job, Slot
from .membership import Membership
from .results import MapResults, PoolFuture, Tracker
from .state import PoolState

__all__ = ["PoolClient", "PIPELINE"]

PIPELINE = 128
"""Default cap of async calls in flight per worker (`submit`, `map`)."""

_ON_LOST = ("fail", "reassign")


class PoolClient:
    """The dispatching client of the `Pool` at `path` (get it with ``app.pool(path)``).

    Busy and queueing: a worker is busy for a blocking call (`call`,
    `execute_in_session`) while `max_in_flight` calls are checked out or in flight on it
    (default 1, a classic checkout pool: one caller per worker, so a slow call never
    holds up a caller that a free sibling could serve). When every worker is busy, callers
    queue first come, first served; one still queued after the pool's `checkout_timeout`
    gets PoolExhausted. Async calls (`submit`, `map`) pipeline up to `pipeline` calls per
    worker (default 128) and queue without a time limit, as an executor's do; while a
    blocking caller waits, they are not topped up, so a long map cannot starve `call`.
    Least-loaded dispatch prefers the pool's own workers over overflow ones on ties, so
    overflow workers go idle first and retire after `retire_after` seconds.

    Sessions stick to one worker process. When it has died (or left: recycled, stopped),
    every call in the session raises SessionLost until `end_session(id)`, unless the view
    was made with ``options(on_lost="reassign")``: then the session moves to another
    worker with empty state.

    Failures: a worker crash fails only the calls in flight on it (WorkerCrashed; re-sent
    when the method is idempotent, with the matrix row's delays). A call that never ran
    (refused NotRun by a leaving worker, or never sent) is dispatched again. The pool never
    becomes unusable: replacements are used as soon as they are up.
    """

    def __init__(self, link: RootLink, path: str, *, max_in_flight: int = 1,
                 pipeline: int = PIPELINE, on_lost: str = "fail",
                 _members: Membership | None = None) -> None:
        if on_lost not in _ON_LOST:
            raise ValueError(f"on_lost must be one of {_ON_LOST}, got {on_lost!r}")
        for name, value in (("max_in_flight", max_in_flight), ("pipeline", pipeline)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        self._link = link
        self.path = path
        if _members is None:  # the first view of this pool: its state and I/O
            _members = Membership(PoolIO(PoolState(path, link.generation_of), link))
        self._members = _members
        self._io = _members.io
        self._state = _members.state
        self._max_in_flight = max_in_flight
        self._pipeline = pipeline
        self._on_lost = on_lost
        self._tracker = Tracker(self._state.lock)

    def options(self, *, on_lost: str | None = None, max_in_flight: int | None = None,
                pipeline: int | None = None) -> PoolClient:
        """A view of the same pool (same workers, queue and sessions) with other options.

        `on_lost`: "fail" (SessionLost) or "reassign" (a lost session moves, empty).
        `max_in_flight`: blocking calls a worker takes at once before it counts as busy
        (more than 1 pipelines tiny calls from many threads, at the price of queueing a
        call behind a slow one on the same worker). `pipeline`: async calls in flight
        per worker. Raises ValueError for bad values.
        """
        return PoolClient(
            self._link, self.path, _members=self._members,
            on_lost=self._on_lost if on_lost is None else on_lost,
            max_in_flight=self._max_in_flight if max_in_flight is None else max_in_flight,
            pipeline=self._pipeline if pipeline is None else pipeline)

    @property
    def retire_after(self) -> float:
        """Seconds an overflow worker stays idle before it is retired (pool-wide: every
        view of the pool shares it; default 1.0)."""
        return self._state.retire_after

    @retire_after.setter
    def retire_after(self, seconds: float) -> None:
        if not isinstance(seconds, int | float) or seconds <= 0:
            raise ValueError(f"retire_after must be > 0, got {seconds!r}")
        self._state.retire_after = float(seconds)

    def workers(self) -> list[dict[str, Any]]:
        """The pool's workers: id, path, overflow, load (this client's calls checked out or
        in flight on it) and pid (of the running worker process, as its supervisor reports
        it; None while it is not running). Raises WorkerCrashed once the tree is gone."""
        self._members.start()
        running = {info.id: info.pid for info in msgspec.convert(
            self._link.request(P.WhichChildren(id=0, path=self.path)), list[P.ChildInfo])}
        state = self._state
        with state.lock:
            return [{"id": s.id, "path": s.path, "overflow": s.overflow, "load": s.load,
                     "pid": running.get(s.id)}
                    for s in state.slots if not s.retiring]

    # ------------------------------------------------------------------ blocking calls
    def call(self, method: Any, *args: Any, timeout: float | None = None,
             retry: bool = True, idempotent: bool = False, session: str | None = None,
             **kwargs: Any) -> Any:
        """Run `method` on the least-loaded worker (or the session's) and return its result.

        `timeout` bounds the call once sent (default: the worker's `call_timeout`); the
        wait for a free worker is bounded by the pool's `checkout_timeout`. Raises
        PoolExhausted, SessionLost, CommandError, WorkerCrashed, CallTimeout, EncodeError.
        With `retry`, a call that never ran goes to another worker, and an idempotent one
        is re-sent after WorkerCrashed/CallTimeout with the matrix row's delays.
        """
        return self._call(_method_name(method), args, kwargs, session, timeout, retry,
                          idempotent, self._on_lost)

    def execute_in_session(self, session_id: str, method: Any, args: Iterable[Any] = (),
                           kwargs: dict[str, Any] | None = None, *,
                           timeout: float | None = None, retry: bool = True) -> Any:
        """``call(method, *args, session=session_id, **kwargs)``; raises as `call` does."""
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
        return self._call(_method_name(method), tuple(args), kwargs, session_id, timeout,
                          retry, False, self._on_lost)

    def end_session(self, session_id: str) -> bool:
        """Drop the session's state in its worker and forget its affinity; True when the
        worker held state for it. A lost or unknown session just returns False."""
        with self.ending_session(session_id) as live:
            if not live:
                return False
            try:
                return bool(self._call(P.END_SESSION, (), None, session_id, None, True,
                                       False, "fail"))
            except (SessionLost, WorkerCrashed):  # its worker is gone: so is the state
                return False

    @contextlib.contextmanager
    def ending_session(self, session_id: str) -> Iterator[bool]:
        """The bookkeeping of an end_session (blocking or awaited): yields whether the
        session is bound to a live worker, which is then asked to drop its state; the
        session's affinity is forgotten on the way out, whatever that worker answered."""
        state = self._state
        with state.lock:
            sess = state.sessions.get(session_id)
        if sess is None:
            yield False
            return
        try:
            yield sess.lost is None
        finally:
            with state.lock:
                state.sessions.forget(session_id, sess)

    def _call(self, name: str, args: tuple, kwargs: dict[str, Any] | None,
              session: str | None, timeout: float | None, retry: bool, idempotent: bool,
              on_lost: str) -> Any:
        return with_retries(
            lambda attempt: self._call_once(attempt, name, args, kwargs or None, session,
                                            timeout, retry, on_lost),
            method=name, path=self.path, idempotent=idempotent, retry=retry, session=session,
            pause=self._link.exited.wait)

    def _call_once(self, attempt: Attempt, name: str, args: tuple,
                   kwargs: dict[str, Any] | None,
                   session: str | None, timeout: float | None, retry: bool,
                   on_lost: str) -> Any:
        self._members.start()
        io = self._io
        cid = next(self._state.ids)
        frame = P.CALL_CODEC.encode(P.Call(id=cid, method=name, args=args, kwargs=kwargs,
                                           session=session))  # EncodeError: before checkout
        deadline = time.monotonic() + self._state.checkout_timeout
        while True:
            slot, sent, written = io.checkout(session, self._max_in_flight, on_lost,
                                              deadline, cid, frame)
            try:
                reply = self._on_slot(attempt, slot, name, cid, frame, session, timeout,
                                      on_lost, sent, written)
            finally:
                io.checkin(slot)
            if reply is not None:
                return reply_value(reply, slot.path, name)
            if not retry:
                raise WorkerCrashed(f"worker {slot.path!r} was not running or was leaving; "
                                    "the call did not run (retry=False)", path=slot.path)

    def _on_slot(self, attempt: Attempt, slot: Slot, name: str, cid: int, frame: bytes,
                 session: str | None, timeout: float | None, on_lost: str, sent: Any,
                 written: bool) -> Any:
        """One try on a checked-out slot: the reply, or None when the call did not run."""
        io = self._io
        if sent is not None:
            link, entry = sent  # registered with the checkout (and written, if queued)
            attempt.policy = link.policy
            if not written and not io.send_sync(link, frame, cid):
                return None
        else:
            link = io.link_of(slot)
            if link is None:
                return None
            attempt.policy = link.policy
            entry = io.register(link, session, on_lost, cid)
            if entry is None or not io.send_sync(link, frame, cid):
                return None
        limit = timeout if timeout is not None else link.call_timeout
        deadline = None if limit is None else time.monotonic() + limit
        try:
            reply = io.await_reply(link, entry, cid, deadline)
        except TimeoutError:
            raise io.timed_out(link, name, limit) from None
        if reply is NOT_SENT or type(reply) is P.NotRun:
            return None
        return reply

    # ------------------------------------------------------------------ executor facade
    def submit(self, method: Any, /, *args: Any, timeout: float | None = None,
               **kwargs: Any) -> Future:
        """Schedule ``method(*args, **kwargs)`` on the pool; returns a Future.

        Its `result()` raises what `call` would (CommandError with the remote type in its
        message, WorkerCrashed, EncodeError, ...). `cancel()` succeeds while the call is
        still queued in the client. `timeout` (the one reserved keyword) is this call's
        own limit in seconds from when it is sent to a worker: past it the future fails
        with CallTimeout and, with the worker's default ``on_timeout="restart"``, that
        worker is replaced. A call with a timeout runs alone on an idle worker (nothing is
        pipelined with it), so no other call is lost with it; while it runs, that worker
        takes no other call. Without it, the worker's `call_timeout` bounds the wait for
        each reply of its pipelined calls.
        """
        if timeout is None and type(method) is str and self._members.started:
            # The common case in one frame (no checks to make, the pool known): a submit
            # is the submitting thread's whole cost per call under load.
            fut = PoolFuture()
            self._io.enqueue_one(Job(method, args, kwargs or None, fut, -1, self._tracker,
                                     self._pipeline))
            return fut
        return self.submit_to(PoolFuture(), method, args, kwargs, timeout)

    def submit_to(self, sink: Any, method: Any, args: tuple, kwargs: dict[str, Any],
                  timeout: float | None = None) -> Any:
        """`submit` with the outcome going to `sink`, anything with a Future's
        ``set_running_or_notify_cancel``, ``set_result``, ``set_exception`` and
        ``cancel`` (called on the pool's threads); returns `sink`."""
        if timeout is not None:
            timeout = _check_timeout(timeout)
        if not self._members.started:
            self._members.start()
        self._io.enqueue([Job(_method_name(method), args, kwargs or None, sink, -1,
                              self._tracker, self._pipeline, timeout=timeout)], force=False)
        return sink

    def map(self, method: Any, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> Iterator[Any]:
        """``method(*items)`` for items zipped from `iterables`; results in order.

        As `Executor.map`: the calls are scheduled at once; iterating raises an item's
        error when its result is reached, and TimeoutError if a result is not ready
        `timeout` s after this call. With `chunksize` > 1, each chunk of items goes to one
        worker as one command and comes back as one reply; as in ProcessPoolExecutor, the
        items of a chunk after a failing one are not run (the iterator stops at the
        failure anyway), and a worker crash fails the whole chunk.
        """
        end = None if timeout is None else time.monotonic() + timeout
        results = self.schedule_map(method, iterables, chunksize, MapResults)
        return _iterate(results, len(results.values), end)

    def schedule_map(self, method: Any, iterables: tuple[Iterable[Any], ...], chunksize: int,
                     table: type[MapResults]) -> MapResults:
        """Queue the calls of a `map` (see there); their results go to a new `table`
        (a MapResults, or a subclass that tells its reader in its own way)."""
        if not isinstance(chunksize, int) or isinstance(chunksize, bool) or chunksize < 1:
            raise ValueError(f"chunksize must be an int >= 1, got {chunksize!r}")
        name = _method_name(method)
        tracker = self._tracker
        cap = self._pipeline
        if chunksize == 1:
            jobs = [Job(name, args, None, None, i, tracker, cap)
                    for i, args in enumerate(zip(*iterables, strict=False))]
        else:  # one iterable: its items are the arguments, no tuple each
            kind = ONE if len(iterables) == 1 else STAR
            items = iter(iterables[0] if kind == ONE else zip(*iterables, strict=False))
            jobs = []
            while chunk := list(islice(items, chunksize)):
                jobs.append(Job(name, chunk, None, None, len(jobs), tracker, cap, kind))
        results = table(len(jobs))
        for job in jobs:
            job.sink = results
        if not self._members.started:
            self._members.start()
        self._io.enqueue(jobs, force=True)
        return results

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Wait for this client's outstanding async calls (`wait`), after cancelling those
        still queued (`cancel_futures`). The workers keep running (they belong to the
        tree) and the client stays usable."""
        if cancel_futures:
            self._io.cancel_queued(self._tracker)
        if wait:
            self._tracker.wait_idle()

    def __enter__(self) -> PoolClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.shutdown(wait=True)


def _iterate(results: MapResults, n: int, end: float | None) -> Iterator[Any]:
    return chain.from_iterable(_units(results, n, end))  # items at C speed, units here


def _units(results: MapResults, n: int, end: float | None) -> Iterator[list[Any]]:
    try:
        for index in range(n):
            values, exc = results.get(index, end)
            yield values
            if exc is not None:
                raise exc
    finally:
        results.cancelled = True  # closed early: calls not yet sent are never sent


def _method_name(method: Any) -> str:
    if isinstance(method, str):
        return method
    name = getattr(method, "__name__", None)
    if callable(method) and isinstance(name, str):
        return name
    raise TypeError(f"expected a command name or a worker method, got {method!r}")


def _check_timeout(timeout: Any) -> float:
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) \
            or not math.isfinite(timeout) or timeout <= 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
    return float(timeout)
