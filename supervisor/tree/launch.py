"""Starting and stopping a child's process: the two launchers, chosen in one place.

    launcher_for(spec)
      ├── ProcessLauncher  a worker or a child supervisor: fork (the child shares our
      │                    imported code), a control channel, then its Ready
      └── ProgramLauncher  an external program: fork, its own process group, exec; whether
                           exec worked is read from a close-on-exec pipe

Starting is synchronous, as in OTP: the supervisor forks, then waits for the child's
`Ready` (or `StartFailed`, or EOF) before it does anything else. Stopping is synchronous
too: Stop message, SIGTERM at half the grace, SIGKILL when the grace runs out (a program:
its stop signal to the group, then SIGKILL to the group).
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from ..errors import ProtocolError
from ..runtime.log import prepare as prepare_log
from ..runtime.log import to_supervisor as log_to_supervisor
from ..runtime.process import WorkerPlan, plan, plan_key, serve  # imported before fork
from ..wire import messages as P
from ..wire.framing import recv_some, send_frame
from . import program
from .output import Capture
from .proc import describe_status, fork_child, kill_quietly, set_title
from .slot import ChildSlot, StartFailure

__all__ = ["ProcessLauncher", "ProgramLauncher", "launcher_for", "drain"]

OnMessage = Callable[[ChildSlot, Any], None]

_MAX_PLANS = 256  # worker plans a launcher keeps (see `ProcessLauncher.plan_for`)


class ProcessLauncher:
    """Workers and child supervisors. `run_supervisor(spec, path, sock, matrix)` runs a
    child supervisor in the forked child (the tree's composition root provides it)."""

    program = False

    def __init__(self, run_supervisor: Callable[[Any, str, socket.socket, Any], int]) -> None:
        self.run_supervisor = run_supervisor
        # Worker plans by `plan_key`, with the matrix each was made under (kept alive, so
        # its id in the key stays its own). See `plan_for`.
        self._plans: dict[tuple[Any, ...], tuple[Any, WorkerPlan]] = {}

    def fork(self, slot: ChildSlot, keep: list[int], capture: Capture | None,
             hold: bool = False) -> None:
        """Fork the child; `hold` (a worker only): it waits for `Begin` before its `init`."""
        spec, path, restarts, matrix = slot.spec, slot.path, slot.restarts, slot.matrix
        mine, theirs = socket.socketpair()
        keep.append(theirs.fileno())
        if spec.kind == "supervisor":
            def run() -> int:
                return self.run_supervisor(spec, path, theirs, matrix)
        else:
            worker_plan = self.plan_for(spec, matrix)
            prepare_log()  # once: the worker's log handler, added before fork

            def run() -> int:
                capture.in_child()
                return self.run_worker(spec, path, restarts, theirs, matrix, worker_plan,
                                       hold)
        try:
            pid = fork_child(run, keep)
        except OSError:
            mine.close()
            raise
        finally:
            theirs.close()
        slot.attach(pid, mine)

    @staticmethod
    def run_worker(spec: Any, path: str, restarts: int, ctrl: socket.socket, matrix: Any,
                   worker_plan: WorkerPlan | None, hold: bool = False) -> int:
        """A worker's life, in its forked process (a fresh fork or a standby) once its
        stdout and stderr are the supervisor's pipes; returns its exit code."""
        set_title(f"worker: {path}")
        if spec.env:
            os.environ.update(spec.env)  # the supervisor's environment, plus these
        log_to_supervisor()  # self.log records go up whole: one stamp, one level
        sys.stdout.reconfigure(line_buffering=True)  # a pipe: flush per line
        return serve(spec, path, restarts, ctrl, matrix, worker_plan, hold)

    def plan_for(self, spec: Any, matrix: Any) -> WorkerPlan | None:
        """The worker plan of `spec` under `matrix`, made once per class, matrix and call
        options (restarts and siblings of one class reuse it)."""
        key = plan_key(spec, matrix)
        cached = self._plans.get(key)
        if cached is not None and cached[0] is matrix:
            return cached[1]
        try:
            made = plan(spec, matrix)
        except Exception:  # noqa: BLE001 - the user's class, inspected: the child says why
            # A class whose attributes raise when read (a descriptor that fails on the
            # class): the child builds its plan itself and fails to start with the error,
            # as it did before plans were made here; the supervisor must not.
            return None
        if len(self._plans) >= _MAX_PLANS:
            self._plans.clear()  # dynamic children with matrices of their own: stay small
        self._plans[key] = (matrix, made)
        return made

    def await_start(self, slot: ChildSlot, on_message: OnMessage) -> StartFailure | None:
        return await_ready(slot, on_message)

    def stop(self, slot: ChildSlot, reason: str, on_message: OnMessage) -> int:
        """Stop the child per its `shutdown` and reap it; returns the wait status.

        Number: Stop message, SIGTERM after half the grace, SIGKILL when it runs out.
        ``brutal_kill``: SIGKILL at once. ``infinity``: Stop message, then wait.
        """
        shutdown = slot.spec.shutdown
        if shutdown == "brutal_kill":
            kill_quietly(slot.pid, signal.SIGKILL)
            return wait_exit(slot, None, on_message)
        try:
            send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Stop(reason=reason)))
        except (BrokenPipeError, ConnectionResetError, BlockingIOError):
            pass  # the child is already leaving; the wait below reaps it
        if shutdown == "infinity":
            return wait_exit(slot, None, on_message)
        start = time.monotonic()
        status = wait_exit(slot, start + shutdown / 2, on_message)
        if status is not None:
            return status
        kill_quietly(slot.pid, signal.SIGTERM)
        status = wait_exit(slot, start + shutdown, on_message)
        if status is not None:
            return status
        kill_quietly(slot.pid, signal.SIGKILL)
        return wait_exit(slot, None, on_message)

    def signal(self, slot: ChildSlot, signum: int) -> None:
        kill_quietly(slot.pid, signum)

    def reaped(self, slot: ChildSlot) -> None:
        """Its process was reaped (nothing of it to clean up here)."""


