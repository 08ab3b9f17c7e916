"""A pool's asyncio client: `app.pool(path)` on an asyncio App.

It is a view of the pool's one `PoolClient` (`pool.client`): every decision (which worker,
batching, what is re-sent after a crash, sessions, overflow) is that client's `PoolState`,
shared with blocking callers of the same pool. What differs is how a caller waits:

    await pool.submit(m, ...)        an asyncio future the pool settles through an inbox
    await pool.call(m, ...)          (one wake-up of the loop per batch of replies);
                                     pipelined; cancelling it while queued takes it back,
                                     in flight drops its reply
    async for r in pool.map(...)     a map table that wakes the loop when the unit it
                                     waits for is in
    await pool.call(m, session=...)  the blocking client's checkout path (sessions, a
                                     per-call `timeout`, `retry=False`, `idempotent=True`):
                                     the same PoolState calls, the waits on the loop (the
                                     pool's watcher reads the link and wakes the caller)

The pool's replies are read by its watcher thread; the outcomes it settles reach the loop
in batches, one ``call_soon_threadsafe`` per batch.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import AsyncIterator, Iterable
from typing import Any

from ..client.channel import reply_value
from ..client.link import RootLink
from ..client.retry import Attempt, timed_out, with_retries_async
from ..errors import CallTimeout, SessionLost, SupervisorError, WorkerCrashed
from ..pool.client import PoolClient, _method_name
from ..pool.link import NOT_SENT
from ..pool.results import PENDING_UNIT, MapResults
from ..pool.state import Waiter
from ..wire import messages as P

__all__ = ["AsyncPool"]


class AsyncPool:
    """``await pool.call(...)``, ``await pool.submit(...)``, ``async for x in pool.map(...)``
    (see the module doc)."""

    def __init__(self, link: RootLink, path: str, loop: asyncio.AbstractEventLoop,
                 pause: Any, client: PoolClient | None = None) -> None:
        self._client = client if client is not None else PoolClient(link, path)
        self._loop = loop
        self._pause = pause  # waits between retries; True once the tree is gone
        self._inbox = _Inbox(loop)
        self.path = path

    def options(self, **options: Any) -> AsyncPool:
        """A view with other options (`on_lost`, `max_in_flight`, `pipeline`), as
        `PoolClient.options`."""
        return AsyncPool(self._client._link, self.path, self._loop, self._pause,
                         self._client.options(**options))

    def workers(self) -> list[dict[str, Any]]:
        return self._client.workers()

    # ------------------------------------------------------------------ calls
    def submit(self, method: Any, /, *args: Any, timeout: float | None = None,
               **kwargs: Any) -> asyncio.Future:
        """Schedule ``method(*args, **kwargs)``; returns an asyncio future (await it).
        Cancelling it takes the call back while it is queued; once sent, the reply is
        dropped when it comes. `timeout` is the call's own limit once sent, as for the
        blocking `submit` (it runs alone on its worker)."""
        fut = self._loop.create_future()
        self._client.submit_to(_LoopSink(fut, self._inbox), method, args, kwargs, timeout)
        return fut

    async def call(self, method: Any, *args: Any, timeout: float | None = None,
                   retry: bool = True, idempotent: bool = False, session: str | None = None,
                   **kwargs: Any) -> Any:
        """Run `method` on a worker of the pool and return its result; raises what the
        blocking `pool.call` raises.

        Without options it goes the way of `submit` (pipelined, queued while every worker
        is at its cap, re-sent after a crash when the worker marks it idempotent). With
        `session`, `timeout`, ``retry=False`` or ``idempotent=True`` it is the blocking
        `pool.call`'s checkout (at most `max_in_flight` calls per worker, FIFO,
        PoolExhausted past `checkout_timeout`, sessions), awaited on the loop.
        """
        if session is None and timeout is None and retry and not idempotent:
            return await self.submit(method, *args, **kwargs)
        return await self._checked_out(_method_name(method), args, kwargs or None, session,
                                       timeout, retry, idempotent, self._client._on_lost)

    async def execute_in_session(self, session_id: str, method: Any,
                                 args: Iterable[Any] = (),
                                 kwargs: dict[str, Any] | None = None, *,
                                 timeout: float | None = None, retry: bool = True) -> Any:
        """``await call(method, *args, session=session_id, **kwargs)``."""
        if not isinstance(session_id, str):
            raise TypeError(f"session_id must be a str, got {type(session_id).__name__}")
        return await self._checked_out(_method_name(method), tuple(args), kwargs or None,
                                       session_id, timeout, retry, False,
                                       self._client._on_lost)

    async def end_session(self, session_id: str) -> bool:
        """As `PoolClient.end_session`: drop the session's state in its worker and
        forget its affinity; True when the worker held state for it."""
        with self._client.ending_session(session_id) as live:
            if not live:
                return False
            try:
                return bool(await self._checked_out(P.END_SESSION, (), None, session_id,
                                                    None, True, False, "fail"))
            except (SessionLost, WorkerCrashed):  # its worker is gone: so is the state
                return False

    async def _blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

    def _checked_out(self, name: str, args: tuple, kwargs: dict[str, Any] | None,
                     session: str | None, timeout: float | None, retry: bool,
                     idempotent: bool, on_lost: str) -> Any:
        return with_retries_async(
            functools.partial(self._checkout_once, name, args, kwargs, session, timeout,
                              retry, on_lost),
            method=name, path=self.path, idempotent=idempotent, retry=retry,
            session=session, pause=self._pause)

    async def _checkout_once(self, name: str, args: tuple, kwargs: dict[str, Any] | None,
                             session: str | None, timeout: float | None, retry: bool,
                             on_lost: str, attempt: Attempt) -> Any:
        """`PoolClient._call_once` awaited: the same PoolState decisions, with the waits
        on the loop (`_Wake`) and the link read by the pool's watcher."""
        client = self._client
        client._members.start()
        io, state = client._io, client._state
        cid = next(state.ids)
        frame = P.CALL_CODEC.encode(P.Call(id=cid, method=name, args=args, kwargs=kwargs,
                                           session=session))  # EncodeError: before checkout
        deadline = time.monotonic() + state.checkout_timeout
        wake = _Wake(self._loop)
        while True:
            slot, sent, written = await self._checkout(session, on_lost, deadline, cid,
                                                       frame, wake)
            try:
                reply = await self._on_slot(attempt, slot, name, cid, frame, session,
                                            timeout, on_lost, sent, written, wake)
            finally:
                io.checkin(slot)
            if reply is not None:
                return reply_value(reply, slot.path, name)
            if not retry:
                raise WorkerCrashed(f"worker {slot.path!r} was not running or was leaving; "
                                    "the call did not run (retry=False)", path=slot.path)

    async def _checkout(self, session: str | None, on_lost: str, deadline: float, cid: int,
                        frame: bytes, wake: _Wake) -> tuple[Any, Any, bool]:
        client = self._client
        io, state = client._io, client._state
        got = io.checkout_nowait(session, client._max_in_flight, on_lost, cid, frame, wake)
        if type(got) is not Waiter:
            return got
        waiter = got
        try:
            while True:
                with state.lock:  # as `PoolIO._await_slot`, the waiting on the loop
                    if waiter.slot is not None:
                        break
                    if waiter.error is not None:
                        raise waiter.error
                    if state.gone:
                        raise WorkerCrashed("the tree is not running", path=state.path)
                    if deadline - time.monotonic() <= 0:
                        raise state.exhausted(waiter.session)
                await wake.wait(deadline)
        except BaseException:
            with state.lock:
                state.waiter_gives_up(waiter)
                handed = waiter.slot is not None  # served just as we gave up
            if handed:
                self._abandon(waiter.slot, waiter.sent, waiter.cid)
            raise
        with state.lock:
            state.waiter_gives_up(waiter)
        return waiter.slot, waiter.sent, waiter.sent is not None

    def _abandon(self, slot: Any, sent: Any, cid: int) -> None:
        """A caller that gave up holding `slot`: its entry (if registered) is dropped, so
        a reply is discarded when it comes, and the slot is checked in."""
        io, state = self._client._io, self._client._state
        if sent is not None:
            link, _ = sent
            with state.lock:
                link.waiting.pop(cid, None)
        io.checkin(slot)

    async def _on_slot(self, attempt: Attempt, slot: Any, name: str, cid: int,
                       frame: bytes, session: str | None, timeout: float | None,
                       on_lost: str, sent: Any, written: bool, wake: _Wake) -> Any:
        """`PoolClient._on_slot` awaited: the reply, or None when the call did not run."""
        io = self._client._io
        if sent is not None:
            link, entry = sent  # registered with the checkout (and written, if queued)
            attempt.policy = link.policy
            if not written and not io.send_sync(link, frame, cid, reader=False):
                return None
        else:
            link = slot.link
            if link is None or link.closed is not None or link.draining is not None:
                # Opening a link asks the tree (a control round trip, once per worker
                # process): off the loop, as it blocks.
                link = await self._loop.run_in_executor(None, io.link_of, slot)
            if link is None:
                return None
            attempt.policy = link.policy
            entry = io.register(link, session, on_lost, cid, wake)
            if entry is None or not io.send_sync(link, frame, cid, reader=False):
                return None
        limit = timeout if timeout is not None else link.call_timeout
        deadline = None if limit is None else time.monotonic() + limit
        try:
            reply = await self._await_reply(link, entry, cid, deadline, wake)
        except TimeoutError:
            raise self._timed_out(link, name, limit) from None
        if reply is NOT_SENT or type(reply) is P.NotRun:
            return None
        return reply

    async def _await_reply(self, link: Any, entry: Any, cid: int, deadline: float | None,
                           wake: _Wake) -> Any:
        state = self._client._state
        try:
            while True:
                with state.lock:
                    if entry.reply is not None:
                        return entry.reply
                    if link.closed is not None and not entry.unsent:
                        link.waiting.pop(cid, None)
                        raise WorkerCrashed(
                            f"worker {link.slot.path!r} (pid {link.pid}) died while the "
                            f"call was in flight ({link.closed})", path=link.slot.path)
                    if deadline is not None and deadline - time.monotonic() <= 0:
                        link.waiting.pop(cid, None)
                        raise TimeoutError
                await wake.wait(deadline)
        except asyncio.CancelledError:
            with state.lock:
                link.waiting.pop(cid, None)  # its reply is dropped when it comes
            raise

    def _timed_out(self, link: Any, method: str, limit: float) -> CallTimeout:
        io, state = self._client._io, self._client._state

        def let_go() -> None:
            io.decide(lambda fx: state.timed_out(link, fx))

        return timed_out(method, link.slot.path, limit, link.policy, self._report_timeout,
                         let_go)

    def _report_timeout(self, path: str) -> None:
        link = self._client._link
        parent, _, child_id = path.rpartition("/")
        try:
            rid, _ = link.submit(P.ReportFailure(id=0, path=parent, child_id=child_id,
                                                 category="timeout_error", reason="timeout"))
        except SupervisorError:
            return  # already gone: its supervisor handles that on its own
        link.forget(rid)

    def map(self, method: Any, *iterables: Iterable[Any], timeout: float | None = None,
            chunksize: int = 1) -> AsyncIterator[Any]:
        """``async for result in pool.map(method, items)``: results in order, as
        `PoolClient.map` (the calls are scheduled at once; TimeoutError when a result is
        not in `timeout` s after this call; an item's error is raised when reached).
        Closing the iterator early (break) drops the calls not sent yet."""
        end = None if timeout is None else time.monotonic() + timeout
        table = self._client.schedule_map(method, iterables, chunksize,
                                          functools.partial(_LoopMapResults, self._loop))
        return _iterate(table, end)

    async def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """As `PoolClient.shutdown`, awaited (the wait runs off the loop)."""
        if cancel_futures:
            self._client.shutdown(wait=False, cancel_futures=True)
        if wait:
            await self._blocking(self._client.shutdown, wait=True)


