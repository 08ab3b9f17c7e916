"""The child side of a worker: init, then serve commands until stopped.

    supervisor ──control──▶ worker        Stop, OpenChannel(+fd), Ping, GetMetrics
    supervisor ◀──control── worker        Ready | StartFailed, Response, Pong, Exit
    caller     ──call────▶ worker         Call, Cast      (one socketpair per caller)
    caller     ◀──call──── worker         Reply, Fail

Threads:
- the serving loop reads the call channels, runs the commands in order and writes all the
  replies of a batch with one `sendall`. It runs in the main thread, unless the worker has
  `run()`: then `run()` has the main thread and the serving loop gets its own;
- the control channel (new call channels, Stop, GetMetrics) is read by the serving loop
  too, between commands: one poll for both, and no thread to start, which is most of what
  a fresh worker costs in time and memory (a thread's start, its 8 MiB stack, a malloc
  arena, the pages it dirties). A worker with heartbeats or with `run()` reads it from a
  control thread instead: a heartbeat must be answered while a command runs (a missed one
  means the process is wedged, not busy), and `run()` has the main thread.

The supervisor computes a worker's command table and call policy once, before it forks
(`plan`), not in every child: a fresh child pays copy-on-write faults for all it builds.

A command that raises becomes a `Fail` reply and the worker keeps serving. A frame that does
not decode means the channel can no longer be trusted: the worker exits with reason
``protocol_error`` (a communication_error) and its supervisor restarts it.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from typing import Any

import attrs
import msgspec

from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.policy import CallPolicy, call_policy
from ..worker import command_table
from .callers import Callers, describe
from .meter import CallMeter
from .poller import READ

__all__ = ["serve", "plan", "plan_key", "WorkerPlan"]


CLOSE_GRACE = 2.0  # seconds a leaving worker waits for its callers to see its notice


@attrs.frozen
class WorkerPlan:
    """What every process of one worker spec shares, computed by its supervisor before
    fork: the names of its commands, its call policy (the pid is the child's own, set
    there), and whether it needs a control thread (heartbeats)."""

    commands: tuple[str, ...]
    policy: CallPolicy
    control_thread: bool


def plan(spec: Any, matrix: Any = None) -> WorkerPlan:
    """The plan of a worker built from `spec` under `matrix` (see `WorkerPlan`)."""
    table = command_table(spec.worker_class)
    return WorkerPlan(commands=tuple(table), policy=call_policy(spec, table, matrix, 0),
                      control_thread=bool(getattr(spec, "heartbeat", None)))


def plan_key(spec: Any, matrix: Any = None) -> tuple[Any, ...]:
    """Everything `plan` reads (the matrix by identity): specs with equal keys share one
    plan, so a thousand workers of one class cost one."""
    return (spec.worker_class, spec.call_timeout, spec.on_timeout, spec.fallback,
            spec.serializer, bool(getattr(spec, "heartbeat", None)), id(matrix))


def serve(spec: Any, path: str, restarts: int, ctrl: socket.socket,
          matrix: Any = None, worker_plan: WorkerPlan | None = None,
          hold: bool = False) -> int:
    """Run a worker child to completion; returns the process exit code. With `hold` (it
    was forked ahead of its turn), `init` waits for the supervisor's `Begin`."""
    ctrl.setblocking(True)
    if hold and not _await_begin(ctrl):
        return 0  # let go of before its turn: it never ran init, nothing to report
    if spec.backend == "ray":  # Ray is imported only here, in the child, never before fork
        from .raybridge import serve as serve_bridge

        return serve_bridge(spec, path, restarts, ctrl, matrix)
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
    runtime = WorkerRuntime(worker, spec, ctrl, worker_plan or plan(spec, matrix))
    send_frame(ctrl, P.CONTROL_CODEC.encode(P.Ready(pid=os.getpid())))
    has_run = callable(getattr(worker, "run", None))
    if has_run or runtime.plan.control_thread:
        threading.Thread(target=runtime.control_loop, name="worker-control",
                         daemon=True).start()
    else:
        runtime.control_on_loop()
    if has_run:
        return runtime.run_service()
    runtime.loop()
    return runtime.finish()


def _await_begin(ctrl: socket.socket) -> bool:
    """Wait for `Begin`; False when the channel ends (or says anything else) first."""
    reader = FrameReader(P.CONTROL_CODEC)
    while True:
        try:
            msgs, _, eof = recv_some(ctrl, reader)
        except (ProtocolError, OSError):
            return False
        if msgs:
            # Nothing but Begin is sent to a child that has not reported Ready.
            return type(msgs[0]) is P.Begin
        if eof:
            return False


class WorkerRuntime:
    """One worker process: its control channel (its own thread) and, through `callers`,
    its callers' channels."""

    def __init__(self, worker: Any, spec: Any, ctrl: socket.socket,
                 worker_plan: WorkerPlan) -> None:
        self.worker = worker
        self.spec = spec
        self.ctrl = ctrl
        self.ctrl_lock = threading.Lock()
        self.plan = worker_plan
        self.commands = {name: getattr(worker, name) for name in worker_plan.commands}
        self.policy = msgspec.structs.replace(worker_plan.policy, pid=os.getpid())
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
        """The control thread: read the control channel until the process ends."""
        reader = FrameReader(P.CONTROL_CODEC)
        while True:
            self.read_control(reader)

    def control_on_loop(self) -> None:
        """Have the serving loop read the control channel (no control thread)."""
        _ControlOnLoop(self).install(self.callers)

    def read_control(self, reader: FrameReader) -> None:
        """One read of the control channel, its messages handled."""
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


class _ControlOnLoop:
    """The control channel, read by the serving loop in place of its wake-up channel.

    The serving loop polls its wake-up channel and, when it is readable, calls `drain()`
    and then takes the channels `accept` queued. Standing in for it, this reads the
    control channel there: an OpenChannel is accepted and registered in the same turn, a
    Stop sets the flags the loop checks next. Nothing needs waking (`set` does nothing):
    everything that would wake the loop now happens on its own thread. The control
    channel stays blocking for the sends; a read happens only once a poll says it would
    not block (the loop also drains at times it has not polled, when it starts to close).
    """

    __slots__ = ("runtime", "reader", "ready")

    def __init__(self, runtime: WorkerRuntime) -> None:
        self.runtime = runtime
        self.reader = FrameReader(P.CONTROL_CODEC)
        self.ready = select.poll()  # no descriptor of its own, unlike epoll
        self.ready.register(runtime.ctrl.fileno(), select.POLLIN)

    def install(self, callers: Callers) -> None:
        wake = callers.wake
        callers.poller.unregister(wake.fileno())
        wake.close()
        callers.wake = self
        callers.poller.register(self.fileno(), READ, None)

    def fileno(self) -> int:
        return self.runtime.ctrl.fileno()

    def set(self) -> None:
        """Nothing to wake: the loop's own thread queued whatever is new."""

    def drain(self) -> bytes:
        if self.ready.poll(0):
            self.runtime.read_control(self.reader)
        return b""

    def close(self) -> None:
        """The control channel is the runtime's to close (at exit)."""
