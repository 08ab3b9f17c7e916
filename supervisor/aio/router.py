"""Routing calls to workers from an event loop: `client.router`'s rules, awaited.

The decisions are the blocking router's: a call that never reached a worker waits for the
replacement's start (or goes to the child's `fallback`), the retry loop is
`with_retries_async` (the same `next_try` as the blocking loop), a timeout is `timed_out`.
Only the waiting differs: control requests are the RootLink's futures, awaited; call
channels are `AsyncChannel`s on the loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Coroutine
from functools import partial
from typing import Any

import msgspec

from ..client.channel import NotSent, reply_value
from ..client.link import RootLink, answer_error, answer_timeout
from ..client.retry import Attempt, timed_out, with_retries_async
from ..client.router import check_target, sibling
from ..errors import (
    CallTimeout,
    CircuitOpen,
    NotRunning,
    ProtocolError,
    SupervisorError,
    WorkerCrashed,
    WorkerError,
)
from ..wire import messages as P
from ..wire.policy import DEFAULT_CALL_TIMEOUT, decode_policy
from .channel import CALLS_IN_FLIGHT, AsyncChannel

__all__ = ["AsyncRouter", "request"]


async def request(link: RootLink, msg: Any, *, fds: tuple[int, ...] = (),
                  timeout: float | None = 30.0) -> Any:
    """`RootLink.request`, awaited: the answer's value, or the same errors."""
    rid, fut = link.submit(msg, fds=fds)
    try:
        return await asyncio.wait_for(asyncio.wrap_future(fut), timeout)
    except TimeoutError:
        raise answer_timeout(timeout) from None
    except NotRunning as exc:
        raise answer_error(msg, exc) from None
    finally:
        link.forget(rid)  # answered, timed out or cancelled: nothing waits for it now


