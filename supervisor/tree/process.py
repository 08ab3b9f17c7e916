"""A supervisor process: OTP's supervisor behaviour over real processes, plus the matrix.

    parent (App or supervisor)
        │ control: Stop, requests (+fds) ▼      ▲ Ready | StartFailed, Response, Event, Exit
    SupervisorProcess  ── one selector loop: parent channel, child channels, pidfds, signals
        │ fork per child
        ├── worker      (`runtime.process.serve`)
        └── supervisor  (another SupervisorProcess)

Children start in list order, each waiting for the previous one's Ready; they stop in
reverse order. A child's exit is noticed through its pidfd (or SIGCHLD) and handled step
by step (DESIGN.md "How a failed child is handled"):

  1. the restart type says whether it is restarted at all (OTP's do_restart);
  2. a restart counts toward intensity when it is decided; past intensity the supervisor
     stops its children and exits with reason ``shutdown`` and its parent decides;
  3. for a failure (not a clean exit), the error matrix gives the step for the child's
     consecutive-failure count: restart after the row's delay (a loop timer, never a
     sleep), escalate, open the child's circuit, or abandon.

A restart that fails to start is itself a failure of that child and goes through the same
steps from the loop (OTP's try_again), so requests and other children's events are handled
in between. Supervisors carry control traffic only: a call channel (one end of a
socketpair) travels down the tree with `OpenChannel` and is handed to the worker.
"""

from __future__ import annotations

import gc
import itertools
import os
import signal
import socket
import sys
import time
from typing import Any

from loguru import logger

from strategies.intensity import RestartIntensity
from strategies.matrix import DEFAULT_MATRIX, override_matrix

from ..errors import ProtocolError
from ..runtime.process import serve  # imported here, before forking: children share it
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from .health import on_pong, start_monitors
from .logsink import stderr_sink
from .loop import Loop
from .output import Capture
from .proc import fork_child, kill_strays, raise_fd_limit, set_subreaper
from .program import await_exec, is_program, kill_group, spawn
from .recovery import handle_exit
from .requests import handle_request
from .slot import ChildSlot, StartFailure, await_ready, drain, reason_of, stop_process

__all__ = ["SupervisorProcess"]

# How the supervisor ended -> its exit code. Its parent always sees reason "shutdown" (as in
# OTP) with this detail in Exit.message; the root's App reports the detail from wait().
EXIT_CODES = {"normal": 0, "shutdown": 0, "auto_shutdown": 0,
              "reached_max_restart_intensity": 1}


def join(path: str, child_id: str) -> str:
    return f"{path}/{child_id}" if path else child_id


def child_matrix(base: Any, spec: Any) -> Any:
    errors = getattr(spec, "errors", None)
    return override_matrix(base, errors) if errors else base


