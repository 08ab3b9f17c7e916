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
                                     per-call `timeout`, `retry=False`, `idempotent=True`),
                                     run off the loop in the loop's default executor

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

from ..client.link import RootLink
from ..pool.client import PoolClient
from ..pool.results import PENDING_UNIT, MapResults

__all__ = ["AsyncPool"]


class AsyncPool:
    """``await pool.call(...)``, ``await pool.submit(...)``, ``async for x in pool.map(...)``
    (see the module doc)."""

    def __init__(self, link: RootLink, path: str, loop: asyncio.AbstractEventLoop,
                 client: PoolClient | None = None) -> None:
        self._client = client if client is not None else PoolClient(link, path)
        self._loop = loop
        self._inbox = _Inbox(loop)
        self.path = path

    def options(self, **options: Any) -> AsyncPool:
        """A view with other options (`on_lost`, `max_in_flight`, `pipeline`), as
        `PoolClient.options`."""
        return AsyncPool(self._client._link, self.path, self._loop,
                         self._client.options(**options))

    def workers(self) -> list[dict[str, Any]]:
        return self._client.workers()

    # ------------------------------------------------------------------ calls
    def submit(self, method: Any, /, *args: Any, **kwargs: Any) -> asyncio.Future:
        """Schedule ``method(*args, **kwargs)``; returns an asyncio future (await it).
        Cancelling it takes the call back while it is queued; once sent, the reply is
        dropped when it comes. No keyword is reserved."""
        fut = self._loop.create_future()
        self._client.submit_to(_LoopSink(fut, self._inbox), method, args, kwargs)
        return fut

    async def call(self, method: Any, *args: Any, timeout: float | None = None,
                   retry: bool = True, idempotent: bool = False, session: str | None = None,
                   **kwargs: Any) -> Any:
        """Run `method` on a worker of the pool and return its result; raises what the
        blocking `pool.call` raises.

        Without options it goes the way of `submit` (pipelined, queued while every worker
        is at its cap, re-sent after a crash when the worker marks it idempotent). With
        `session`, `timeout`, ``retry=False`` or ``idempotent=True`` it is the blocking
        `pool.call`, run in the loop's default executor.
        """
        if session is None and timeout is None and retry and not idempotent:
            return await self.submit(method, *args, **kwargs)
        return await self._blocking(self._client.call, method, *args, timeout=timeout,
                                    retry=retry, idempotent=idempotent, session=session,
                                    **kwargs)

    async def execute_in_session(self, session_id: str, method: Any,
                                 args: Iterable[Any] = (),
                                 kwargs: dict[str, Any] | None = None, *,
                                 timeout: float | None = None, retry: bool = True) -> Any:
        """``await call(method, *args, session=session_id, **kwargs)``."""
        return await self._blocking(self._client.execute_in_session, session_id, method,
                                    args, kwargs, timeout=timeout, retry=retry)

    async def end_session(self, session_id: str) -> bool:
        """As `PoolClient.end_session`."""
        return await self._blocking(self._client.end_session, session_id)

    async def _blocking(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        return await self._loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))

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
