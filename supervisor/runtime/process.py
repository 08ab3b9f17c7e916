"""The child side of a worker: init, then serve commands until stopped.

    supervisor ──control──▶ worker        Stop, OpenChannel(+fd), Ping, GetMetrics
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

import os
import socket
import sys
import threading
from typing import Any

from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.policy import call_policy
from ..worker import command_table
from .callers import Callers, describe
from .meter import CallMeter

__all__ = ["serve"]


CLOSE_GRACE = 2.0  # seconds a leaving worker waits for its callers to see its notice


def serve(spec: Any, path: str, restarts: int, ctrl: socket.socket,
          matrix: Any = None) -> int:
    """Run a worker child to completion; returns the process exit code."""
    if spec.backend == "ray":  # Ray is imported only here, in the child, never before fork
        from .raybridge import serve as serve_bridge

        return serve_bridge(spec, path, restarts, ctrl, matrix)
    ctrl.setblocking(True)
    worker = spec.worker_class()
    worker.id = spec.id
    worker.path = path
    worker.restarts = restarts
    try:
        worker.init(*spec.args, **dict(spec.kwargs))
    except Exception as exc:  # any error in user init is an initialization_error
        kind, message, tb = describe(exc)
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


class WorkerRuntime:
    """One worker process: its control channel (its own thread) and, through `callers`,
    its callers' channels."""

    def __init__(self, worker: Any, spec: Any, ctrl: socket.socket, matrix: Any) -> None:
        self.worker = worker
        self.spec = spec
        self.ctrl = ctrl
        self.ctrl_lock = threading.Lock()
        self.commands = {name: getattr(worker, name) for name in command_table(type(worker))}
        self.policy = call_policy(spec, self.commands, matrix, os.getpid())
        self.health = getattr(worker, "health", None)
        self.stopping = worker.stopping
        self.meter = CallMeter()  # written by the serving loop, read by the control thread
        self.exit_reason: str | None = None
        self.exit_message: str | None = None
        self.exit_error: tuple[str, str, str] | None = None
        self.stop_requested: str | None = None
        self.callers = Callers(worker, self.commands, spec.serializer == "pickle",
                               self._leaving, self.meter)

    # control channel (its own thread) --------------------------------------------------
    def send_control(self, msg: Any) -> None:
        with self.ctrl_lock:
            send_frame(self.ctrl, P.CONTROL_CODEC.encode(msg))

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
                    # Its fd could not be installed here (EMFILE): a resource_error for
                    # that caller; every other caller keeps being served.
                    self.send_control(P.ErrorResponse(
                        id=rid, kind="WorkerError", message="out of file descriptors: the "
                        "channel's socket could not be received",
                        fields={"category": "resource_error"}))
                    return
                if not self.callers.accept(socket.socket(fileno=fds.pop(0))):
                    # The worker is leaving: the caller waits for our replacement instead.
                    self.send_control(P.ErrorResponse(
                        id=rid, kind="NotRunning", message="the worker is leaving",
                        fields={"state": "restarting"}))
                    return
                self.send_control(P.Response(id=rid, value=self.policy))
            case P.Stop(reason=reason):
                self.stop_requested = reason
                self.exit_reason = "shutdown"
                self.worker.stopping.set()
                self.callers.wake.set()
            case P.Ping(seq=seq):
                self.send_control(P.Pong(seq=seq, healthy=self._healthy()))
            case P.GetMetrics(id=rid):
                self.send_control(P.Response(id=rid, value=self.meter.snapshot()))
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

    # lifecycle -----------------------------------------------------------------------
    def _leaving(self) -> str | None:
        """The exit reason once the worker must stop taking calls, else None."""
        if self.exit_reason is not None:
            return self.exit_reason
        if self.callers.failed is not None:  # a caller sent a frame that does not decode
            self.exit_error = self.callers.failed
            self.exit_reason = "protocol_error"
        elif self.stopping.is_set():
            self.exit_reason = getattr(self.worker, "_stop_reason", "normal")
        elif self.spec.max_calls is not None and self.callers.calls >= self.spec.max_calls:
            # Recycled like maxtasksperchild: a clean exit the supervisor does not count.
            self.exit_reason = "normal"
            self.exit_message = "max_calls"
        return self.exit_reason

    def loop(self) -> None:
        """Serve until a stop request, `self.stop()`, max_calls or a protocol error."""
        self.callers.serve()

    def finish(self) -> int:
        """Run `terminate`, report the exit reason, return the exit code."""
        reason = self.exit_reason or "normal"
        if self.exit_message == "max_calls" or self.stop_requested not in (None, "shutdown"):
            # A planned recycle (max_calls, or its supervisor stopping it over its memory
            # limit or a failed health check): its callers are live and must not lose a
            # call to it. The wait ends as soon as every caller has closed its side; the
            # grace only bounds a caller that does not react (an idle one), and must
            # outlast a loaded machine's scheduling delays, or a call written just before
            # we exit is lost.
            self.callers.close(reason, grace=CLOSE_GRACE)
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
            self.exit_error = describe(exc)
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
