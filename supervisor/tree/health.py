"""Health monitors a supervisor runs for its running children, on loop timers only.

- Heartbeats (`heartbeat` seconds): a Ping on the control channel; the worker's control
  thread answers even while a command runs, so a Pong missing after `heartbeat_timeout`
  (default twice the interval) means the process is wedged (SIGSTOP, a deadlock, stuck in C
  holding the GIL): it is SIGKILLed and the exit is a health_check_error. A Pong that says
  `healthy=False` (its `health()` returned False) is the same category, but the worker is
  responsive, so it is stopped gracefully.
- Memory (`max_memory_mb`): the worker's RSS is read with psutil, every second while it
  does not grow and sooner while it grows toward the limit (about when it would reach it at
  its current rate, at most ten times a second). Over the limit the stop is hard, whatever
  the child's `shutdown`: SIGTERM at once, SIGKILL `MEMORY_GRACE` seconds later. A graceful
  stop would let it allocate through its whole grace (a worker allocating 500 MB/s with a
  200 MB limit reached 2.3 GB with the default 5 s, 6 GB with 30 s). The exit is a
  resource_error.

Nothing here sleeps or polls in a loop: each check is a timer that re-arms itself, and a
supervisor with no heartbeats or limits set has no timers at all.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable

import psutil

from ..wire import messages as P
from ..wire.framing import send_frame
from .loop import Loop
from .proc import kill_quietly
from .slot import ChildSlot, ChildState
from .uplink import Uplink

__all__ = ["Monitors", "memory_check_delay"]

MEMORY_INTERVAL = 1.0  # between RSS checks of a worker that is not growing
MEMORY_MIN_INTERVAL = 0.1  # between RSS checks of one growing fast toward its limit
MEMORY_GRACE = 1.0  # SIGTERM -> SIGKILL for a worker over its limit, whatever its shutdown
_seq = itertools.count(1)


class Monitors:
    """The heartbeat and memory checks of one supervisor's children (see the module doc)."""

    def __init__(self, loop: Loop, uplink: Uplink) -> None:
        self.loop = loop
        self.uplink = uplink

    def start(self, slot: ChildSlot) -> None:
        spec = slot.spec
        if getattr(spec, "heartbeat", None):
            self._arm(slot, spec.heartbeat, lambda: self._ping(slot))
        if getattr(spec, "max_memory_mb", None):
            self._memory(slot, None)

    def _arm(self, slot: ChildSlot, delay: float,
             callback: Callable[[], None]) -> None:
        """A timer of this child's, cancelled with it. Fired ones are dropped on the way: a
        check that re-arms itself every second would otherwise grow the list all day."""
        slot.timers = [t for t in slot.timers if not t.cancelled]
        slot.timers.append(self.loop.call_later(delay, callback))

    def _ping(self, slot: ChildSlot) -> None:
        if slot.state is not ChildState.RUNNING or slot.ctrl is None:
            return
        seq = next(_seq)
        slot.ping_seq = seq
        try:
            send_frame(slot.ctrl, P.CONTROL_CODEC.encode(P.Ping(seq=seq)))
        except OSError:  # the child is on its way out; its exit will be reaped
            return
        timeout = slot.spec.heartbeat_timeout or 2 * slot.spec.heartbeat
        pid = slot.pid
        self._arm(slot, timeout, lambda: self._missed(slot, seq, pid))

    def _missed(self, slot: ChildSlot, seq: int, pid: int | None) -> None:
        if slot.pid != pid or slot.ping_seq != seq:
            return  # answered, or another process by now
        self.fail_running(slot, "health_check_error", "heartbeat_missed", graceful=False)

    def on_pong(self, slot: ChildSlot, msg: P.Pong) -> None:
        if slot.ping_seq != msg.seq:
            return
        slot.ping_seq = None
        if not msg.healthy:
            self.fail_running(slot, "health_check_error", "health_check_failed", graceful=True)
            return
        self._arm(slot, slot.spec.heartbeat, lambda: self._ping(slot))

    def _memory(self, slot: ChildSlot,
                previous: tuple[float, float] | None) -> None:
        """Check the RSS against the limit; `previous` is the last (monotonic time, RSS MiB)."""
        if slot.state is not ChildState.RUNNING or slot.pid is None:
            return
        try:
            rss_mb = psutil.Process(slot.pid).memory_info().rss / (1024 * 1024)
        except psutil.Error:  # exited since; its exit is reaped by the loop
            return
        except OSError:  # EMFILE: no descriptor left to read /proc with; look again later
            self._arm(slot, MEMORY_INTERVAL, lambda: self._memory(slot, previous))
            return
        limit = slot.spec.max_memory_mb
        if rss_mb > limit:
            self.uplink.emit("memory_exceeded", slot, rss_mb=round(rss_mb, 1), limit_mb=limit)
            self._stop_over_limit(slot)
            return
        now = time.monotonic()
        since = None if previous is None else (now - previous[0], previous[1])
        delay = memory_check_delay(rss_mb, limit, since)
        self._arm(slot, delay, lambda: self._memory(slot, (now, rss_mb)))

    def _stop_over_limit(self, slot: ChildSlot) -> None:
        """SIGTERM now, SIGKILL after `MEMORY_GRACE`: the overshoot is bounded by time, not by
        the child's `shutdown` (its memory keeps growing while it winds down). A worker that
        does not handle SIGTERM (the default) ends at once and `terminate()` does not run."""
        if slot.pid is None or slot.pending_failure is not None:
            return
        slot.pending_failure = ("resource_error", "memory_limit")
        pid = slot.pid
        if slot.spec.shutdown == "brutal_kill":
            kill_quietly(pid, signal.SIGKILL)
            return
        kill_quietly(pid, signal.SIGTERM)

        def kill_if_still_there() -> None:
            if slot.pid == pid:  # not reaped yet: still this process, never a reused pid
                kill_quietly(pid, signal.SIGKILL)

        self._arm(slot, MEMORY_GRACE, kill_if_still_there)

    def fail_running(self, slot: ChildSlot, category: str, reason: str, *,
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

            self._arm(slot, shutdown, kill_if_still_there)


def memory_check_delay(rss_mb: float, limit_mb: float,
                       previous: tuple[float, float] | None) -> float:
    """Seconds until the next RSS check; `previous` is (seconds ago, RSS MiB then).

    A worker that is not growing is checked every `MEMORY_INTERVAL` (an idle tree's cost
    stays one /proc read per second per limited worker). One that grows is checked about
    when it would reach its limit at its current rate, but not more often than every
    `MEMORY_MIN_INTERVAL`: steady growth is caught near the limit, and a sudden burst
    after a quiet spell at most one interval late.
    """
    if previous is None:
        return MEMORY_MIN_INTERVAL  # no rate yet: a worker may start allocating at once
    elapsed, before_mb = previous
    growth = (rss_mb - before_mb) / elapsed if elapsed > 0 else 0.0
    if growth <= 0:
        return MEMORY_INTERVAL
    return min(MEMORY_INTERVAL, max(MEMORY_MIN_INTERVAL, (limit_mb - rss_mb) / growth))
