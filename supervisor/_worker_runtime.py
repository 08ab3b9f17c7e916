"""The child side of a worker: init, then serve commands until stopped.

    supervisor ──control──▶ worker        Stop, OpenChannel(+fd), Ping
    supervisor ◀──control── worker        Ready | StartFailed, Response, Pong, Exit
    caller     ──call────▶ worker         Call, Cast      (one socketpair per caller)
    caller     ◀──call──── worker         Reply, Fail

Threads:
- the control thread reads the control channel: it answers heartbeats (so a missed
  heartbeat means the process is wedged, not busy), hands new call channels to the serving
  loop and turns a Stop into a flag plus a wake-up;
- the serving loop reads the call channels, runs the commands in order and writes all the
  replies of a batch with one `sendall`. It runs in the main thread, unless the worker has
  `run()`: then `run()` has the main thread and the serving loop gets its own.

A command that raises becomes a `Fail` reply and the worker keeps serving. A frame that does
not decode means the channel can no longer be trusted: the worker exits with reason
``protocol_error`` (a communication_error) and its supervisor restarts it.
"""

from __future__ import annotations

import collections
import os
import pickle
import socket
import sys
import threading
import traceback
from collections.abc import Mapping
from typing import Any

from . import protocol as P
from ._framing import FrameReader, recv_some, send_frame
from ._poller import READ, WRITE, Poller
from .errors import EncodeError, ProtocolError
from .worker import command_table, is_idempotent

__all__ = ["serve", "call_policy", "END_SESSION"]

# The reserved method that ends a session: its state is dropped; replies whether it existed.
END_SESSION = "_end_session"


def _describe(exc: BaseException) -> tuple[str, str, str]:
    return type(exc).__qualname__, str(exc), "".join(traceback.format_exception(exc))


def call_policy(spec: Any, commands: Mapping[str, Any], matrix: Any) -> dict[str, Any]:
    """What a caller needs to apply the matrix to its calls, sent with every new channel:
    idempotent commands, timeouts, the fallback sibling, and the retry delays of the
    connection_error and timeout_error rows (attempt 1 is immediate)."""
    from strategies.matrix import DEFAULT_MATRIX, ErrorCategory, retry_delay

    matrix = matrix or DEFAULT_MATRIX
    retries = {}
    for category in (ErrorCategory.connection_error, ErrorCategory.timeout_error):
        rule = matrix[category]
        retries[str(category)] = [0.0] + [retry_delay(rule, n)
                                          for n in range(2, rule.max_retries + 1)]
    return {
        "pid": os.getpid(),
        "idempotent": sorted(name for name, fn in commands.items() if is_idempotent(fn)),
        "call_timeout": spec.call_timeout,
        "on_timeout": spec.on_timeout,
        "fallback": spec.fallback,
        "retries": retries,
    }


def serve(spec: Any, path: str, restarts: int, ctrl: socket.socket,
          matrix: Any = None) -> int:
    """Run a worker child to completion; returns the process exit code."""
    ctrl.setblocking(True)
    worker = spec.worker_class()
    worker.id = spec.id
    worker.path = path
    worker.restarts = restarts
    try:
        worker.init(*spec.args, **dict(spec.kwargs))
    except Exception as exc:  # any error in user init is an initialization_error
        kind, message, tb = _describe(exc)
        send_frame(ctrl, P.CONTROL_CODEC.encode(
            P.StartFailed(path=path, category="initialization_error", type=kind,
                          message=message, traceback=tb)))
        return 1
    runtime = WorkerRuntime(worker, spec, ctrl, matrix)
    send_frame(ctrl, P.CONTROL_CODEC.encode(P.Ready(pid=os.getpid())))
    threading.Thread(target=runtime.control_loop, name="worker-control", daemon=True).start()
    if callable(getattr(worker, "run", None)):
        return runtime.run_service()
    runtime.loop()
    return runtime.finish()


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