class ProgramLauncher:
    """External programs (`command = [...]`): see `program`."""

    program = True

    def __init__(self) -> None:
        self._exec_status: dict[int, int] = {}  # pid -> read end of its exec-status pipe

    def fork(self, slot: ChildSlot, keep: list[int], capture: Capture | None,
             hold: bool = False) -> None:
        status_r = program.spawn(slot, keep, capture)  # (never held: see Children.fork_ahead)
        self._exec_status[slot.pid] = status_r

    def await_start(self, slot: ChildSlot, on_message: OnMessage) -> StartFailure | None:
        return program.await_exec(slot, self._exec_status.pop(slot.pid))

    def stop(self, slot: ChildSlot, reason: str, on_message: OnMessage) -> int:
        return program.graceful(slot, lambda deadline: wait_exit(slot, deadline, on_message))

    def signal(self, slot: ChildSlot, signum: int) -> None:
        program.signal_group(slot, signum)  # the program and whatever it started

    def reaped(self, slot: ChildSlot) -> None:
        program.kill_group(slot.pid)  # what the program left behind in its process group


def launcher_for(spec: Any, processes: ProcessLauncher, programs: ProgramLauncher) -> Any:
    """The one place that tells a program from a worker or supervisor."""
    return programs if program.is_program(spec) else processes


# ------------------------------------------------------------------ the child's channel
def drain(slot: ChildSlot, on_message: OnMessage) -> bool:
    """Read what the child has sent so far; returns True at EOF.

    A frame that does not decode closes the channel: the child can no longer be trusted
    and is killed (its exit is then classified as a communication_error).
    """
    if slot.ctrl is None:
        return True
    while True:
        try:
            msgs, _, eof = recv_some(slot.ctrl, slot.reader)
        except ProtocolError as exc:
            slot.exit_msg = P.Exit(reason="protocol_error", category="communication_error",
                                   type="ProtocolError", message=str(exc))
            kill_quietly(slot.pid)
            return True
        except (ConnectionResetError, OSError):
            return True
        for msg in msgs:
            on_message(slot, msg)
        if eof:
            return True
        if not msgs:
            return False


def wait_exit(slot: ChildSlot, deadline: float | None, on_message: OnMessage) -> int | None:
    """Wait until the child exits or the deadline passes; returns its wait status or None.

    While waiting, messages from the child are read and handed on, so a child that is
    reporting (events, its Exit) never blocks on a full socket buffer.
    """
    # PollSelector needs no fd of its own: stopping children must work when we are out
    # of descriptors (an epoll selector would fail to open with EMFILE right then).
    sel = selectors.PollSelector()
    eof = slot.ctrl is None  # a program has no channel whose EOF could wake us
    try:
        if slot.pidfd is not None:
            sel.register(slot.pidfd, selectors.EVENT_READ)
        if slot.ctrl is not None:
            slot.ctrl.setblocking(False)
            sel.register(slot.ctrl, selectors.EVENT_READ)
        while True:
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid:
                return status
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            if slot.pidfd is None and eof:
                # No pidfd on this platform and the channel is at EOF: the process is on
                # its way out; re-check its status in short steps until it is reapable.
                remaining = 0.01 if remaining is None else min(remaining, 0.01)
            for key, _ in sel.select(remaining):
                if key.fileobj is slot.ctrl and not eof:
                    eof = drain(slot, on_message)
                    if eof:
                        sel.unregister(slot.ctrl)
    finally:
        sel.close()


def await_ready(slot: ChildSlot, on_message: OnMessage) -> StartFailure | None:
    """Block until the freshly forked child reports Ready; None on success.

    Events the child forwards while it starts (a nested supervisor's children starting)
    are handed to `on_message`. EOF before Ready means the child died while starting: its
    StartFailed says why (`init` raised: initialization_error), else it was killed or left
    on its own (connection_error).
    """
    assert slot.ctrl is not None and slot.reader is not None
    slot.ctrl.setblocking(True)
    failure: StartFailure | None = None
    while True:
        try:
            msgs, _, eof = recv_some(slot.ctrl, slot.reader)
        except ProtocolError as exc:
            kill_quietly(slot.pid)
            os.waitpid(slot.pid, 0)
            return StartFailure(slot.path, "communication_error", "ProtocolError", str(exc))
        for index, msg in enumerate(msgs):
            match msg:
                case P.Ready():
                    slot.ctrl.setblocking(False)
                    slot.node = (msg.node_ip, msg.node_id) if msg.node_ip else None
                    # Frames read with the Ready are the running child's: a worker whose
                    # run() raises at once sends its Exit right behind it.
                    for later in msgs[index + 1:]:
                        on_message(slot, later)
                    return None
                case P.StartFailed():
                    failure = StartFailure(msg.path, msg.category, msg.type, msg.message,
                                           msg.traceback)
                case _:
                    on_message(slot, msg)
        if eof:
            _, status = os.waitpid(slot.pid, 0)
            if failure is None:
                # No StartFailed: `init` did not raise. The process was killed or left
                # before Ready (a SIGKILL during a restart's init, the OOM killer): the
                # world's doing, a connection_error, counted like any other death of it.
                failure = StartFailure(slot.path, "connection_error", "ChildExited",
                                       f"exited before it was ready ({describe_status(status)})")
            return failure