class SupervisorProcess:
    def __init__(self, spec: Any, path: str, parent: socket.socket | None, *,
                 root: bool = False, matrix: Any = None) -> None:
        self.spec = spec
        self.path = path
        self.parent = parent  # None for the root of `python -m supervisor run`
        # Where Ready, StartFailed, Events and the Exit go when there is no parent socket
        # (the service root: local telemetry and the control socket's clients).
        self.uplink: Any = None
        self.control: Any = None  # the ControlServer of a service root
        self.parent_reader = FrameReader(P.CONTROL_CODEC)
        self.root = root
        self.loop = Loop(on_error=self._handler_failed)
        self.matrix = child_matrix(matrix or DEFAULT_MATRIX, spec)
        self.children = [self.new_slot(s) for s in spec.children]
        self.intensity = RestartIntensity(spec.max_restarts, spec.max_seconds)
        self.forwarded: dict[int, tuple[socket.socket, int, ChildSlot]] = {}
        self.metrics = {"initiated": 0, "succeeded": 0, "failed": 0}
        self.captures: set[Capture] = set()  # children's output pipes, read until EOF
        self._ids = itertools.count(1)
        self._dynamic = itertools.count(1)
        self.exit_detail: str | None = None

    def new_slot(self, spec: Any) -> ChildSlot:
        """The runtime record of a child: the one builder for static and dynamic children
        alike, so the two cannot differ (its path, its error matrix)."""
        return ChildSlot(spec=spec, path=join(self.path, spec.id),
                         matrix=child_matrix(self.matrix, spec))

    # ----------------------------------------------------------------------- lifecycle
    def main(self) -> int:
        """Start the children, serve until told to stop or giving up; the exit code."""
        # Our log never waits for whoever reads stderr: a stuck reader would stop the
        # loop (no reaping, no restarts, no answers). The loop writes what fd 2 did not take.
        sink = stderr_sink()
        sink.attach(self.loop)
        try:
            return self._serve()
        finally:
            sink.detach()

    def _serve(self) -> int:
        set_subreaper()
        raise_fd_limit()  # 1,000 children need ~4,000 fds: ctrl, pidfd, two output pipes
        self.loop.add_signal(signal.SIGCHLD, lambda _: self._reap())
        self.loop.add_signal(signal.SIGTERM, lambda _: self.shutdown("normal"))
        if self.parent is None:  # the service root: Ctrl-C is a graceful stop
            self.loop.add_signal(signal.SIGINT, lambda _: self.shutdown("normal"))
            self.loop.add_signal(signal.SIGHUP, lambda _: self._hangup())
        else:
            self.parent.setblocking(True)
        gc.freeze()  # forked children share our heap without copy-on-write faults at GC
        failure = self._start_all()
        if failure is not None:
            self._send_up(P.StartFailed(path=failure.path, category=failure.category,
                                        type=failure.type, message=failure.message,
                                        traceback=failure.traceback))
            return 1
        self._send_up(P.Ready(pid=os.getpid()))
        if self.parent is not None:
            self.loop.add_reader(self.parent, self._on_parent)
        if self.exit_detail is None:
            self.loop.run()
        detail = self.exit_detail or "normal"
        for capture in list(self.captures):
            capture.close()  # log the last lines the stopped children wrote
        self._send_up(P.Exit(reason="shutdown", message=detail))
        return EXIT_CODES.get(detail, 0)

    def _start_all(self) -> StartFailure | None:
        started: list[ChildSlot] = []
        for slot in self.children:
            failure = self.start_slot(slot)
            if failure is not None:
                for done in reversed(started):
                    self.stop_slot(done, "shutdown")
                return failure
            started.append(slot)
        return None

    def _hangup(self) -> None:
        # SIGHUP conventionally asks a daemon to reload its configuration. Until reload
        # exists it is a graceful stop like SIGTERM: never the abrupt death that its default
        # action is (no terminate(), a stale socket), also when a terminal closes.
        logger.info("SIGHUP: configuration reload does not exist yet; stopping the tree "
                    "gracefully")
        self.shutdown("normal")

    def shutdown(self, detail: str) -> None:
        """Stop every child in reverse start order, then leave the loop."""
        if self.exit_detail is not None:
            return
        self.exit_detail = detail
        for slot in reversed(self.children):
            slot.cancel_timers()
            self.stop_slot(slot, "shutdown", scan=False)
        kill_strays(())  # once, for every orphan the stopped children left
        self.loop.stop()

    def _send_up(self, msg: Any) -> None:
        if self.uplink is not None:
            self.uplink(msg)
            return
        try:
            send_frame(self.parent, P.CONTROL_CODEC.encode(msg))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the parent is gone; PR_SET_PDEATHSIG or its EOF ends us soon

    def emit(self, name: str, slot: ChildSlot, *, group: str = "child",
             **metadata: Any) -> None:
        meta = {"path": slot.path, "id": slot.id, "pid": slot.pid, "supervisor": self.path,
                "reason": None, "category": None, "restarts": slot.restarts}
        meta.update(metadata)
        self._send_up(P.Event(name=["supervisor", group, name],
                              measurements={"time": time.time()}, metadata=meta))

    # ------------------------------------------------------------------ start and stop
    def _fork(self, slot: ChildSlot) -> int | None:
        """Fork the child; returns the exec-status pipe for a program, None otherwise."""
        spec, path = slot.spec, slot.path
        # Workers' and programs' output is captured; a child supervisor's own log lines
        # go straight to our stderr (capturing them would wrap every line twice).
        capture = Capture(path) if spec.kind == "worker" else None
        try:
            return self._fork_with(slot, capture)
        except OSError:
            if capture is not None:
                capture.discard()
            raise

    def _fork_with(self, slot: ChildSlot, capture: Capture | None) -> int | None:
        spec, path, restarts, matrix = slot.spec, slot.path, slot.restarts, slot.matrix
        self.captures = {c for c in self.captures if c.partial}  # forget finished pipes
        keep = capture.child_fds() if capture is not None else []
        if is_program(spec):
            status_r = spawn(slot, keep, capture)
        else:
            mine, theirs = socket.socketpair()
            keep.append(theirs.fileno())
            if spec.kind == "supervisor":
                def run() -> int:
                    return SupervisorProcess(spec, path, theirs, matrix=matrix).main()
            else:
                def run() -> int:
                    capture.in_child()
                    sys.stdout.reconfigure(line_buffering=True)  # a pipe: flush per line
                    return serve(spec, path, restarts, theirs, matrix)
            try:
                pid = fork_child(run, keep)
            except OSError:
                mine.close()
                raise
            finally:
                theirs.close()
            slot.attach(pid, mine)
            status_r = None
        if capture is not None:
            capture.in_parent(self.loop)
            self.captures.add(capture)
        return status_r

    def start_slot(self, slot: ChildSlot) -> StartFailure | None:
        """Fork the child and wait for it to be ready; on failure it is reaped."""
        slot.state = "starting"
        try:
            status_r = self._fork(slot)
        except OSError as exc:
            # Out of fds or processes (EMFILE, EAGAIN): a resource_error of this child,
            # never a crash of the supervisor.
            slot.release()
            slot.state = "stopped"
            failure = StartFailure(slot.path, "resource_error", type(exc).__name__,
                                   f"cannot start the process: {exc}")
            self.emit("start_failed", slot, reason=failure.type, category=failure.category,
                      message=failure.message)
            return failure
        if status_r is not None:
            failure = await_exec(slot, status_r)
        else:
            failure = await_ready(slot, self._on_child_message)
        if failure is not None:
            slot.release()
            slot.state = "stopped"
            self.emit("start_failed", slot, reason=failure.type, category=failure.category,
                      message=failure.message)
            return failure
        slot.state = "running"
        slot.started_at = time.time()
        slot.ran_since = time.monotonic()
        if slot.ctrl is not None:
            self.loop.add_reader(slot.ctrl, lambda: self._on_child(slot))
        if slot.pidfd is not None:
            self.loop.add_reader(slot.pidfd, self._reap)
        start_monitors(self, slot)
        self.emit("started", slot)
        return None

    def _unwatch(self, slot: ChildSlot) -> None:
        if slot.ctrl is not None:
            self.loop.remove_reader(slot.ctrl)
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)

    def stop_slot(self, slot: ChildSlot, reason: str, scan: bool = True) -> None:
        """Stop a child per its shutdown spec (if it runs); it is never restarted for this."""
        if slot.pid is None:
            # A child whose circuit is open stays down and keeps its trial timer: a
            # bystander stop does not touch it. Any other scheduled restart is void now.
            if slot.circuit != "open":
                if slot.restart_timer is not None:
                    slot.restart_timer.cancel()
                    slot.restart_timer = None
                slot.state = "stopped"
            return
        slot.state = "stopping"
        self._unwatch(slot)
        status = stop_process(slot, reason, self._on_child_message)
        why, _, detail = reason_of(slot, status)
        pid = slot.pid
        self._forget(slot, scan)
        slot.state = "stopped"
        self.emit("exited", slot, pid=pid, reason=why if slot.exit_msg else "shutdown",
                  category=None, detail=detail)

    def _forget(self, slot: ChildSlot, scan: bool = True) -> None:
        """The child's process is reaped: fail what was forwarded to it, close its fds."""
        for rid in list(slot.pending):
            origin, origin_id, _ = self.forwarded.pop(rid, (None, 0, None))
            if origin is not None:
                self._reply_error(origin, origin_id, "NotRunning",
                                  f"{slot.path} exited before it answered", state="restarting")
        slot.pending.clear()
        if is_program(slot.spec) and slot.pid is not None:
            kill_group(slot.pid)  # what the program left behind in its process group
        slot.release()
        if scan:  # orphans the child left (its subprocesses) were reparented to us
            kill_strays(s.pid for s in self.children if s.pid is not None)

    # ------------------------------------------------------------------ child events
    def _on_child(self, slot: ChildSlot) -> None:
        if drain(slot, self._on_child_message):
            self.loop.remove_reader(slot.ctrl)
            if slot.pidfd is None:
                self._reap()

    def _on_child_message(self, slot: ChildSlot, msg: Any) -> None:
        match msg:
            case P.Exit():
                slot.exit_msg = msg
            case P.Pong():
                on_pong(self, slot, msg)
            case P.Response(id=rid) | P.ErrorResponse(id=rid):
                origin, origin_id, target = self.forwarded.pop(rid, (None, 0, None))
                if target is not None:
                    target.pending.discard(rid)
                if origin is not None:
                    self._relay(origin, _with_id(msg, origin_id))
            case P.Event():
                self._send_up(msg)
            case _:
                pass

    def _reap(self) -> None:
        """Reap every exited child: ours are decided, adopted orphans only reaped.

        Children in a synchronous start or stop are skipped: that code reaps its own pid.
        """
        exited = []
        for slot in self.children:
            if slot.pid is None or slot.state in ("stopping", "starting"):
                continue
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid:
                exited.append((slot, self._record_exit(slot, status)))
        # Decide only once every exit of this pass is recorded: a failure that took down
        # every child at once must see them all down (it is critical, then).
        for slot, (reason, category, recycled) in exited:
            if self.exit_detail is not None:
                slot.state = "stopped"
            elif slot in self.children and slot.pid is None:
                handle_exit(self, slot, reason, category, recycled)
        known = {s.pid for s in self.children if s.pid is not None}
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:  # no children at all
                return
            # Stop at one of ours: it died after the scan above and its pidfd (or the
            # next SIGCHLD) brings us back for it.
            if info is None or info.si_pid == 0 or info.si_pid in known:
                return
            os.waitpid(info.si_pid, 0)

    def _record_exit(self, slot: ChildSlot, status: int) -> tuple[str, str | None, bool]:
        """Reaped: read its last words, release it, report it; (reason, category, recycled)."""
        self._unwatch(slot)
        drain(slot, self._on_child_message)
        reason, category, detail = reason_of(slot, status)
        if slot.pending_failure is not None:
            category, reason = slot.pending_failure
        recycled = (reason == "normal" and slot.exit_msg is not None
                    and slot.exit_msg.message == "max_calls")
        pid = slot.pid
        self._forget(slot)
        slot.state = "restarting"
        self.emit("exited", slot, pid=pid, reason=reason, category=category, detail=detail)
        return reason, category, recycled

    def find_slot(self, child_id: str) -> ChildSlot | None:
        for slot in self.children:
            if slot.id == child_id:
                return slot
        return None

    # ------------------------------------------------------------------ requests
    def _on_parent(self) -> None:
        try:
            msgs, fds, eof = recv_some(self.parent, self.parent_reader, maxfds=16)
        except ProtocolError as exc:
            # Garbage from above: the parent channel is closed, never trusted again.
            logger.error("supervisor {!r}: bad frame from parent: {}", self.path, exc)
            self.loop.remove_reader(self.parent)
            self.shutdown("shutdown")
            return
        fds = list(fds)
        for msg in msgs:
            fd = fds.pop(0) if isinstance(msg, P.OpenChannel) and fds else None
            self._request(msg, self.parent, fd)
        for fd in fds:
            os.close(fd)
        if eof:
            self.loop.remove_reader(self.parent)
            self.shutdown("normal" if self.root else "shutdown")

    def _request(self, msg: Any, origin: socket.socket, fd: int | None) -> None:
        if isinstance(msg, P.OpenChannel) and fd is None:
            # Its fd did not arrive: the kernel could not install it here (EMFILE).
            self._reply_error(origin, msg.id, "WorkerError", "out of file descriptors: the "
                              "channel's socket could not be received", category="resource_error",
                              path=msg.path)
            return
        try:
            handle_request(self, msg, origin, fd)
        except Exception as exc:
            # A bug, not a refusal (those are answered by the handlers): the requester gets
            # a classified error and the loop goes on serving everyone else.
            self._report_bug(exc, f"the request {type(msg).__name__}")
            rid = getattr(msg, "id", None)
            if rid is not None:
                where = self.path or "the root"
                self._reply_error(origin, rid, "WorkerError",
                                  f"supervisor {where!r} failed to handle "
                                  f"{type(msg).__name__}: {type(exc).__name__}: {exc}",
                                  category="system_error", path=self.path,
                                  remote_type=type(exc).__name__, remote_message=str(exc))

    def _handler_failed(self, exc: Exception, callback: Any) -> None:
        """An event handler of the loop raised: report the bug; the loop goes on."""
        self._report_bug(exc, f"the event handler {getattr(callback, '__qualname__', callback)}")

    def _report_bug(self, exc: Exception, what: str) -> None:
        logger.opt(exception=exc).error(
            "supervisor {!r}: bug: {} raised {}: {}; the supervisor keeps running",
            self.path or self.spec.id, what, type(exc).__name__, exc)

    def _relay(self, origin: socket.socket, msg: Any) -> None:
        if self.control is not None and self.control.owns(origin):
            self.control.send(origin, msg)
            return
        try:
            send_frame(origin, P.CONTROL_CODEC.encode(msg))
        except OSError:
            # The requester left (a dropped control client's socket is closed: EBADF; a
            # parent that went away: EPIPE). Nobody waits for this answer.
            pass

    def _reply_error(self, origin: socket.socket, rid: int, kind: str, message: str,
                     **fields: Any) -> None:
        self._relay(origin, P.ErrorResponse(id=rid, kind=kind, message=message, fields=fields))

    def forward(self, slot: ChildSlot, msg: Any, origin: socket.socket, origin_id: int,
                fd: int | None = None) -> None:
        """Send a request to a child, remembering whom to answer."""
        rid = next(self._ids)
        self.forwarded[rid] = (origin, origin_id, slot)
        slot.pending.add(rid)
        data = P.CONTROL_CODEC.encode(_with_id(msg, rid))
        try:
            send_frame(slot.ctrl, data, fds=[fd] if fd is not None else ())
        except OSError:
            self.forwarded.pop(rid, None)
            slot.pending.discard(rid)
            self._reply_error(origin, origin_id, "NotRunning", f"{slot.path} is not running",
                              state=slot.state)
        finally:
            if fd is not None:
                os.close(fd)


def _with_id(msg: Any, rid: int) -> Any:
    import msgspec

    return msgspec.structs.replace(msg, id=rid)
