"""The runtime record of one child, and the mechanics of starting and stopping it.

A `ChildSlot` sits beside its frozen spec (OTP keeps the spec and the running child in one
record; so do we). The fields that exist only while the child runs are None otherwise:

    pid, ctrl, reader, pidfd    set from fork until the exit is reaped
    started_at                  set once the child reported Ready

Starting is synchronous, as in OTP: the supervisor forks, then waits for the child's
`Ready` (or `StartFailed`, or EOF) before it does anything else. Stopping is synchronous
too: Stop message, SIGTERM at half the grace, SIGKILL when the grace runs out.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs

from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from .proc import describe_status, exit_reason, kill_quietly, pidfd_open

__all__ = ["ChildSlot", "StartFailure", "await_ready", "stop_process", "drain"]


@attrs.define(eq=False)
class ChildSlot:
    spec: Any
    path: str
    # This child's error matrix: defaults, then its ancestors' overrides, then its own. No
    # default on purpose: a slot built without one (a dynamic child once was) fails at its
    # first failure, inside the supervisor's loop. `SupervisorProcess.new_slot` builds every
    # slot, static and dynamic alike.
    matrix: Any
    state: str = "stopped"  # starting | running | stopping | restarting | stopped | circuit_open
    restarts: int = 0
    pid: int | None = None  # None unless a process exists (running, starting, stopping)
    ctrl: socket.socket | None = None  # None unless pid is set; always None for a program
    reader: FrameReader | None = None
    pidfd: int | None = None
    started_at: float | None = None  # wall clock, set once Ready arrived
    ran_since: float | None = None  # monotonic, set once Ready arrived
    last_run: float = 0.0  # seconds the last process ran after Ready (set when released)
    exit_msg: Any = None  # the last Exit report from the running process
    pending: set[int] = attrs.field(factory=set)  # request ids forwarded to it
    failures: int = 0  # consecutive failures; reset after `stable_after` s of running
    circuit: str = "closed"  # closed | open | half_open
    retry_at: float | None = None  # wall clock of the next half-open trial, while open
    # A failure the supervisor itself saw or caused (heartbeat missed, memory limit, a
    # caller's timeout): (category, reason). It names the exit when the process is reaped.
    pending_failure: tuple[str, str] | None = None
    timers: list[Any] = attrs.field(factory=list)  # cancelled when the process is released
    restart_timer: Any = None  # a scheduled restart or circuit trial (no process exists)
    ping_seq: int | None = None  # the heartbeat awaiting its Pong, if any

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    def attach(self, pid: int, ctrl: socket.socket | None) -> None:
        """A process exists now; `ctrl` is None for an external program."""
        self.pid = pid
        self.ctrl = ctrl
        self.reader = FrameReader(P.CONTROL_CODEC) if ctrl is not None else None
        self.pidfd = pidfd_open(pid)
        self.exit_msg = None
        self.pending_failure = None

    def cancel_timers(self) -> None:
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        if self.restart_timer is not None:
            self.restart_timer.cancel()
            self.restart_timer = None

    def release(self) -> None:
        """Forget the process (after it was reaped): close its fds, cancel its timers."""
        if self.ctrl is not None:
            self.ctrl.close()
        if self.pidfd is not None:
            os.close(self.pidfd)
        for timer in self.timers:
            timer.cancel()
        self.timers.clear()
        self.last_run = time.monotonic() - self.ran_since if self.ran_since is not None else 0.0
        self.pid = self.ctrl = self.reader = self.pidfd = None
        self.started_at = self.ran_since = None

    def info(self) -> P.ChildInfo:
        return P.ChildInfo(id=self.id, pid=self.pid if self.state == "running" else None,
                           kind=self.kind, state=self.state, restarts=self.restarts,
                           path=self.path, started_at=self.started_at, circuit=self.circuit,
                           retry_at=self.retry_at)


@attrs.frozen
class StartFailure:
    path: str
    category: str
    type: str
    message: str
    traceback: str = ""


def drain(slot: ChildSlot, on_message: Callable[[ChildSlot, Any], None]) -> bool:
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


def _wait(slot: ChildSlot, deadline: float | None,
          on_message: Callable[[ChildSlot, Any], None]) -> int | None:
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


def stop_process(slot: ChildSlot, reason: str,
                 on_message: Callable[[ChildSlot, Any], None]) -> int:
    """Stop the child per its `shutdown` and reap it; returns the wait status.

    Number: Stop message, SIGTERM after half the grace, SIGKILL when it runs out.
    ``brutal_kill``: SIGKILL at once. ``infinity``: Stop message, then wait.
    """
    if slot.ctrl is None:  # an external program: signals to its process group
        from .program import graceful

        return graceful(slot, lambda deadline: _wait(slot, deadline, on_message))
    shutdown = slot.spec.shutdown
    if shutdown == "brutal_kill":
        kill_quietly(slot.pid, signal.SIGKILL)
        return _wait(slot, None, on_message)
    try:
        send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Stop(reason=reason)))
    except (BrokenPipeError, ConnectionResetError, BlockingIOError):
        pass  # the child is already leaving; the wait below reaps it
    if shutdown == "infinity":
        return _wait(slot, None, on_message)
    start = time.monotonic()
    status = _wait(slot, start + shutdown / 2, on_message)
    if status is not None:
        return status
    kill_quietly(slot.pid, signal.SIGTERM)
    status = _wait(slot, start + shutdown, on_message)
    if status is not None:
        return status
    kill_quietly(slot.pid, signal.SIGKILL)
    return _wait(slot, None, on_message)


def await_ready(slot: ChildSlot, on_message: Callable[[ChildSlot, Any], None]
                ) -> StartFailure | None:
    """Block until the freshly forked child reports Ready; None on success.

    Events the child forwards while it starts (a nested supervisor's children starting)
    are handed to `on_message`. EOF before Ready means the child died while starting.
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
                failure = StartFailure(slot.path, "initialization_error", "ChildExited",
                                       f"exited before it was ready ({describe_status(status)})")
            return failure


def reason_of(slot: ChildSlot, status: int) -> tuple[str, str | None, str]:
    """(exit reason, category or None, human detail) for a reaped child."""
    msg = slot.exit_msg
    if msg is not None:
        detail = msg.message or msg.reason
        if msg.type:
            detail = f"{msg.type}: {msg.message}"
        return msg.reason, msg.category, detail
    reason = exit_reason(status)
    return reason, None if reason == "normal" else "connection_error", describe_status(status)
