"""Health monitors a supervisor runs for its running children, on loop timers only.

- Heartbeats (`heartbeat` seconds): a Ping on the control channel; the worker's control
  thread answers even while a command runs, so a Pong missing after `heartbeat_timeout`
  (default twice the interval) means the process is wedged (SIGSTOP, a deadlock, stuck in C
  holding the GIL): it is SIGKILLed and the exit is a health_check_error. A Pong that says
  `healthy=False` (its `health()` returned False) is the same category, but the worker is
  responsive, so it is stopped gracefully.
- Memory (`max_memory_mb`): the worker's RSS is read with psutil every second; over the
  limit the worker is stopped gracefully and the exit is a resource_error.

Nothing here sleeps or polls in a loop: each check is a timer that re-arms itself, and a
supervisor with no heartbeats or limits set has no timers at all.
"""

from __future__ import annotations

import itertools
import signal
from typing import TYPE_CHECKING

import psutil

from ..wire import messages as P
from ..wire.framing import send_frame
from .proc import kill_quietly
from .slot import ChildSlot

if TYPE_CHECKING:
    from .process import SupervisorProcess

__all__ = ["start_monitors", "on_pong", "fail_running"]

MEMORY_INTERVAL = 1.0
_seq = itertools.count(1)


def start_monitors(sup: SupervisorProcess, slot: ChildSlot) -> None:
    spec = slot.spec
    if getattr(spec, "heartbeat", None):
        slot.timers.append(sup.loop.call_later(spec.heartbeat, lambda: _ping(sup, slot)))
    if getattr(spec, "max_memory_mb", None):
        slot.timers.append(sup.loop.call_later(MEMORY_INTERVAL, lambda: _memory(sup, slot)))


def _ping(sup: SupervisorProcess, slot: ChildSlot) -> None:
    if slot.state != "running" or slot.ctrl is None:
        return
    seq = next(_seq)
    slot.ping_seq = seq
    try:
        send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Ping(seq=seq)))
    except OSError:  # the child is on its way out; its exit will be reaped
        return
    timeout = slot.spec.heartbeat_timeout or 2 * slot.spec.heartbeat
    pid = slot.pid
    slot.timers.append(sup.loop.call_later(timeout, lambda: _missed(sup, slot, seq, pid)))


def _missed(sup: SupervisorProcess, slot: ChildSlot, seq: int, pid: int | None) -> None:
    if slot.pid != pid or slot.ping_seq != seq:
        return  # answered, or another process by now
    fail_running(sup, slot, "health_check_error", "heartbeat_missed", graceful=False)


def on_pong(sup: SupervisorProcess, slot: ChildSlot, msg: P.Pong) -> None:
    if slot.ping_seq != msg.seq:
        return
    slot.ping_seq = None
    if not msg.healthy:
        fail_running(sup, slot, "health_check_error", "health_check_failed", graceful=True)
        return
    slot.timers.append(sup.loop.call_later(slot.spec.heartbeat, lambda: _ping(sup, slot)))


def _memory(sup: SupervisorProcess, slot: ChildSlot) -> None:
    if slot.state != "running" or slot.pid is None:
        return
    try:
        rss_mb = psutil.Process(slot.pid).memory_info().rss / (1024 * 1024)
    except psutil.Error:  # exited since; its exit is reaped by the loop
        return
    except OSError:  # EMFILE: no descriptor left to read /proc with; look again later
        slot.timers.append(sup.loop.call_later(MEMORY_INTERVAL, lambda: _memory(sup, slot)))
        return
    if rss_mb > slot.spec.max_memory_mb:
        sup.emit("memory_exceeded", slot, rss_mb=round(rss_mb, 1),
                 limit_mb=slot.spec.max_memory_mb)
        fail_running(sup, slot, "resource_error", "memory_limit", graceful=True)
        return
    slot.timers.append(sup.loop.call_later(MEMORY_INTERVAL, lambda: _memory(sup, slot)))


def fail_running(sup: SupervisorProcess, slot: ChildSlot, category: str, reason: str, *,
                 graceful: bool) -> None:
    """End a running child that failed in a way only the supervisor (or a caller) saw.

    The exit, when reaped by the loop, is handled as a failure of `category`. Graceful:
    a Stop message, then SIGKILL when the shutdown grace runs out; the loop is never
    blocked waiting for it.
    """
    if slot.pid is None or slot.pending_failure is not None:
        return
    slot.pending_failure = (category, reason)
    pid = slot.pid
    shutdown = slot.spec.shutdown
    if not graceful or shutdown == "brutal_kill":
        kill_quietly(pid, signal.SIGKILL)
        return
    try:
        send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Stop(reason=reason)))
    except OSError:  # already leaving
        kill_quietly(pid, signal.SIGKILL)
        return
    if shutdown != "infinity":
        def kill_if_still_there(pid: int | None = pid) -> None:
            if slot.pid == pid:
                kill_quietly(pid, signal.SIGKILL)

        slot.timers.append(sup.loop.call_later(shutdown, kill_if_still_there))

