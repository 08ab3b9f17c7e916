"""Restart intensity: the supervisor's own circuit breaker.

A supervisor allows at most `max_restarts` restarts within any `max_seconds` window; one more
and it gives up (stops its children, exits with reason ``shutdown``). As in OTP's
``add_restart``, the history is a tuple of restart timestamps pruned to the window on every
restart. The window is inclusive (a restart exactly `max_seconds` old still counts) and
measured in `time.monotonic()` seconds; OTP measures whole seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

__all__ = ["add_restart", "RestartIntensity"]


def add_restart(restarts: tuple[float, ...], now: float, period: float) -> tuple[float, ...]:
    """The restart history after one more restart at `now`: the restarts at most `period`
    seconds old, then `now`. Pure; never raises for numbers."""
    return (*(t for t in restarts if now - t <= period), now)


def _check_max_restarts(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_restarts: expected an integer >= 0, got {value!r}")
    if value < 0:
        raise ValueError(f"max_restarts: expected an integer >= 0, got {value!r}")
    return value


def _check_max_seconds(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"max_seconds: expected a number of seconds > 0, got {value!r}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"max_seconds: expected a number of seconds > 0, got {value!r}")
    return float(value)


class RestartIntensity:
    """Counts restarts in a sliding window and says when there were too many.

    `record()` counts one restart and returns True once more than `max_restarts` restarts
    fall within `max_seconds` (exactly `max_restarts` is still fine; `max_restarts=0` trips
    on the first). `clock` is any zero-argument callable returning seconds (default
    `time.monotonic`); every method also takes an explicit `now`.
    Raises ValueError for max_restarts < 0 or max_seconds <= 0 (TypeError for non-numbers).
    Not thread-safe: a supervisor owns one per loop.
    """

    __slots__ = ("max_restarts", "max_seconds", "clock", "_restarts")

    def __init__(
        self,
        max_restarts: int,
        max_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_restarts = _check_max_restarts(max_restarts)
        self.max_seconds = _check_max_seconds(max_seconds)
        self.clock = clock
        self._restarts: tuple[float, ...] = ()

    @property
    def restarts(self) -> tuple[float, ...]:
        """The recorded restart times still kept (pruned on each `record`)."""
        return self._restarts

    def record(self, now: float | None = None) -> bool:
        """Count one restart at `now` (default: the clock); True if intensity is now exceeded."""
        now = self.clock() if now is None else now
        self._restarts = add_restart(self._restarts, now, self.max_seconds)
        return len(self._restarts) > self.max_restarts

    def count(self, now: float | None = None) -> int:
        """How many recorded restarts lie within the window ending at `now` (default: clock)."""
        now = self.clock() if now is None else now
        return sum(1 for t in self._restarts if now - t <= self.max_seconds)

    def exceeded(self, now: float | None = None) -> bool:
        """Whether the restarts within the window ending at `now` are more than allowed."""
        return self.count(now) > self.max_restarts

    def reset(self) -> None:
        """Forget every recorded restart."""
        self._restarts = ()

    def __repr__(self) -> str:
        return (
            f"RestartIntensity(max_restarts={self.max_restarts}, "
            f"max_seconds={self.max_seconds}, recorded={len(self._restarts)})"
        )