class AsyncRouter:
    def __init__(self, link: RootLink, loop: asyncio.AbstractEventLoop,
                 gone: asyncio.Future, limit: int = CALLS_IN_FLIGHT) -> None:
        self.link = link
        self.loop = loop
        self.gone = gone  # set (on the loop) once the tree is gone
        self.limit = limit
        self.channels: dict[str, AsyncChannel] = {}
        self.leaving: set[AsyncChannel] = set()  # let go while their workers drain
        self.opening: dict[str, asyncio.Future] = {}  # path -> set when its open ends

    # ------------------------------------------------------------------ calls
    def call(self, path: str, method: str, args: tuple, kwargs: dict[str, Any], *,
             timeout: float | None, retry: bool, idempotent: bool,
             session: str | None) -> Coroutine[Any, Any, Any]:
        """The call, to await (a coroutine: one frame less per call than an async def
        awaiting it; the App awaits it at once)."""
        check_target(path, method, session)
        return with_retries_async(
            partial(self._call_once, path, method, args, kwargs or None, timeout, retry,
                    session),
            method=method, path=path, idempotent=idempotent, retry=retry, session=session,
            pause=self.pause)

    async def pause(self, seconds: float) -> bool:
        """Wait `seconds`; True when the tree went away meanwhile."""
        if self.gone.done():
            return True
        try:
            await asyncio.wait_for(asyncio.shield(self.gone), seconds)
        except TimeoutError:
            return False
        return True

    async def _call_once(self, path: str, method: str, args: tuple,
                         kwargs: dict[str, Any] | None, timeout: float | None, retry: bool,
                         session: str | None, attempt: Attempt) -> Any:
        """One try: one frame out, its reply back. A caller that gives up (cancelled, or
        an `asyncio.timeout` around it) leaves no trace: its frame is taken back if it has
        not started to leave, else its reply is dropped when it comes; the worker is not
        told. Past the call's own deadline (the wait for room on the channel counts),
        `timed_out` applies the child's rule."""
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else DEFAULT_CALL_TIMEOUT)
        while True:
            chan = self.channels.get(path)
            if chan is None or not chan.usable:
                chan = await self.channel(path, deadline, retry)
            attempt.policy = chan.policy
            if timeout is None:
                limit = chan.policy.call_timeout
                deadline = None if limit is None else started + limit
            cid, frame = chan.encode_call(method, args, kwargs, session)
            try:
                if not chan.take_room():
                    await chan.wait_for_room(deadline)
                fut = chan.send(cid, frame)
            except TimeoutError:
                raise timed_out(method, chan.path, deadline - started, chan.policy,
                                self.report_timeout,
                                lambda chan=chan: self.drop(chan)) from None
            except NotSent:
                self.let_go(chan)
                if not retry:
                    raise WorkerCrashed(f"the channel to {path!r} is closed",
                                        path=path) from None
                continue
            if deadline is not None:
                chan.watch_deadline(cid, deadline)
            try:
                reply = await fut
            except TimeoutError:
                chan.give_up(cid)
                raise timed_out(method, chan.path, deadline - started, chan.policy,
                                self.report_timeout,
                                lambda chan=chan: self.drop(chan)) from None
            except asyncio.CancelledError:
                chan.give_up(cid)
                raise
            except NotSent:  # still in the outbox when the channel ended: never left
                self.let_go(chan)
                if not retry:
                    raise WorkerCrashed(f"the channel to {path!r} is closed",
                                        path=path) from None
                continue
            except WorkerCrashed:
                self.drop(chan)
                raise
            if type(reply) is P.NotRun:
                # The worker was leaving and did not run it: as safe to send again as a
                # call that never left.
                self.let_go(chan)
                if not retry:
                    raise WorkerCrashed(reply.message, path=chan.path)
                continue
            return reply_value(reply, chan.path, method)

    async def cast(self, path: str, method: str, args: tuple,
                   kwargs: dict[str, Any]) -> None:
        check_target(path, method)
        deadline = time.monotonic() + DEFAULT_CALL_TIMEOUT
        while True:
            chan = await self.channel(path, deadline, True)
            try:
                await chan.cast(lambda _: P.Cast(method=method, args=args,
                                                 kwargs=kwargs or None))
                return
            except NotSent:
                self.let_go(chan)

    def report_timeout(self, path: str) -> None:
        """Tell the supervisor of `path` that a call to it timed out (see `timed_out`),
        without waiting: the request leaves before any later OpenChannel, so the next
        call finds the worker being replaced."""
        parent, _, child_id = path.rpartition("/")
        try:
            rid, _ = self.link.submit(P.ReportFailure(id=0, path=parent, child_id=child_id,
                                                      category="timeout_error",
                                                      reason="timeout"))
        except SupervisorError:
            return  # already gone: its supervisor handles that on its own
        self.link.forget(rid)  # its answer (or refusal) changes nothing here

    # ------------------------------------------------------------------ channels
    def let_go(self, chan: AsyncChannel) -> None:
        """Stop using `chan` for new calls. A channel whose worker is leaving stays open
        for the calls still in flight on it (their replies, or NotRun, are on the way;
        the worker's exit closes it); a dead one is dropped."""
        if chan.closed is None and chan.draining is not None:
            if self.channels.get(chan.path) is chan:
                del self.channels[chan.path]
                self.leaving = {c for c in self.leaving if c.closed is None}
                self.leaving.add(chan)  # closed with the others if the tree ends first
            return
        self.drop(chan)

    def drop(self, chan: AsyncChannel) -> None:
        if self.channels.get(chan.path) is chan:
            del self.channels[chan.path]
        chan.close()

    def close_all(self) -> None:
        channels, self.channels = [*self.channels.values(), *self.leaving], {}
        self.leaving = set()
        for chan in channels:
            chan.close()

    async def channel(self, path: str, deadline: float, retry: bool,
                      via_fallback: bool = True) -> AsyncChannel:
        """An open channel to `path` (or, while it is down, to its fallback sibling).
        Concurrent callers share one open: the others wait for it to end, then look."""
        if self.gone.done():
            raise WorkerCrashed("the tree is not running", path=path)
        while True:
            chan = self.channels.get(path)
            if chan is not None and chan.usable:
                return chan
            if chan is not None:
                self.let_go(chan)
            opening = self.opening.get(path)
            if opening is None:
                break
            await asyncio.shield(opening)  # a cancelled waiter leaves the open alone
        done = self.opening[path] = self.loop.create_future()
        try:
            return await self._open_or_wait(path, deadline, retry, via_fallback)
        finally:
            del self.opening[path]
            done.set_result(None)

    async def _open_or_wait(self, path: str, deadline: float, retry: bool,
                            via_fallback: bool) -> AsyncChannel:
        while True:
            generation = self.link.generation_of(path)
            try:
                chan = await self._open(path, deadline)
            except NotRunning as exc:
                if retry and via_fallback and exc.fallback:
                    return await self.channel(sibling(path, exc.fallback), deadline, retry,
                                              False)
                if not retry or exc.state == "stopped":
                    raise WorkerCrashed(str(exc), path=path) from None
                await self._await_start(path, generation, deadline)
                continue
            except CircuitOpen as exc:
                if retry and via_fallback and exc.fallback:
                    return await self.channel(sibling(path, exc.fallback), deadline, retry,
                                              False)
                raise
            if self.gone.done():  # the tree ended while we waited: no channel outlives it
                chan.close()
                raise WorkerCrashed("the tree is not running", path=path)
            self.channels[path] = chan
            return chan

    async def _await_start(self, path: str, generation: int, deadline: float) -> None:
        fut = self.link.watch_start(path, generation)
        try:
            await asyncio.wait_for(asyncio.wrap_future(fut),
                                   max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            raise CallTimeout(f"{path!r} was not running and did not come back within the "
                              "call's timeout", path=path) from None
        except WorkerCrashed:
            raise WorkerCrashed("the tree is not running", path=path) from None
        finally:
            self.link.unwatch_start(path, fut)

    async def _open(self, path: str, deadline: float) -> AsyncChannel:
        try:
            mine, theirs = socket.socketpair()
        except OSError as exc:  # EMFILE / ENFILE: out of file descriptors here
            raise WorkerError(f"cannot open a channel to {path!r}: {exc}",
                              category="resource_error", path=path) from exc
        try:
            try:
                answer = await request(self.link, P.OpenChannel(id=0, path=path),
                                       fds=(theirs.fileno(),),
                                       timeout=max(0.0, deadline - time.monotonic()))
            finally:
                theirs.close()  # sent (duplicated into the message) or not needed
            policy = decode_policy(answer)
        except msgspec.ValidationError as exc:
            mine.close()
            raise ProtocolError(f"the call policy of {path!r} does not decode: {exc}",
                                path=path) from None
        except BaseException:
            mine.close()
            raise
        return AsyncChannel(mine, path, policy, self.loop, self.limit)
