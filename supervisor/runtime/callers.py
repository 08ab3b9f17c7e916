"""Serving callers: the worker side of the call channels.

Each caller has its own channel and its own outbound buffer. Reads and writes are
non-blocking from one poll loop; replies to a batch of calls go out in one write; a caller
that stops reading its replies stops being read (backpressure) instead of growing our
memory or holding up the others. Leaving without losing a call: a `Closing` notice on every
channel, then calls that still arrive are answered `NotRun` until each caller has closed
its side (see `close`).

`Callers` belongs to a worker's `WorkerRuntime` and is handed what it needs: the worker,
its commands, its serializer, and `leaving()`, which says (with the exit reason) when the
worker must stop taking calls. The control thread hands it new channels with `accept`;
everything else runs on the serving loop's thread.
"""

from __future__ import annotations

import collections
import pickle
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from itertools import starmap
from time import perf_counter
from typing import Any

from ..errors import EncodeError, ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader
from ..wire.wakeup import Wakeup
from .meter import CallMeter
from .poller import READ, WRITE, Poller

__all__ = ["Callers", "describe"]

END_SESSION, BATCH = P.END_SESSION, P.BATCH
_encode, _Reply, _Call = P.CALL_CODEC.encode, P.Reply, P.Call  # the call path's, looked up once


def describe(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc))


# What encoding a result can raise: msgspec's error, or pickle's for a worker that chose
# serializer="pickle" (unpicklable objects raise any of the other three).
_ENCODE_ERRORS = (EncodeError, pickle.PicklingError, TypeError, AttributeError)

_HIGH_WATER = 4 * 1024 * 1024  # replies owed to one caller before we stop reading it
_LOW_WATER = 1024 * 1024  # ... and resume once it has taken this much back


class _Caller:
    """One caller's channel: its frame reader and the replies it is owed."""

    __slots__ = ("sock", "fd", "reader", "out", "paused", "eof", "closed", "events")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fd = sock.fileno()
        self.reader = FrameReader(P.CALL_CODEC)
        self.out = bytearray()
        self.paused = False  # not read until it takes its replies (backpressure)
        self.eof = False  # it closed its sending side; flush what it is owed, then drop
        self.closed = False
        self.events = 0  # the selector events it is registered for (0: not registered)


