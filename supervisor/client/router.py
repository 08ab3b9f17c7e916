"""Routing calls to workers, and applying the error matrix on the caller's side.

One `CallChannel` per worker path, opened on first use by asking the tree to hand the
worker one end of a socketpair. What is safe to retry, and how:

    the call never reached a worker    (child restarting, channel already closed)
        -> wait for the replacement's "started" event, within the call's timeout;
           a child with a `fallback` sibling is served by that sibling meanwhile
    the worker died with the call in flight
        -> WorkerCrashed, at most once; re-sent only when the method is idempotent,
           after the connection_error row's delays (the first re-send is immediate)
    no answer within the timeout
        -> CallTimeout; with on_timeout="restart" the worker is reported to its
           supervisor (its state is unknown) and restarted as a timeout_error;
           re-sent only when idempotent, after the timeout_error row's delays
    the child's circuit is open
        -> CircuitOpen at once, naming the next trial (or its fallback serves)
    the matrix gave up on the child (abandoned)
        -> ChildAbandoned at once, with the category that abandoned it (or its
           fallback serves)

``retry=False`` turns all of it off.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import msgspec

from ..errors import (
    ChildAbandoned,
    CircuitOpen,
    NotRunning,
    ProtocolError,
    WorkerCrashed,
    WorkerError,
)
from ..wire import messages as P
from ..wire.policy import DEFAULT_CALL_TIMEOUT, decode_policy
from .channel import CallChannel, NotSent, reply_value
from .link import RootLink
from .retry import Attempt, timed_out, with_retries

__all__ = ["Router", "check_target", "sibling"]


def sibling(path: str, child_id: str) -> str:
    parent, _, _ = path.rpartition("/")
    return f"{parent}/{child_id}" if parent else child_id


def check_target(path: Any, method: Any, session: Any = None) -> None:
    """A path, method or session of the wrong type would reach the root or the worker as a
    frame it cannot decode (and end that channel): the caller's bug, said here."""
    for name, value in (("path", path), ("method", method)):
        if not isinstance(value, str):
            raise TypeError(f"{name}: expected a str, got {value!r}")
    if session is not None and not isinstance(session, str):
        raise TypeError(f"session: expected a str or None, got {session!r}")


class Router:
    def __init__(self, link: RootLink) -> None:
        self.link = link
        self.channels: dict[str, CallChannel] = {}
        self.lock = threading.Lock()

    # ------------------------------------------------------------------ calls
    def call(self, path: str, method: str, args: tuple, kwargs: dict[str, Any], *,
             timeout: float | None, retry: bool, idempotent: bool,
             session: str | None) -> Any:
        check_target(path, method, session)
        return with_retries(
            lambda attempt: self._call_once(attempt, path, method, args, kwargs, timeout,
                                            retry, session),
            method=method, path=path, idempotent=idempotent, retry=retry, session=session,
            pause=self.link.exited.wait)

    def _call_once(self, attempt: Attempt, path: str, method: str, args: tuple,
                   kwargs: dict[str, Any], timeout: float | None, retry: bool,
                   session: str | None) -> Any:
        started = time.monotonic()
        deadline = started + (timeout if timeout is not None else DEFAULT_CALL_TIMEOUT)
        while True:
            chan = self.channels.get(path)  # a dict read needs no lock; `channel` takes it
            if chan is None or chan.closed is not None:
                chan = self.channel(path, deadline, retry)
            attempt.policy = chan.policy
            if timeout is None:
                limit = chan.policy.call_timeout
                deadline = None if limit is None else started + limit
            try:
                reply = chan.call(method, args, kwargs or None, session, deadline)
            except NotSent:
                self.drop(chan)
                if not retry:
                    raise WorkerCrashed(f"the channel to {path!r} is closed",
                                        path=path) from None
                continue
            except TimeoutError:
                raise timed_out(method, chan.path, deadline - started, chan.policy,
                                self.link.report_timeout,
                                lambda chan=chan: self.drop(chan)) from None
            except WorkerCrashed:
                self.drop(chan)
                raise
            if type(reply) is P.NotRun:
                # The worker was leaving (recycled, stopping) and did not run it: as safe to
                # send again as a call that never left.
                self.drop(chan)
                if not retry:
                    raise WorkerCrashed(reply.message, path=chan.path)
                continue
            return reply_value(reply, chan.path, method)

    def cast(self, path: str, method: str, args: tuple, kwargs: dict[str, Any]) -> None:
        check_target(path, method)
        deadline = time.monotonic() + DEFAULT_CALL_TIMEOUT
        while True:
            chan = self.channel(path, deadline, True)
            try:
                chan.send(lambda i: P.Cast(method=method, args=args, kwargs=kwargs or None),
                          expect_reply=False)
                return
            except NotSent:
                self.drop(chan)

    # ------------------------------------------------------------------ channels
    def drop(self, chan: CallChannel) -> None:
        """Stop using `chan`; calls still in flight on it (another thread's) keep it
        open until their replies are in (see `CallChannel.retire`)."""
        with self.lock:
            if self.channels.get(chan.path) is chan:
                del self.channels[chan.path]
        chan.retire()

    def close_all(self) -> None:
        with self.lock:
            channels = list(self.channels.values())
            self.channels.clear()
        for chan in channels:
            chan.close()

    def channel(self, path: str, deadline: float, retry: bool,
                via_fallback: bool = True) -> CallChannel:
        """An open channel to `path` (or, while it is down, to its fallback sibling)."""
        with self.lock:
            chan = self.channels.get(path)
        if chan is not None and chan.closed is None:
            return chan
        if chan is not None:
            self.drop(chan)
        while True:
            generation = self.link.generation_of(path)
            try:
                chan = self._open(path, deadline)
            except NotRunning as exc:
                if retry and via_fallback and exc.fallback:
                    return self.channel(sibling(path, exc.fallback), deadline, retry, False)
                if not retry or exc.state == "stopped":
                    raise WorkerCrashed(str(exc), path=path) from None
                self.link.await_start(path, generation, deadline)
                continue
            except (CircuitOpen, ChildAbandoned) as exc:
                if retry and via_fallback and exc.fallback:
                    return self.channel(sibling(path, exc.fallback), deadline, retry, False)
                raise
            with self.lock:
                current = self.channels.get(path)
                if current is not None and current.closed is None:
                    chan.close()  # another thread opened one first; share theirs
                    return current
                self.channels[path] = chan
            return chan

    def _open(self, path: str, deadline: float) -> CallChannel:
        import socket

        try:
            mine, theirs = socket.socketpair()
        except OSError as exc:  # EMFILE / ENFILE: out of file descriptors here
            raise WorkerError(f"cannot open a channel to {path!r}: {exc}",
                              category="resource_error", path=path) from exc
        try:
            answer = self.link.request(P.OpenChannel(id=0, path=path), fds=(theirs.fileno(),),
                                       timeout=max(0.0, deadline - time.monotonic()))
            policy = decode_policy(answer)
        except msgspec.ValidationError as exc:
            mine.close()
            raise ProtocolError(f"the call policy of {path!r} does not decode: {exc}",
                                path=path) from None
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return CallChannel(mine, path, policy)