class WorkerRuntime:
    """Serves one worker's control channel and its callers' channels."""

    def __init__(self, worker: Any, spec: Any, ctrl: socket.socket, matrix: Any) -> None:
        self.worker = worker
        self.spec = spec
        self.ctrl = ctrl
        self.ctrl_lock = threading.Lock()
        self.commands = {name: getattr(worker, name) for name in command_table(type(worker))}
        self.policy = call_policy(spec, self.commands, matrix)
        self.health = getattr(worker, "health", None)
        self.stopping = worker.stopping
        self.pickled = spec.serializer == "pickle"
        self.calls = 0
        self.exit_reason: str | None = None
        self.exit_message: str | None = None
        self.exit_error: tuple[str, str, str] | None = None
        self.stop_requested: str | None = None
        self.incoming: collections.deque[socket.socket] = collections.deque()
        self.buffer = bytearray(65536)  # every read lands here: no allocation per call
        self.sessions: dict[str, dict[str, Any]] = {}
        self.no_session: dict[str, Any] = {}
        self.leaving = False  # set (under leave_lock) once no new channel may be accepted
        self.leave_lock = threading.Lock()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.poller = Poller()
        self.poller.register(self.wake_r, READ, None)

    # control channel (its own thread) --------------------------------------------------
    def send_control(self, msg: Any) -> None:
        with self.ctrl_lock:
            send_frame(self.ctrl, P.CONTROL_CODEC.encode(msg))

    def _wake(self) -> None:
        try:
            os.write(self.wake_w, b"!")
        except BlockingIOError:  # the pipe is full of wake-ups already; one is enough
            pass

    def control_loop(self) -> None:
        reader = FrameReader(P.CONTROL_CODEC)
        while True:
            try:
                msgs, fds, eof = recv_some(self.ctrl, reader, maxfds=16)
            except (ProtocolError, OSError):
                # Garbage from our own supervisor, or the channel broke: nothing on it can
                # be trusted, and without it we cannot be supervised.
                os._exit(3)
            if eof:
                os._exit(2)  # the supervisor is gone (PR_SET_PDEATHSIG may not exist here)
            fds = list(fds)
            for msg in msgs:
                self._on_control(msg, fds)
            for fd in fds:  # fds that no message claimed must not leak
                os.close(fd)

    def _on_control(self, msg: Any, fds: list[int]) -> None:
        match msg:
            case P.OpenChannel(id=rid):
                if not fds:
                    self.send_control(P.ErrorResponse(id=rid, kind="ProtocolError",
                                                      message="OpenChannel without an fd"))
                    return
                sock = socket.socket(fileno=fds.pop(0))
                with self.leave_lock:
                    if not self.leaving:
                        self.incoming.append(sock)
                if self.leaving:
                    # No channel may be accepted that the serving loop will never read:
                    # the caller waits for our replacement instead.
                    sock.close()
                    self.send_control(P.ErrorResponse(
                        id=rid, kind="NotRunning", message="the worker is leaving",
                        fields={"state": "restarting"}))
                    return
                self._wake()
                self.send_control(P.Response(id=rid, value=self.policy))
            case P.Stop(reason=reason):
                self.stop_requested = reason
                self.exit_reason = "shutdown"
                self.worker.stopping.set()
                self._wake()
            case P.Ping(seq=seq):
                self.send_control(P.Pong(seq=seq, healthy=self._healthy()))
            case _:
                pass

    def _healthy(self) -> bool:
        if self.health is None:
            return True
        try:
            return bool(self.health())
        except Exception as exc:  # a health check that raises says "unhealthy"
            self.worker.log.warning("health() raised {}: {}", type(exc).__name__, exc)
            return False

    # call channels (the serving loop) --------------------------------------------------
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
        try:
            os.read(self.wake_r, 4096)
        except BlockingIOError:  # drained by an earlier wake-up
            pass
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
            self.exit_reason = "protocol_error"
            self.exit_error = ("ProtocolError", str(exc), "")
            return
        if len(msgs) == 1 and not caller.out and not self._should_leave():
            # The common case, one call and nothing owed: answer it straight away.
            frame = self._handle(msgs[0])
            if frame is not None:
                self._send_now(caller, frame)
            return
        for msg in msgs:
            # Received while leaving: never run; the caller may safely send it again.
            frame = self._not_run(msg) if self._should_leave() else self._handle(msg)
            if frame is not None:
                caller.out += frame
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
        if kind is P.Call:
            if msg.method == END_SESSION:
                existed = self.sessions.pop(msg.session, None) is not None
                return P.CALL_CODEC.encode(P.Reply(id=msg.id, value=existed))
            self.calls += 1
            if msg.session is not None or self.worker.session is not self.no_session:
                self._enter_session(msg.session)
            return self._run_command(msg.id, msg.method, msg.args, msg.kwargs, msg.pickled)
        if kind is P.Cast:
            self.calls += 1
            self._enter_session(msg.session)
            self._run_command(None, msg.method, msg.args, msg.kwargs, msg.pickled)
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
            names = ", ".join(sorted(self.commands)) or "none"
            return self._fail(cid, "python_error", "UnknownCommand",
                              f"{type(self.worker).__name__} has no command {method!r} "
                              f"(commands: {names})", "")
        try:
            if pickled:
                args, kwargs = pickle.loads(args)
            value = fn(*args, **(kwargs or {}))
        except Exception as exc:  # the command's own error goes back to its caller
            return self._fail(cid, "python_error", *_describe(exc))
        if cid is None:
            return None
        try:
            if self.pickled:
                return P.CALL_CODEC.encode(P.Reply(id=cid, value=pickle.dumps(value),
                                                   pickled=True))
            return P.CALL_CODEC.encode(P.Reply(id=cid, value=value))
        except EncodeError as exc:
            return self._fail(cid, "communication_error", "EncodeError",
                              f"cannot encode the result of {method!r}: {exc}", "")

    def _not_run(self, msg: Any) -> bytes | None:
        if not isinstance(msg, P.Call):
            return None
        return self._fail(msg.id, "connection_error", "NotRun",
                          f"the worker is leaving ({self.exit_reason}); the call did not run",
                          "")

    def _fail(self, cid: int | None, category: str, kind: str, message: str,
              tb: str) -> bytes | None:
        if cid is None:
            self.worker.log.warning("cast failed: {}: {}", kind, message)
            return None
        return P.CALL_CODEC.encode(P.Fail(id=cid, category=category, type=kind,
                                          message=message, traceback=tb))

    # lifecycle -----------------------------------------------------------------------
    def _should_leave(self) -> bool:
        if self.exit_reason is not None:
            return True
        if self.stopping.is_set():
            self.exit_reason = getattr(self.worker, "_stop_reason", "normal")
            return True
        if self.spec.max_calls is not None and self.calls >= self.spec.max_calls:
            # Recycled like maxtasksperchild: a clean exit the supervisor does not count.
            self.exit_reason = "normal"
            self.exit_message = "max_calls"
            return True
        return False

    def loop(self) -> None:
        """Serve until a stop request, `self.stop()`, max_calls or a protocol error."""
        while not self._should_leave():
            for fd, caller, mask in self.poller.poll():
                if caller is None:
                    self._on_wake()
                elif mask == READ and caller.events == READ and not caller.closed:
                    self._on_read(caller)  # the hot path: a call arrived, nothing owed
                elif self.poller.registered(fd, caller):  # not dropped earlier in the batch
                    self._on_ready(caller, mask)
                if self.exit_reason is not None or self.stopping.is_set():
                    break

    def _close_channels(self, grace: float) -> None:
        """Leave without losing a call: tell every caller we are closing, then answer
        whatever still arrives with NotRun until each caller has closed its side (or the
        grace runs out). A caller that saw the notice sends nothing more here; a call it
        sent before seeing it comes back NotRun, which is safe to send elsewhere."""
        import time

        with self.leave_lock:
            self.leaving = True
        self._on_wake()  # channels accepted before that still get the notice
        notice = P.CALL_CODEC.encode(P.Fail(id=0, category="connection_error", type="Closing",
                                            message=f"the worker is leaving ({self.exit_reason})"))
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

    def finish(self) -> int:
        """Run `terminate`, report the exit reason, return the exit code."""
        reason = self.exit_reason or "normal"
        if self.exit_message == "max_calls":
            # A planned recycle: its callers are live and must not lose a call to it.
            self._close_channels(grace=0.5)
        if reason != "protocol_error":
            hook_reason = self.stop_requested or reason
            try:
                self.worker.terminate(hook_reason)
            except Exception as exc:  # a failing hook must not turn a clean stop into a crash
                self.worker.log.exception("terminate({!r}) raised: {}", hook_reason, exc)
        kind = message = tb = None
        category = None
        if self.exit_error is not None:
            kind, message, tb = self.exit_error
            category = "communication_error" if reason == "protocol_error" else "python_error"
        try:
            self.send_control(P.Exit(reason=reason, category=category, type=kind,
                                     message=message or self.exit_message, traceback=tb))
        except OSError:  # the supervisor is gone; nobody to tell
            pass
        return 0

    def run_service(self) -> int:
        """A worker with `run()`: run it here, serve channels from a helper thread."""
        threading.Thread(target=self._serve_in_thread, name="worker-channels",
                         daemon=True).start()
        try:
            self.worker.run()
        except Exception as exc:  # run() raising is a python_error exit
            self.exit_error = _describe(exc)
            self.worker.log.error("run() raised {}: {}", type(exc).__name__, exc)
            sys.stderr.flush()
            try:
                self.send_control(P.Exit(reason="python_exception", category="python_error",
                                         type=self.exit_error[0], message=self.exit_error[1],
                                         traceback=self.exit_error[2]))
            except OSError:  # supervisor gone
                pass
            return 1
        if self.exit_reason is None:
            self.exit_reason = getattr(self.worker, "_stop_reason", "normal")
        return self.finish()

    def _serve_in_thread(self) -> None:
        self.loop()
        # The loop left because of a stop request or a protocol error: make run() see it.
        self.worker.stopping.set()