class Callers:
    """The call channels of one worker process (see the module doc).

    `leaving()` returns the worker's exit reason once it must stop taking calls (a stop
    request, `self.stop()`, max_calls), else None. `calls` counts the calls run (for
    max_calls); `failed` is set, with the error, when a caller sent a frame that does not
    decode (the worker then leaves with reason protocol_error).
    """

    def __init__(self, worker: Any, commands: Mapping[str, Any], pickled: bool,
                 leaving: Callable[[], str | None], meter: CallMeter) -> None:
        self.worker = worker
        self.meter = meter  # call counts and latencies, read by the control thread
        self.commands = commands
        self.pickled = pickled
        self.leaving = leaving
        self.calls = 0
        self.failed: tuple[str, str, str] | None = None
        self.sessions: dict[str, dict[str, Any]] = {}
        self.no_session: dict[str, Any] = {}
        self.buffer = bytearray(65536)  # every read lands here: no allocation per call
        self.incoming: collections.deque[socket.socket] = collections.deque()
        self.closed = False  # set (under `accept_lock`) once no new channel is accepted
        self.accept_lock = threading.Lock()
        self.wake = Wakeup()  # new channels and stop requests, from the control thread
        self.poller = Poller()
        self.poller.register(self.wake.fileno(), READ, None)

    # the control thread ----------------------------------------------------------------
    def accept(self, sock: socket.socket) -> bool:
        """A new caller's channel; False (and the socket is closed) once the worker stopped
        accepting: no channel may be taken that the serving loop will never read."""
        with self.accept_lock:
            if not self.closed:
                self.incoming.append(sock)
                self.wake.set()
                return True
        sock.close()
        return False

    # the serving loop ------------------------------------------------------------------
    def serve(self) -> None:
        """Serve until `leaving()` says so.

        `leaving()` is asked after each event handled: only handling one (a command that
        calls `self.stop()`, max_calls reached, a Stop read from the control channel, a
        frame that does not decode) makes it change, so every event starts with the
        worker still serving."""
        poll, leaving = self.poller.poll, self.leaving
        if leaving() is not None:
            return
        while True:
            for fd, caller, mask in poll():
                if caller is None:
                    self._on_wake()
                elif mask == READ and caller.events == READ and not caller.closed:
                    self._on_read(caller)  # the hot path: a call arrived, nothing owed
                elif self.poller.registered(fd, caller):  # not dropped earlier in the batch
                    self._on_ready(caller, mask)
                if leaving() is not None:
                    return

    def _register(self, caller: _Caller) -> None:
        events = 0 if caller.eof or caller.paused else READ
        if caller.out:
            events |= WRITE
        if events == caller.events:
            return  # unchanged: no epoll_ctl on the hot path
        if events == 0:
            return self._drop(caller)
        if caller.events:
            self.poller.modify(caller.fd, events, caller)
        else:
            self.poller.register(caller.fd, events, caller)
        caller.events = events

    def _drop(self, caller: _Caller) -> None:
        caller.closed = True
        caller.events = 0
        self.poller.unregister(caller.fd)
        caller.sock.close()

    def _on_wake(self) -> None:
        self.wake.drain()
        while self.incoming:
            sock = self.incoming.popleft()
            sock.setblocking(False)
            self._register(_Caller(sock))

    def _on_ready(self, caller: _Caller, mask: int) -> None:
        if mask & WRITE and not caller.closed:
            self._flush(caller)
        if mask & READ and not caller.closed:
            self._on_read(caller)

    def _on_read(self, caller: _Caller) -> None:
        try:
            n = caller.sock.recv_into(self.buffer)
        except BlockingIOError:
            return
        except OSError:  # reset: the caller is gone
            n = 0
        if not n:
            caller.eof = True  # it may still want the replies it is owed: flush, then drop
            self._register(caller)
            return
        try:
            msgs = caller.reader.feed(memoryview(self.buffer)[:n])
        except ProtocolError as exc:
            self._drop(caller)
            self.failed = ("ProtocolError", str(exc), "")
            return
        if len(msgs) == 1 and not caller.out and self.leaving() is None:
            # The common case, one call and nothing owed: answer it straight away. (Asked
            # again here: `close` reads through this method too, while leaving.)
            frame = self._handle(msgs[0])
            if frame is not None:
                self._send_now(caller, frame)
            return
        leaving, handle, out = self.leaving, self._handle, caller.out
        for msg in msgs:
            # Received while leaving: never run; the caller may safely send it again.
            frame = handle(msg) if (reason := leaving()) is None else self._not_run(msg, reason)
            if frame is not None:
                out += frame
        # Backpressure: a caller that does not read its replies stops being read, so it
        # can neither grow our memory without bound nor hold up the other callers.
        caller.paused = len(caller.out) > _HIGH_WATER
        self._flush(caller)

    def _send_now(self, caller: _Caller, frame: bytes) -> None:
        try:
            sent = caller.sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:  # the caller left
            self._drop(caller)
            return
        if sent < len(frame):
            caller.out += memoryview(frame)[sent:]
            self._register(caller)

    def _flush(self, caller: _Caller) -> None:
        if caller.out:
            try:
                sent = caller.sock.send(caller.out)
                del caller.out[:sent]
            except BlockingIOError:
                pass
            except OSError:  # the caller left; what it was owed has nobody to read it
                self._drop(caller)
                return
        if caller.paused and len(caller.out) < _LOW_WATER:
            caller.paused = False
        self._register(caller)

    def _handle(self, msg: Any) -> bytes | None:
        kind = type(msg)
        if kind is _Call:
            if msg.method == END_SESSION:
                existed = self.sessions.pop(msg.session, None) is not None
                return P.CALL_CODEC.encode(P.Reply(id=msg.id, value=existed))
            started = perf_counter()
            if msg.method == BATCH:
                calls_before = self.calls
                frame = self._run_batch(msg.id, msg.args)
                self.meter.observe(perf_counter() - started, self.calls - calls_before)
                return frame
            self.calls += 1
            if msg.session is not None or self.worker.session is not self.no_session:
                self._enter_session(msg.session)
            frame = self._run_command(msg.id, msg.method, msg.args, msg.kwargs, msg.pickled)
            self.meter.observe(perf_counter() - started)  # the command and its reply's encoding
            return frame
        if kind is P.Cast:
            started = perf_counter()
            self.calls += 1
            self._enter_session(msg.session)
            self._run_command(None, msg.method, msg.args, msg.kwargs, msg.pickled)
            self.meter.observe(perf_counter() - started)
        return None  # replies and other kinds have no business on a worker's channel

    def _enter_session(self, session: str | None) -> None:
        # `self.session` is the state of the call's session (a dict per session id that
        # lives as long as this process); calls without a session share one scratch dict.
        if session is None:
            self.worker.session = self.no_session
        else:
            self.worker.session = self.sessions.setdefault(session, {})

    def _run_command(self, cid: int | None, method: str, args: Any, kwargs: Any,
                     pickled: bool) -> bytes | None:
        fn = self.commands.get(method)
        if fn is None:
            return self._unknown(cid, method)
        try:
            if pickled:
                args, kwargs = pickle.loads(args)
            value = fn(*args, **kwargs) if kwargs else fn(*args)
        except Exception as exc:  # the command's own error goes back to its caller
            return self._fail(cid, "python_error", *describe(exc))
        if cid is None:
            return None
        try:
            return self._reply(cid, value)
        except _ENCODE_ERRORS as exc:
            return self._fail(cid, "communication_error", "EncodeError",
                              f"cannot encode the result of {method!r}: {exc}", "")

    def _reply(self, cid: int, value: Any) -> bytes:
        """The Reply frame for `value`; raises one of _ENCODE_ERRORS if it cannot be sent."""
        if self.pickled:
            return _encode(_Reply(id=cid, value=pickle.dumps(value), pickled=True))
        return _encode(_Reply(id=cid, value=value))

    def _run_batch(self, cid: int, args: Any) -> bytes | None:
        if not (len(args) == 3 and isinstance(args[0], str) and isinstance(args[1], list)):
            return self._fail(cid, "communication_error", "ProtocolError",
                              f"{BATCH} takes (method, [item, ...], star), got {args!r:.200}",
                              "")
        method, items, star = args
        fn = self.commands.get(method)
        if fn is None:
            return self._unknown(cid, method)
        self.worker.session = self.no_session
        results: list[Any] = []
        failure = None
        try:  # extend keeps the results of the items before a failing one
            results.extend(starmap(fn, items) if star else map(fn, items))
        except Exception as exc:  # the item's error ends the chunk, as in a peer's
            failure = ["python_error", *describe(exc)]
        self.calls += len(results) + (failure is not None)
        try:
            return self._reply(cid, [results, failure])
        except _ENCODE_ERRORS:
            pass
        # Some result cannot be encoded: the results before it go back, it fails.
        encode = pickle.dumps if self.pickled else P.CALL_CODEC.encode
        for index, value in enumerate(results):
            try:
                encode(value)
            except _ENCODE_ERRORS as exc:
                results, failure = results[:index], [
                    "communication_error", "EncodeError",
                    f"cannot encode the result of {method!r}: {exc}", ""]
                break
        try:
            return self._reply(cid, [results, failure])
        except _ENCODE_ERRORS as exc:  # each result encodes alone, not together: give up
            return self._fail(cid, "communication_error", "EncodeError",
                              f"cannot encode the results of {method!r}: {exc}", "")

    def _unknown(self, cid: int | None, method: str) -> bytes | None:
        names = ", ".join(sorted(self.commands)) or "none"
        return self._fail(cid, "python_error", "UnknownCommand",
                          f"{type(self.worker).__name__} has no command {method!r} "
                          f"(commands: {names})", "")

    def _not_run(self, msg: Any, reason: str) -> bytes | None:
        if not isinstance(msg, P.Call):
            return None
        return P.CALL_CODEC.encode(P.NotRun(
            id=msg.id, message=f"the worker is leaving ({reason}); the call did not run"))

    def _fail(self, cid: int | None, category: str, kind: str, message: str,
              tb: str) -> bytes | None:
        self.meter.error(category)
        if cid is None:
            self.worker.log.warning("cast failed: {}: {}", kind, message)
            return None
        return P.CALL_CODEC.encode(P.Fail(id=cid, category=category, type=kind,
                                          message=message, traceback=tb))

    def close(self, reason: str, grace: float) -> None:
        """Leave without losing a call: tell every caller we are closing, then answer
        whatever still arrives with NotRun until each caller has closed its side (or the
        grace runs out). A caller that saw the notice sends nothing more here; a call it
        sent before seeing it comes back NotRun, which is safe to send elsewhere."""
        with self.accept_lock:
            self.closed = True
        self._on_wake()  # channels accepted before that still get the notice
        notice = P.CALL_CODEC.encode(P.Closing(reason=f"the worker is leaving ({reason})"))
        for caller in self._callers():
            caller.paused = False
            caller.out += notice
            self._flush(caller)
        deadline = time.monotonic() + grace
        while self._callers():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            for fd, caller, mask in self.poller.poll(remaining):
                if not self.poller.registered(fd, caller):
                    continue
                if caller is None:
                    self._on_wake()  # a stale wake-up; nothing new can be queued now
                else:
                    self._on_ready(caller, mask)

    def _callers(self) -> list[_Caller]:
        return [caller for caller in self.poller.values() if caller is not None]