class _Wake:
    """Wakes one caller on the loop from the pool's threads (its Waiter's or SyncCall's
    `wake`): callable from any thread, awaited on the loop; a wake before the wait is
    kept, so none is lost."""

    __slots__ = ("loop", "fut", "fired")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fut: asyncio.Future | None = None
        self.fired = False

    def __call__(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._fire)
        except RuntimeError:  # the loop is closed: nobody waits any more
            pass

    def _fire(self) -> None:
        self.fired = True
        if self.fut is not None and not self.fut.done():
            self.fut.set_result(None)

    async def wait(self, deadline: float | None) -> None:
        """Until the next wake (or one that came since the last wait), or `deadline`
        (a `time.monotonic()` value; returns then, the caller looks again)."""
        if not self.fired:
            self.fut = fut = self.loop.create_future()
            timer = None if deadline is None else self.loop.call_later(
                max(0.0, deadline - time.monotonic()), _resolve, fut)
            try:
                await fut
            finally:
                self.fut = None
                if timer is not None:
                    timer.cancel()
        self.fired = False


def _resolve(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_result(None)


class _Inbox:
    """Outcomes settled on the pool's threads, handed to the loop in batches: one
    ``call_soon_threadsafe`` (one wake-up of the loop) per batch, not one per call."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[tuple[asyncio.Future, Any, BaseException | None]] = deque()
        self.scheduled = False

    def put(self, fut: asyncio.Future, value: Any, exc: BaseException | None) -> None:
        self.items.append((fut, value, exc))  # deque appends are atomic
        if not self.scheduled:
            # A drain that already began clears the flag first, so an item appended
            # after its last look schedules the next one: none is left behind.
            self.scheduled = True
            try:
                self.loop.call_soon_threadsafe(self.drain)
            except RuntimeError:  # the loop is closed: nobody awaits these any more
                pass

    def drain(self) -> None:
        self.scheduled = False
        items = self.items
        while items:
            fut, value, exc = items.popleft()
            if fut.done():
                continue  # cancelled by its caller meanwhile: the outcome is dropped
            if exc is _CANCEL:
                fut.cancel()
            elif exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(value)


_CANCEL = asyncio.CancelledError()  # a marker: the pool cancelled the call (shutdown)


class _LoopSink:
    """A pool call's sink (see `PoolClient.submit_to`) for an asyncio future. The pool
    calls it on its threads; the future is only touched on its loop, through the inbox.
    Reading whether the future was cancelled from another thread is a plain attribute
    read: a cancel that races it only means the reply is dropped when it comes."""

    __slots__ = ("fut", "inbox")

    def __init__(self, fut: asyncio.Future, inbox: _Inbox) -> None:
        self.fut = fut
        self.inbox = inbox

    def set_running_or_notify_cancel(self) -> bool:
        return not self.fut.cancelled()  # cancelled while queued: never sent

    def set_result(self, value: Any) -> None:
        self.inbox.put(self.fut, value, None)

    def set_exception(self, exc: BaseException) -> None:
        self.inbox.put(self.fut, None, exc)

    def cancel(self) -> bool:
        self.inbox.put(self.fut, None, _CANCEL)
        return True


class _LoopMapResults(MapResults):
    """A map table whose reader is a task: the unit it waits for wakes it on its loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, n: int) -> None:
        super().__init__(n)
        self.loop = loop
        self.waiter: asyncio.Future | None = None  # the reader's, set and read on the loop

    def settle_many(self, units: list[tuple[int, list[Any], BaseException | None]]) -> None:
        super().settle_many(units)  # on the pool's watcher thread (or a submitting one)
        want = self.want
        if want >= 0 and self.values[want] is not PENDING_UNIT:
            try:
                self.loop.call_soon_threadsafe(self._wake)
            except RuntimeError:  # the loop is closed: nobody reads the table any more
                pass

    def _wake(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def aget(self, index: int, deadline: float | None
                   ) -> tuple[list[Any], BaseException | None]:
        while self.values[index] is PENDING_UNIT:
            with self.cond:  # `want` under the lock the settling thread reads it with
                self.want = index
                if self.values[index] is not PENDING_UNIT:
                    break
                self.waiter = self.loop.create_future()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError
            try:
                await asyncio.wait_for(self.waiter, remaining)
            finally:
                self.waiter = None
        values = self.values[index]
        self.values[index] = None  # free it as we go
        return values, self.errors.pop(index, None)


async def _iterate(table: _LoopMapResults, end: float | None) -> AsyncIterator[Any]:
    try:
        for index in range(len(table.values)):
            values, exc = await table.aget(index, end)
            for value in values:
                yield value
            if exc is not None:
                raise exc
    finally:
        table.cancelled = True  # closed early: calls not yet sent are never sent
