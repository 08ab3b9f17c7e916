"""The runtime record of one child: its state, its process while it has one, its history.

A `ChildSlot` sits beside its frozen spec (OTP keeps the spec and the running child in one
record; so do we). The fields that exist only while the child runs are None otherwise:

    pid, ctrl, reader, pidfd    set from fork until the exit is reaped
    started_at, ran_since       set once the child reported Ready (a program: exec'd)
    settling                    a program within its `start_seconds`: running, not up yet

Its state moves only through `become`, along `TRANSITIONS`:

    stopped ──▶ starting ──▶ running ──▶ stopping ──▶ stopped       (a start, a stop)
                   │            │
                   ▼            ▼ exited (reaped, decision pending)
                stopped     restarting ──▶ starting | stopped | circuit_open | abandoned
                               ▲                                  │             │
                               └──────────────── starting ◀───────┘             │
                                       (the half-open trial; from abandoned, ◀──┘
                                        only an operator's restart_child / start)

The circuit is not a second state: it is open while the state is `circuit_open`, half
open while a trial start of that circuit runs (`trial`), closed otherwise. An abandoned
child stays down for good: the matrix gave up on it (not on its siblings).
"""

from __future__ import annotations

import enum
import os
import socket
import time
from typing import Any

import attrs

from ..wire import messages as P
from ..wire.framing import FrameReader
from .proc import describe_status, exit_reason, pidfd_open

__all__ = ["ChildSlot", "ChildState", "StartFailure", "reason_of", "TRANSITIONS"]


class ChildState(enum.StrEnum):
    STOPPED = "stopped"  # no process, none planned (not started yet, stopped, exited for good)
    STARTING = "starting"  # forked, its Ready not in yet
    RUNNING = "running"  # Ready arrived
    STOPPING = "stopping"  # asked to stop; waiting for its exit
    RESTARTING = "restarting"  # exited; a restart is decided or scheduled
    CIRCUIT_OPEN = "circuit_open"  # down until its circuit's half-open trial
    ABANDONED = "abandoned"  # the matrix gave up on it: down until an operator starts it


S = ChildState
TRANSITIONS: dict[ChildState, frozenset[ChildState]] = {
    S.STOPPED: frozenset({S.STARTING, S.RESTARTING, S.CIRCUIT_OPEN, S.ABANDONED}),
    S.STARTING: frozenset({S.RUNNING, S.STOPPED}),
    S.RUNNING: frozenset({S.STOPPING, S.RESTARTING}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.RESTARTING: frozenset({S.STARTING, S.STOPPED, S.CIRCUIT_OPEN, S.ABANDONED}),
    S.CIRCUIT_OPEN: frozenset({S.STARTING, S.STOPPED}),
    S.ABANDONED: frozenset({S.STARTING, S.STOPPED}),
}
"""The moves a child's state may make (staying put is always allowed). A stopped child
becomes `restarting`, `circuit_open` or `abandoned` when its restart failed to start."""


class InvalidTransition(RuntimeError):
    """A bug: a child's state was asked to make a move `TRANSITIONS` does not allow."""


@attrs.define(eq=False)
class ChildSlot:
    spec: Any
    path: str
    # This child's error matrix: defaults, then its ancestors' overrides, then its own. No
    # default on purpose: a slot built without one (a dynamic child once was) fails at its
    # first failure, inside the supervisor's loop. `Children.new_slot` builds every slot,
    # static and dynamic alike.
    matrix: Any
    launcher: Any  # how its process is started and stopped (`launch.launcher_for`)
    state: ChildState = ChildState.STOPPED
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
    trial: bool = False  # a half-open trial of its circuit runs (the circuit is half open)
    retry_at: float | None = None  # wall clock of the next half-open trial, while open
    # A failure the supervisor itself saw or caused (heartbeat missed, memory limit, a
    # caller's timeout): (category, reason). It names the exit when the process is reaped.
    pending_failure: tuple[str, str] | None = None
    timers: list[Any] = attrs.field(factory=list)  # cancelled when the process is released
    restart_timer: Any = None  # a scheduled restart or circuit trial (no process exists)
    ping_seq: int | None = None  # the heartbeat awaiting its Pong, if any
    # A program within its `start_seconds` after exec: running, but not up yet (its
    # `started` is reported when that time has passed; an exit before is a start failure).
    settling: bool = False
    # Why the matrix gave up on it: (category of that failure, a line for people). Set
    # exactly while the state is `abandoned`.
    abandoned: tuple[str, str] | None = None
    # (node IP, Ray node id) of a backend="ray" child's actor: set from its Ready, None
    # for a local child and whenever no process exists.
    node: tuple[str, str] | None = None

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def kind(self) -> str:
        return self.spec.kind

    @property
    def circuit(self) -> str:
        """"open", "half_open" or "closed", from the state and the trial flag."""
        if self.state is ChildState.CIRCUIT_OPEN:
            return "open"
        return "half_open" if self.trial else "closed"

    def become(self, state: ChildState) -> None:
        """Move to `state`; raises InvalidTransition (a bug) for a move not allowed."""
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise InvalidTransition(f"{self.path}: {self.state} -> {state} is not a "
                                    "move a child's state makes")
        self.state = state

    def abandon(self, category: str, why: str) -> None:
        """The matrix gave up on this child (not on its siblings): it stays down."""
        self.become(ChildState.ABANDONED)
        self.abandoned = (category, why)

    def revive(self) -> None:
        """An operator starts it again (restart_child, `start`): a fresh failure count."""
        self.abandoned = None
        self.failures = 0

    def close_circuit(self) -> None:
        """The circuit is closed (an operator's stop or start, or a stable trial)."""
        self.trial = False
        self.retry_at = None

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
        self.pid = self.ctrl = self.reader = self.pidfd = self.node = None
        self.started_at = self.ran_since = None

    def info(self) -> P.ChildInfo:
        running = self.state is ChildState.RUNNING
        return P.ChildInfo(id=self.id, pid=self.pid if running else None,
                           kind=self.kind, state=str(self.state), restarts=self.restarts,
                           path=self.path, started_at=self.started_at, circuit=self.circuit,
                           retry_at=self.retry_at,
                           reason=self.abandoned[1] if self.abandoned else None,
                           node_ip=self.node[0] if running and self.node else None,
                           node_id=self.node[1] if running and self.node else None)


@attrs.frozen
class StartFailure:
    path: str
    category: str
    type: str
    message: str
    traceback: str = ""


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
