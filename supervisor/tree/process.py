"""A supervisor process: OTP's supervisor behaviour over real processes, plus the matrix.

    parent (App or supervisor)
        │ control: Stop, requests (+fds) ▼      ▲ Ready | StartFailed, Response, Event, Exit
    SupervisorProcess  ── one selector loop: parent channel, child channels, pidfds, signals
        │ fork per child (launch.py)
        ├── worker      (`runtime.process.serve`)
        ├── supervisor  (another SupervisorProcess)
        └── program     (fork + exec)

This module is the composition root: it builds the small objects a supervisor is made of
and hands each what it needs.

    Loop        the selector loop, its timers and signals            (loop.py)
    Uplink      what goes up: to the parent, or to a requester        (uplink.py)
    Children    the ordered slots; start, stop, reap, forward         (children.py)
    Monitors    heartbeats and memory limits                          (health.py)
    Recovery    what an exit leads to: the matrix's steps, intensity  (recovery.py)
    Requests    what a requester asks: OTP's child-management calls  (requests.py)
    Reconfigure a reload: the new spec applied step by step           (reconfigure.py)

Children start in list order, each waiting for the previous one's Ready; they stop in
reverse order. A child's exit is noticed through its pidfd (or SIGCHLD) and handled step
by step:

  1. the restart type says whether it is restarted at all (OTP's do_restart);
  2. a restart counts toward intensity when it is decided; past intensity the supervisor
     stops its children and exits with reason ``shutdown`` and its parent decides;
  3. for a failure (not a clean exit), the error matrix gives the step for the child's
     consecutive-failure count: restart after the row's delay (a loop timer, never a
     sleep), open the child's circuit, or abandon the child (it stays down; its siblings
     run on; with every child abandoned the supervisor exits ``children_abandoned``), or,
     for a row with ``on_exhausted="escalate"``, give up (``escalated:<category>``).

A restart that fails to start is itself a failure of that child and goes through the same
steps from the loop (OTP's try_again), so requests and other children's events are handled
in between. Supervisors carry control traffic only: a call channel (one end of a
socketpair) travels down the tree with `OpenChannel` and is handed to the worker.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
from collections.abc import Callable
from typing import Any

from loguru import logger

from strategies.matrix import DEFAULT_MATRIX

from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some
from .children import Children, child_matrix
from .health import Monitors
from .launch import ProcessLauncher
from .logsink import stderr_sink
from .loop import Loop
from .proc import raise_fd_limit, set_subreaper, set_title
from .rayhead import LocalRay
from .reconfigure import Reconfigure
from .recovery import Recovery
from .requests import Requests
from .slot import ChildSlot, StartFailure
from .uplink import Uplink

__all__ = ["SupervisorProcess"]

# How the supervisor ended -> its exit code. Its parent always sees reason "shutdown" (as in
# OTP) with this detail in Exit.message; the root's App reports the detail from wait(). A
# supervisor that gave up ("reached_max_restart_intensity", "children_abandoned",
# "escalated:<category>") exits 1.
EXIT_CODES = {"normal": 0, "shutdown": 0, "auto_shutdown": 0}


def _run_child_supervisor(spec: Any, path: str, sock: socket.socket, matrix: Any) -> int:
    # Runs in a forked child: a supervisor below us.
    return SupervisorProcess(spec, path, sock, matrix=matrix).main()


class SupervisorProcess:
    """One supervisor process: `spec` at `path`, talking to its parent over `parent` (None
    for the root of `python -m supervisor run`, which talks through `uplink.deliver`)."""

    def __init__(self, spec: Any, path: str, parent: socket.socket | None, *,
                 root: bool = False, matrix: Any = None) -> None:
        # The root of a tree with Ray children and no cluster named runs a local head.
        self.local_ray = LocalRay() if root else None
        if self.local_ray is not None:
            spec = self.local_ray.apply(spec)
        self.spec = spec
        self.path = path
        self.parent = parent
        self.parent_reader = FrameReader(P.CONTROL_CODEC)
        self.root = root
        if spec.ray_address is not None:  # inherited by the Ray bridges forked below us
            os.environ["RAY_ADDRESS"] = spec.ray_address
        self.exit_detail: str | None = None
        # Called with the exit detail when the supervisor starts stopping (the service
        # root tells systemd); before any child is stopped.
        self.on_stopping: list[Callable[[str], None]] = []
        # What SIGHUP does at the service root: `service.reload` makes it a reload.
        self.on_hangup: Callable[[], None] = self._hangup
        self.loop = Loop(on_error=self._handler_failed)
        self.uplink = Uplink(path, parent)
        self.monitors = Monitors(self.loop, self.uplink)
        self.children = Children(path, child_matrix(matrix or DEFAULT_MATRIX, spec),
                                 self.loop, self.uplink, self.monitors,
                                 ProcessLauncher(_run_child_supervisor))
        self.recovery = Recovery(spec, self.children, self.uplink, self.loop, self.shutdown,
                                 root=root)
        self.children.on_exit = self.recovery.handle_exit
        self.requests = Requests(spec, path, self.children, self.uplink, self.recovery,
                                 self.monitors, self.shutdown)
        self.reconfigure = Reconfigure(path, self.children, self.recovery, self.uplink,
                                       adopt=self.adopt, current=lambda: self.spec)
        for child_spec in spec.children:
            self.children.add(self.children.new_slot(child_spec))

    # ----------------------------------------------------------------------- lifecycle
    def main(self) -> int:
        """Start the children, serve until told to stop or giving up; the exit code."""
        set_title(f"supervisor: {self.path or self.spec.id}")
        # Our log never waits for whoever reads stderr: a stuck reader would stop the
        # loop (no reaping, no restarts, no answers). The loop writes what fd 2 did not take.
        sink = stderr_sink()
        sink.attach(self.loop)
        try:
            return self._serve()
        finally:
            sink.detach()
            if self.local_ray is not None:
                self.local_ray.close()

    def _serve(self) -> int:
        set_subreaper()
        raise_fd_limit()  # 1,000 children need ~4,000 fds: ctrl, pidfd, two output pipes
        self.loop.add_signal(signal.SIGCHLD, lambda _: self.children.reap())
        self.loop.add_signal(signal.SIGTERM, lambda _: self.shutdown("normal"))
        if self.parent is None:  # the service root: Ctrl-C is a graceful stop
            self.loop.add_signal(signal.SIGINT, lambda _: self.shutdown("normal"))
            self.loop.add_signal(signal.SIGHUP, lambda _: self.on_hangup())
        else:
            self.parent.setblocking(True)
        gc.freeze()  # forked children share our heap without copy-on-write faults at GC
        failure = self._start_all()
        if failure is not None:
            # The last lines the failed child wrote are what its user needs most.
            self.children.close_captures()
            self.uplink.send(P.StartFailed(path=failure.path, category=failure.category,
                                           type=failure.type, message=failure.message,
                                           traceback=failure.traceback))
            return 1
        self.uplink.send(P.Ready(pid=os.getpid()))
        if self.parent is not None:
            self.loop.add_reader(self.parent, self._on_parent)
        if self.exit_detail is None:
            self.loop.run()
        detail = self.exit_detail or "normal"
        self.children.close_captures()
        self.uplink.send(P.Exit(reason="shutdown", message=detail))
        return EXIT_CODES.get(detail, 1)

    def _start_all(self) -> StartFailure | None:
        """Start the children in order, each `init` returning before the next one's
        starts (OTP). Pipelined: the next worker is forked while the one before runs its
        `init` and waits for its turn, so a fork and a child's setup (closing what it
        inherited, its logging) overlap an `init` instead of adding to it."""
        started: list[ChildSlot] = []
        # declared, stopped, until `restart_child` (`start PATH`)
        slots = [s for s in self.children.slots if getattr(s.spec, "autostart", True)]
        ahead: ChildSlot | None = None  # forked, waiting for its turn
        for index, slot in enumerate(slots):
            if ahead is slot:
                self.children.begin(slot)
                failure = None
            else:
                failure = self.children.launch(slot)
            ahead = None
            if failure is None:
                if index + 1 < len(slots) and self.children.fork_ahead(slots[index + 1]):
                    ahead = slots[index + 1]
                failure = self.children.finish_start(slot)
            if failure is not None:
                if ahead is not None:
                    self.children.discard(ahead)
                for done in reversed(started):
                    self.children.stop(done, "shutdown")
                return failure
            started.append(slot)
        return None

    def _hangup(self) -> None:
        # A root with no file to read again (the service root replaces this with a
        # reload): SIGHUP's default action would kill it abruptly, so it is ignored.
        logger.warning("SIGHUP: this tree has no file to reload; ignored")

    def adopt(self, spec: Any, matrix: Any) -> None:
        """A reload: `spec` (same id and kind) is this supervisor's spec from now on. Its
        strategy, intensity limits (the restarts already counted stay counted, as in
        OTP), template and error matrix (over the base `matrix`) take effect at once."""
        self.spec = self.requests.spec = self.recovery.spec = spec
        self.recovery.intensity.max_restarts = spec.max_restarts
        self.recovery.intensity.max_seconds = float(spec.max_seconds)
        self.children.matrix = child_matrix(matrix, spec)

    def shutdown(self, detail: str) -> None:
        """Stop every child in reverse start order, then leave the loop."""
        if self.exit_detail is not None:
            return
        self.exit_detail = detail
        for hook in self.on_stopping:
            hook(detail)
        self.children.stop_all()
        self.loop.stop()

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
            self.request(msg, self.parent, fd)
        for fd in fds:
            os.close(fd)
        if eof:
            self.loop.remove_reader(self.parent)
            self.shutdown("normal" if self.root else "shutdown")

    def request(self, msg: Any, origin: socket.socket, fd: int | None) -> None:
        """Answer one request from the parent or a control client (the one entry point,
        guarded: a handler that raises is a bug answered with an error)."""
        if isinstance(msg, P.OpenChannel) and fd is None:
            # Its fd did not arrive: the kernel could not install it here (EMFILE).
            self.uplink.reply_error(origin, msg.id, "WorkerError", "out of file descriptors: "
                                    "the channel's socket could not be received",
                                    category="resource_error", path=msg.path)
            return
        try:
            match msg:
                case P.ApplySpec() if self.parent is None or origin is not self.parent:
                    # Only a parent reconfigures its child: a control client's spec would
                    # bypass the file (and its bytes are unpickled).
                    self.uplink.reply_error(origin, msg.id, "ConfigError", "ApplySpec comes "
                                            "only from a supervisor's parent; use reload",
                                            field="spec")
                case P.ApplySpec():
                    self.reconfigure.handle(msg, origin)
                case P.Reload():
                    # The service root's control server answers these itself.
                    self.uplink.reply_error(origin, msg.id, "ConfigError", "reload needs a "
                                            "tree run from a file (python -m supervisor run "
                                            "TREE.toml); this one was started from Python",
                                            field="reload")
                case _:
                    self.requests.handle(msg, origin, fd)
        except Exception as exc:
            # A bug, not a refusal (those are answered by the handlers): the requester gets
            # a classified error and the loop goes on serving everyone else.
            self._report_bug(exc, f"the request {type(msg).__name__}")
            rid = getattr(msg, "id", None)
            if rid is not None:
                where = self.path or "the root"
                self.uplink.reply_error(origin, rid, "WorkerError",
                                        f"supervisor {where!r} failed to handle "
                                        f"{type(msg).__name__}: {type(exc).__name__}: {exc}",
                                        category="system_error", path=self.path,
                                        remote_type=type(exc).__name__,
                                        remote_message=str(exc))

    def _handler_failed(self, exc: Exception, callback: Any) -> None:
        """An event handler of the loop raised: report the bug; the loop goes on."""
        self._report_bug(exc, f"the event handler {getattr(callback, '__qualname__', callback)}")

    def _report_bug(self, exc: Exception, what: str) -> None:
        logger.opt(exception=exc).error(
            "supervisor {!r}: bug: {} raised {}: {}; the supervisor keeps running",
            self.path or self.spec.id, what, type(exc).__name__, exc)
