"""Backoff schedules: how long to wait before retry number `attempt` (1-based).

A schedule is built once from a *spec* and then asked ``delay(attempt)``:

    spec                      delay(1), delay(2), ...            scaled by base_delay?
    "none"                    0, 0, 0, ...                       (always 0)
    "immediate"               0, 0.1, 0.2, 0.2, ...              no (seconds already)
    "linear"                  1, 2, 3, 4, ...                    yes
    "exponential"             1, 2, 4, 8, 16, ...                yes
    "fibonacci"               1, 1, 2, 3, 5, 8, ...              yes
    "decorrelated_jitter"     uniform(base, 3 * previous)        yes (base is the floor)
    (0.5, 1.0, 5.0)           0.5, 1.0, 5.0, 5.0, ...            no (seconds already)
    lambda attempt: ...       whatever it returns                no (seconds already)

Every result is capped by `max_delay`. Only decorrelated jitter has state (the previous
delay), and it lives in the schedule object, never in a global: two schedules built from the
same spec never disturb each other. Randomness comes from an injectable `rng`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

__all__ = [
    "SCHEDULE_NAMES",
    "IMMEDIATE_TABLE",
    "BackoffSpec",
    "Schedule",
    "FormulaSchedule",
    "TableSchedule",
    "CallableSchedule",
    "DecorrelatedJitter",
    "make_schedule",
    "delay",
]

BackoffSpec = str | Sequence[float] | Callable[[int], float]
"""What `make_schedule` accepts: a schedule name, a table of seconds, or attempt -> seconds."""

SCHEDULE_NAMES: tuple[str, ...] = (
    "none",
    "linear",
    "exponential",
    "fibonacci",
    "decorrelated_jitter",
    "immediate",
)
"""Every schedule name `make_schedule` understands."""

IMMEDIATE_TABLE: tuple[float, ...] = (0.0, 0.1, 0.2)
"""The original design's immediate_retry delays, in seconds (the last one repeats)."""

# Doubling past 2**1023 overflows a float to an OverflowError (int ** is exact, float() of a
# huge int raises); any exponent this large is far beyond every sane max_delay anyway.
_MAX_EXPONENT = 1023
# Fibonacci numbers past F(1476) are larger than the largest float; the loop stops there so a
# huge attempt number costs at most this many additions.
_MAX_FIB_INDEX = 1477
# Decorrelated jitter replays its chain when asked to skip ahead; after a few dozen draws the
# chain has forgotten its start, so replaying more would only burn time.
_MAX_REPLAY = 64


@runtime_checkable
class Schedule(Protocol):
    """Anything with ``delay(attempt) -> seconds`` and ``reset()``."""

    def delay(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1-based); ValueError if attempt < 1."""
        ...

    def reset(self) -> None:
        """Forget any state, as if the schedule were new."""
        ...


def _check_attempt(attempt: int) -> int:
    if isinstance(attempt, bool) or not isinstance(attempt, int):
        raise TypeError(f"attempt: expected an integer >= 1, got {attempt!r}")
    if attempt < 1:
        raise ValueError(f"attempt: expected an integer >= 1, got {attempt!r}")
    return attempt


def _check_seconds(name: str, value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name}: expected a number of seconds >= 0, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name}: expected a number of seconds >= 0, got {value!r}")
    return float(value)


def _cap(seconds: float, max_delay: float) -> float:
    return min(float(seconds), max_delay)


def _none_units(attempt: int) -> float:
    return 0.0


def _linear_units(attempt: int) -> float:
    return float(attempt)


def _exponential_units(attempt: int) -> float:
    return 2.0 ** min(attempt - 1, _MAX_EXPONENT)


def _fibonacci_units(attempt: int) -> float:
    # Iterative: the textbook double recursion is exponential in `attempt`.
    previous, current = 0.0, 1.0
    for _ in range(min(attempt, _MAX_FIB_INDEX) - 1):
        previous, current = current, previous + current
    return current


_FORMULAS: dict[str, Callable[[int], float]] = {
    "none": _none_units,
    "linear": _linear_units,
    "exponential": _exponential_units,
    "fibonacci": _fibonacci_units,
}


class FormulaSchedule:
    """A stateless schedule: ``min(max_delay, base_delay * units(attempt))``.

    Built by `make_schedule` for "none", "linear", "exponential" and "fibonacci".
    `delay` raises ValueError when attempt < 1 and TypeError when it is not an int.
    """

    __slots__ = ("name", "base_delay", "max_delay", "_units")

    def __init__(self, name: str, base_delay: float = 1.0, max_delay: float = 30.0) -> None:
        self.name = name
        self.base_delay = _check_seconds("base_delay", base_delay)
        self.max_delay = _check_seconds("max_delay", max_delay)
        self._units = _FORMULAS[name]

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt`; raises ValueError/TypeError for a bad attempt."""
        units = self._units(_check_attempt(attempt))
        # 0 * inf is nan: a zero base means "no waiting" however far the formula has grown.
        if self.base_delay == 0.0 or units == 0.0:
            return 0.0
        return _cap(self.base_delay * units, self.max_delay)

    def reset(self) -> None:
        """Nothing to forget: formula schedules are stateless."""

    def __repr__(self) -> str:
        return f"FormulaSchedule({self.name!r}, base_delay={self.base_delay}, max_delay={self.max_delay})"


