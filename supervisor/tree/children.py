"""The children of one supervisor: their ordered slots, and their processes' lives.

    new_slot(spec)  the one builder of a child's record, static or dynamic alike
    start(slot)     fork through the child's launcher, wait for its Ready (synchronous,
                    as in OTP), then watch its control channel and pidfd
                    (a program is up once it has run its `start_seconds`: `on_up`)
    stop(slot)      per its `shutdown`, reaped before this returns
    replace(slot)   a fresh process first, then the old one stopped (a rolling restart)
    reap()          every child that exited: released, reported, then handed to
                    `on_exit` (the supervisor's recovery) once the whole pass is recorded
    forward(...)    a request for a descendant or a worker, sent down its channel; the
                    answer comes back through `on_message` and is relayed to the requester
    standby         once a worker was restarted, the next worker process, forked ahead:
                    a restart of a worker is handed to it instead of forking (standby.py)

Messages from a child (`on_message`): its Exit report, a heartbeat's Pong (to the
monitors), an answer to a forwarded request, a telemetry Event (passed up).
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from strategies.matrix import override_matrix

from ..wire import messages as P
from ..wire.framing import send_frame
from .childlog import ChildLogs
from .health import Monitors
from .launch import ProcessLauncher, ProgramLauncher, drain, launcher_for
from .loop import Loop
from .output import Capture
from .proc import kill_quietly, kill_strays
from .slot import ChildSlot, ChildState, StartFailure, reason_of
from .standby import Standby
from .uplink import Uplink

__all__ = ["Children", "join", "child_matrix"]


def join(path: str, child_id: str) -> str:
    return f"{path}/{child_id}" if path else child_id


def child_matrix(base: Any, spec: Any) -> Any:
    errors = getattr(spec, "errors", None)
    return override_matrix(base, errors) if errors else base


class Children:
    """The slots of the supervisor at `path`, in start order. `matrix` is the supervisor's
    own error matrix (its children's base). `on_exit(slot, reason, category, recycled,
    detail)` is called for each child that exited while the supervisor is not closing
    (`detail` says how, for people: ``killed by SIGKILL``, ``RuntimeError: ...``)."""

    def __init__(self, path: str, matrix: Any, loop: Loop, uplink: Uplink,
                 monitors: Monitors, processes: ProcessLauncher) -> None:
        self.path = path
        self.matrix = matrix
        self.loop = loop
        self.uplink = uplink
        self.monitors = monitors
        self.processes = processes
        self.programs = ProgramLauncher()
        self.slots: list[ChildSlot] = []
        self.on_exit: Callable[[ChildSlot, str, str | None, bool, str], None] = _no_decision
        # Called when a program that was settling (see `start`) is up.
        self.on_up: Callable[[ChildSlot], None] = lambda slot: None
        self.closing = False  # set once the supervisor stops: exits are no longer decided
        self.captures: set[Capture] = set()  # children's output pipes, read until EOF
        self.logs = ChildLogs(loop)  # what is kept of their output: files, tails
        self.forwarded: dict[int, tuple[socket.socket, int, ChildSlot]] = {}
        self._ids = itertools.count(1)
        self._scan_due = False  # a scan for orphans is scheduled (see `_forget`)
        # The next worker process, forked ahead once a worker was restarted (standby.py).
        self.standby = Standby(path, loop, lambda: self.slots, processes, self.reap)

    # ------------------------------------------------------------------ the slots
    def new_slot(self, spec: Any) -> ChildSlot:
        """The runtime record of a child: the one builder for static and dynamic children
        alike, so the two cannot differ (its path, its error matrix, its launcher)."""
        return ChildSlot(spec=spec, path=join(self.path, spec.id),
                         matrix=child_matrix(self.matrix, spec),
                         launcher=launcher_for(spec, self.processes, self.programs))

    def add(self, slot: ChildSlot) -> None:
        self.slots.append(slot)

    def remove(self, slot: ChildSlot) -> None:
        self.slots.remove(slot)
        self.logs.forget(slot.path)

    def find(self, child_id: str) -> ChildSlot | None:
        for slot in self.slots:
            if slot.id == child_id:
                return slot
        return None

    def running_pids(self) -> Iterable[int]:
        return (s.pid for s in self.slots if s.pid is not None)

    def own_pids(self) -> set[int]:
        """The children's processes and the standby's: what is ours, not an orphan."""
        pids = set(self.running_pids())
        if self.standby.pid is not None:
            pids.add(self.standby.pid)
        return pids

    # ------------------------------------------------------------------ start and stop
    def start(self, slot: ChildSlot) -> StartFailure | None:
        """Fork the child and wait for it to be ready; on failure it is reaped.

        A worker or supervisor is up once its Ready arrived. A program is up once it has run
        `start_seconds` after exec (supervisord's startsecs): until then `slot.settling`
        is set and the loop is not held up; `started` is reported (and `on_up` called) when
        that time has passed, and an exit before it is a start failure (`_record_exit`)."""
        return self.launch(slot) or self.finish_start(slot)

    def launch(self, slot: ChildSlot) -> StartFailure | None:
        """The first half of `start`: fork (a failure to fork is returned)."""
        slot.become(ChildState.STARTING)
        try:
            self._fork(slot)
        except OSError as exc:
            # Out of fds or processes (EMFILE, EAGAIN): a resource_error of this child,
            # never a crash of the supervisor.
            return self._start_failed(slot, StartFailure(
                slot.path, "resource_error", type(exc).__name__,
                f"cannot start the process: {exc}"))
        return None

    # A pipelined start (`SupervisorProcess` starting its children): the next worker is
    # forked while the one before it runs `init`, and waits; `begin` lets it run its own
    # `init` once the one before is ready, so inits still run one at a time, in order.
    def fork_ahead(self, slot: ChildSlot) -> bool:
        """Fork worker `slot` to wait before its `init`; False (nothing forked) if it is
        not a worker or cannot be forked now (its own start will then say why)."""
        if slot.kind != "worker" or slot.launcher is not self.processes:
            return False
        slot.become(ChildState.STARTING)
        try:
            self._fork(slot, hold=True)
        except OSError:
            slot.become(ChildState.STOPPED)
            return False
        return True

    def begin(self, slot: ChildSlot) -> None:
        """Let a worker forked ahead run its `init` (`finish_start` waits for it)."""
        try:
            send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Begin()))
        except OSError:  # it died waiting: its start fails with its exit
            pass

    def discard(self, slot: ChildSlot) -> None:
        """A worker forked ahead whose turn does not come (a sibling's start failed): it
        never ran `init`, so it is killed, reaped and forgotten without a word."""
        kill_quietly(slot.pid)
        os.waitpid(slot.pid, 0)
        slot.release()
        slot.become(ChildState.STOPPED)

    def finish_start(self, slot: ChildSlot) -> StartFailure | None:
        """The second half of `start`: wait for the forked child to be up."""
        failure = slot.launcher.await_start(slot, self.on_message)
        if failure is not None:
            return self._start_failed(slot, failure)
        slot.become(ChildState.RUNNING)
        slot.started_at = time.time()
        slot.ran_since = time.monotonic()
        if slot.ctrl is not None:
            self.loop.add_reader(slot.ctrl, lambda: self._on_channel(slot))
        if slot.pidfd is not None:
            self.loop.add_reader(slot.pidfd, self.reap)
        self.monitors.start(slot)
        settle = getattr(slot.spec, "start_seconds", 0.0) if slot.launcher.program else 0.0
        if settle > 0:
            slot.settling = True
            pid = slot.pid
            slot.timers.append(self.loop.call_later(settle, lambda: self._settled(slot, pid)))
            return None
        self.uplink.emit("started", slot)
        return None

    def _settled(self, slot: ChildSlot, pid: int | None) -> None:
        # The timer is cancelled when the process is released; the pid check guards a
        # replacement started since.
        if slot.pid != pid or not slot.settling:
            return
        slot.settling = False
        self.uplink.emit("started", slot)
        self.on_up(slot)

    def _start_failed(self, slot: ChildSlot, failure: StartFailure) -> StartFailure:
        slot.release()
        slot.become(ChildState.STOPPED)
        self.uplink.emit("start_failed", slot, reason=failure.type, category=failure.category,
                         message=failure.message)
        return failure

    def _fork(self, slot: ChildSlot, hold: bool = False) -> None:
        # Workers' and programs' output is captured; a child supervisor's own log lines
        # go straight to our stderr (capturing them would wrap every line twice).
        capture = Capture(slot.path, self.logs.get(slot.path)) if slot.kind == "worker" \
            else None
        keep = capture.child_fds() if capture is not None else []
        try:
            # A restart of a worker goes to the standby when one fits (see standby.py).
            if hold or not self.standby.hand_over(slot, capture):
                slot.launcher.fork(slot, keep, capture, hold)
        except OSError:
            if capture is not None:
                capture.discard()
            raise
        if capture is not None:
            # Forgotten once both its pipes are finished (not by a scan of every child's
            # capture at each fork: that made starting n children cost n^2).
            capture.in_parent(self.loop, self.captures.discard)
            self.captures.add(capture)

    def stop(self, slot: ChildSlot, reason: str, scan: bool = True) -> None:
        """Stop a child per its shutdown spec (if it runs); it is never restarted for this."""
        if slot.pid is None:
            # A child whose circuit is open stays down and keeps its trial timer, and an
            # abandoned one stays abandoned: a bystander stop does not touch them. Any
            # other scheduled restart is void now.
            if slot.state not in (ChildState.CIRCUIT_OPEN, ChildState.ABANDONED):
                if slot.restart_timer is not None:
                    slot.restart_timer.cancel()
                    slot.restart_timer = None
                slot.become(ChildState.STOPPED)
            return
        slot.become(ChildState.STOPPING)
        self._unwatch(slot)
        slot.settling = False
        status = slot.launcher.stop(slot, reason, self.on_message)
        why, _, detail = reason_of(slot, status)
        pid = slot.pid
        self._forget(slot, scan)
        slot.become(ChildState.STOPPED)
        self.uplink.emit("exited", slot, pid=pid, reason=why if slot.exit_msg else "shutdown",
                         category=None, detail=detail)

    def replace(self, slot: ChildSlot) -> StartFailure | None:
        """A rolling restart's step for a running worker: a fresh process of its spec is
        started (and ready) while the old one still serves; the fresh one takes the old
        one's place in the child list (new requests and channels go to it), then the old
        one is stopped with reason ``replaced``: it tells its callers it is leaving,
        answers what they sent meanwhile NotRun (they send it to a live worker) and
        finishes what it was running. Neither process counts as a failure or a restart
        of the strategy: the siblings are untouched. When the fresh process fails to
        start, the old one keeps serving and the failure is returned."""
        fresh = self.new_slot(slot.spec)
        fresh.restarts = slot.restarts + 1
        failure = self.start(fresh)
        if failure is not None:
            return failure
        old_pid = slot.pid
        self.slots[self.slots.index(slot)] = fresh
        self.stop(slot, "replaced")
        self.uplink.emit("replaced", fresh, old_pid=old_pid)
        return None

    def stop_all(self) -> None:
        """The supervisor stops: every child in reverse start order, then the orphans."""
        self.closing = True
        self.standby.close()
        for slot in reversed(self.slots):
            slot.cancel_timers()
            self.stop(slot, "shutdown", scan=False)
        kill_strays(())  # once, for every orphan the stopped children left

    def close_captures(self) -> None:
        for capture in list(self.captures):
            capture.close()  # log the last lines the stopped children wrote
        self.logs.close()  # then close their files

    def _unwatch(self, slot: ChildSlot) -> None:
        if slot.ctrl is not None:
            self.loop.remove_reader(slot.ctrl)
        if slot.pidfd is not None:
            self.loop.remove_reader(slot.pidfd)

    def _forget(self, slot: ChildSlot, scan: bool = True) -> None:
        """The child's process is reaped: fail what was forwarded to it, close its fds."""
        for rid in list(slot.pending):
            origin, origin_id, _ = self.forwarded.pop(rid, (None, 0, None))
            if origin is not None:
                self.uplink.reply_error(origin, origin_id, "NotRunning",
                                        f"{slot.path} exited before it answered",
                                        state="restarting")
        slot.pending.clear()
        if slot.pid is not None:
            slot.launcher.reaped(slot)
        slot.release()
        if scan and not self._scan_due:
            # Orphans the child left (its subprocesses) were reparented to us. Scanned from
            # the loop, after the handler that reaped it: a restart the exit leads to is
            # decided and started first (the scan is off its critical path); the loop's
            # timers run after that batch of events, in the same turn.
            self._scan_due = True
            self.loop.call_soon(self._kill_strays)

    def _kill_strays(self) -> None:
        self._scan_due = False
        kill_strays(self.own_pids())

    # ------------------------------------------------------------------ child events
    def _on_channel(self, slot: ChildSlot) -> None:
        if drain(slot, self.on_message):
            self.loop.remove_reader(slot.ctrl)
            if slot.pidfd is None:
                self.reap()

    def on_message(self, slot: ChildSlot, msg: Any) -> None:
        match msg:
            case P.Exit():
                slot.exit_msg = msg
            case P.Pong():
                self.monitors.on_pong(slot, msg)
            case P.Response(id=rid) | P.ErrorResponse(id=rid):
                origin, origin_id, target = self.forwarded.pop(rid, (None, 0, None))
                if target is not None:
                    target.pending.discard(rid)
                if origin is not None:
                    self.uplink.relay(origin, msgspec.structs.replace(msg, id=origin_id))
            case P.Event():
                self.uplink.send(msg)
            case _:
                pass

    def reap(self) -> None:
        """Reap every exited child: ours are decided, adopted orphans only reaped.

        Children in a synchronous start or stop are skipped: that code reaps its own pid.
        """
        exited = []
        for slot in self.slots:
            if slot.pid is None or slot.state in (ChildState.STOPPING, ChildState.STARTING):
                continue
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid:
                exited.append((slot, self._record_exit(slot, status)))
        # Decide only once every exit of this pass is recorded: a failure that took down
        # every child at once must see them all down (it is critical, then).
        for slot, (reason, category, recycled, detail) in exited:
            if self.closing:
                slot.become(ChildState.STOPPED)
            elif slot in self.slots and slot.pid is None:
                self.on_exit(slot, reason, category, recycled, detail)
        known = self.own_pids()  # a dead standby is reaped by its own pidfd's handler
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

    def _record_exit(self, slot: ChildSlot, status: int) -> tuple[str, str | None, bool, str]:
        """Reaped: read its last words, release it, report it; (reason, category, recycled,
        detail)."""
        self._unwatch(slot)
        drain(slot, self.on_message)
        reason, category, detail = reason_of(slot, status)
        if slot.pending_failure is not None:
            category, reason = slot.pending_failure
        recycled = (reason == "normal" and slot.exit_msg is not None
                    and slot.exit_msg.message == "max_calls")
        pid = slot.pid
        settling, slot.settling = slot.settling, False
        if settling and category is None:
            # A program that ended within its start_seconds did not start, even with
            # exit code 0 (supervisord's startsecs): a failure, never a clean exit.
            reason, category = "exited", "connection_error"
        self._forget(slot)
        slot.become(ChildState.RESTARTING)
        self.uplink.emit("exited", slot, pid=pid, reason=reason, category=category,
                         detail=detail)
        if settling:
            detail = f"exited within start_seconds ({detail})"
            self.uplink.emit("start_failed", slot, reason="ChildExited", category=category,
                             message=detail)
        return reason, category, recycled, detail

    # ------------------------------------------------------------------ requests
    def forward(self, slot: ChildSlot, msg: Any, origin: socket.socket, origin_id: int,
                fd: int | None = None) -> None:
        """Send a request to a child, remembering whom to answer."""
        rid = next(self._ids)
        self.forwarded[rid] = (origin, origin_id, slot)
        slot.pending.add(rid)
        data = P.CONTROL_CODEC.encode(msgspec.structs.replace(msg, id=rid))
        try:
            send_frame(slot.ctrl, data, fds=[fd] if fd is not None else ())
        except OSError:
            self.forwarded.pop(rid, None)
            slot.pending.discard(rid)
            self.uplink.reply_error(origin, origin_id, "NotRunning",
                                    f"{slot.path} is not running", state=str(slot.state))
        finally:
            if fd is not None:
                os.close(fd)


def _no_decision(slot: ChildSlot, reason: str, category: str | None, recycled: bool,
                 detail: str) -> None:
    raise RuntimeError(f"{slot.path} exited and no recovery decides for it")