class TableSchedule:
    """Delays read from a table of seconds; past its end the last value repeats.

    The constructor raises ValueError for an empty table or a negative/NaN entry and TypeError
    for a non-number; `delay` raises ValueError when attempt < 1.
    """

    __slots__ = ("table", "max_delay")

    def __init__(self, table: Sequence[float], max_delay: float = 30.0) -> None:
        if isinstance(table, str | bytes) or not isinstance(table, Sequence):
            raise TypeError(f"backoff table: expected a sequence of seconds, got {table!r}")
        if not table:
            raise ValueError("backoff table: expected at least one delay, got an empty table")
        self.table = tuple(_check_seconds(f"backoff[{i}]", v) for i, v in enumerate(table))
        self.max_delay = _check_seconds("max_delay", max_delay)

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt`; raises ValueError/TypeError for a bad attempt."""
        index = min(_check_attempt(attempt), len(self.table)) - 1
        return _cap(self.table[index], self.max_delay)

    def reset(self) -> None:
        """Nothing to forget: tables are stateless."""

    def __repr__(self) -> str:
        return f"TableSchedule({self.table!r}, max_delay={self.max_delay})"


class CallableSchedule:
    """Delays from a user function ``attempt -> seconds`` (not scaled; capped by max_delay).

    `delay` raises ValueError when attempt < 1 or the function returns a negative or NaN
    number, TypeError when it returns a non-number; the function's own errors propagate.
    """

    __slots__ = ("fn", "max_delay")

    def __init__(self, fn: Callable[[int], float], max_delay: float = 30.0) -> None:
        if not callable(fn):
            raise TypeError(f"backoff: expected a callable attempt -> seconds, got {fn!r}")
        self.fn = fn
        self.max_delay = _check_seconds("max_delay", max_delay)

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt`, as the function says, capped by max_delay."""
        attempt = _check_attempt(attempt)
        seconds = _check_seconds(f"backoff({attempt})", self.fn(attempt))
        return _cap(seconds, self.max_delay)

    def reset(self) -> None:
        """Nothing to forget: the function is assumed pure."""

    def __repr__(self) -> str:
        return f"CallableSchedule({self.fn!r}, max_delay={self.max_delay})"


class DecorrelatedJitter:
    """AWS "decorrelated jitter": ``next = min(max_delay, uniform(base_delay, 3 * previous))``.

    The chain starts from ``previous = base_delay``. ``delay(1)`` always starts a new chain;
    asking for the attempt after the last one continues it; asking for an attempt further
    ahead replays the missing draws (at most a few dozen); asking for an earlier or the same
    attempt starts a new chain. State is per object; `rng` is any object with ``uniform``.
    Raises ValueError/TypeError for a bad attempt, base_delay or max_delay.
    """

    __slots__ = ("base_delay", "max_delay", "rng", "_previous", "_attempt")

    def __init__(
        self,
        base_delay: float = 1.0,
        max_delay: float = 30.0,
        rng: random.Random | None = None,
    ) -> None:
        self.base_delay = _check_seconds("base_delay", base_delay)
        self.max_delay = _check_seconds("max_delay", max_delay)
        self.rng = rng if rng is not None else random.Random()
        self.reset()

    def delay(self, attempt: int) -> float:
        """Seconds before retry `attempt`, drawn from the chain (see the class docstring)."""
        attempt = _check_attempt(attempt)
        if attempt <= self._attempt:
            self.reset()
        skipped = attempt - self._attempt - 1
        if skipped > _MAX_REPLAY:
            self._attempt = attempt - 1 - _MAX_REPLAY
        while self._attempt < attempt:
            self._draw()
        return self._previous

    def _draw(self) -> None:
        upper = self._previous * 3.0
        self._previous = _cap(self.rng.uniform(self.base_delay, upper), self.max_delay)
        self._attempt += 1

    def reset(self) -> None:
        """Start a new chain: the next delay is drawn from [base_delay, 3 * base_delay]."""
        self._previous = self.base_delay
        self._attempt = 0

    def __repr__(self) -> str:
        return f"DecorrelatedJitter(base_delay={self.base_delay}, max_delay={self.max_delay})"


def make_schedule(
    spec: BackoffSpec | Schedule,
    *,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    rng: random.Random | None = None,
) -> Schedule:
    """Build a schedule from a name, a table of seconds, a callable, or return a Schedule as is.

    Names are scaled by `base_delay` (except "immediate"); every delay is capped by `max_delay`.
    Raises ValueError for an unknown name (naming it and the valid ones), an empty table or a
    negative delay, and TypeError for a spec of another type.
    """
    if isinstance(spec, str):
        return _named_schedule(spec, base_delay, max_delay, rng)
    if isinstance(spec, Schedule):
        return spec
    if callable(spec):
        return CallableSchedule(spec, max_delay)
    if isinstance(spec, Sequence) and not isinstance(spec, bytes):
        return TableSchedule(spec, max_delay)
    raise TypeError(
        f"backoff: expected a schedule name, a sequence of seconds or a callable, got {spec!r}"
    )


def _named_schedule(
    name: str, base_delay: float, max_delay: float, rng: random.Random | None
) -> Schedule:
    name = str(name)  # a StrEnum member counts as its value
    if name in _FORMULAS:
        return FormulaSchedule(name, base_delay, max_delay)
    if name == "immediate":
        return TableSchedule(IMMEDIATE_TABLE, max_delay)
    if name == "decorrelated_jitter":
        return DecorrelatedJitter(base_delay, max_delay, rng)
    raise ValueError(
        f"backoff: unknown schedule {name!r}; expected one of {', '.join(SCHEDULE_NAMES)}"
    )


def delay(
    spec: BackoffSpec | Schedule,
    attempt: int,
    *,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """One-shot ``make_schedule(spec, ...).delay(attempt)``; raises as those two do.

    For decorrelated jitter the chain up to `attempt` is drawn afresh from `rng`.
    """
    schedule = make_schedule(spec, base_delay=base_delay, max_delay=max_delay, rng=rng)
    return schedule.delay(attempt)
