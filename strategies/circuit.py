"""A thread-safe circuit breaker: stop calling something that keeps failing, try again later.

                 failure_threshold consecutive failures
        CLOSED ------------------------------------------> OPEN
          ^                                                |  ^
          | success_threshold successes                    |  | any failure
          |                                   timeout      v  |
          +------------------------------------------- HALF_OPEN
                                         (at most half_open_requests trials in flight)

The transitions are the table `TRANSITIONS[(state, event)]`; what each state does with an
admission request or a result is a small table of methods too. Time comes from an injectable
`clock`, and time is only looked at when the breaker is used: every public method (including
reading `state`) first moves an OPEN breaker whose timeout has passed to HALF_OPEN.

`on_state_change(old, new)` is called after the lock is released, so a callback may read
`state` or call any method without deadlocking; under concurrent use, callbacks from
different threads may interleave.
"""

from __future__ import annotations

import enum
import math
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = [
    "CircuitOpenError",
    "CircuitState",
    "CircuitEvent",
    "TRANSITIONS",
    "CircuitBreaker",
]

_T = TypeVar("_T")


class CircuitOpenError(Exception):
    """A call was refused because the circuit is open (or its half-open trials are all out).

    Nobody's bug: the protected resource kept failing. `retry_after` is the number of
    seconds until the next trial call may go through (0 when the breaker is half-open and
    waiting for its trial results), or None when unknown.
    """

    # No __init__ on purpose: supervisor.errors.CircuitOpen inherits from this class and from
    # WorkerError, and cooperative multiple inheritance needs Exception.__init__ here.
    retry_after: float | None = None


class CircuitState(enum.StrEnum):
    """The three states of a circuit breaker."""

    closed = "closed"
    open = "open"
    half_open = "half_open"


class CircuitEvent(enum.StrEnum):
    """What can happen to a circuit breaker."""

    tripped = "tripped"  # closed: failure_threshold consecutive failures
    timeout_elapsed = "timeout_elapsed"  # open: `timeout` seconds since it opened
    trial_failed = "trial_failed"  # half_open: any failure
    recovered = "recovered"  # half_open: success_threshold successes
    reset = "reset"  # anyone: reset() was called


_S, _E = CircuitState, CircuitEvent
TRANSITIONS: dict[tuple[CircuitState, CircuitEvent], CircuitState] = {
    (_S.closed, _E.tripped): _S.open,
    (_S.open, _E.timeout_elapsed): _S.half_open,
    (_S.half_open, _E.trial_failed): _S.open,
    (_S.half_open, _E.recovered): _S.closed,
    (_S.closed, _E.reset): _S.closed,
    (_S.open, _E.reset): _S.closed,
    (_S.half_open, _E.reset): _S.closed,
}
"""Every legal transition; an event missing for a state is a bug (KeyError)."""

_Change = tuple[CircuitState, CircuitState]


def _check_count(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"{name}: expected an integer >= 1, got {value!r}")
    return value


def _check_timeout(value: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"timeout: expected a number of seconds >= 0, got {value!r}")
    if math.isnan(value) or value < 0:
        raise ValueError(f"timeout: expected a number of seconds >= 0, got {value!r}")
    return float(value)


class CircuitBreaker:
    """Closed / open / half-open circuit breaker (see the module docstring for the diagram).

    Opens after `failure_threshold` consecutive failures (a success resets the count); after
    `timeout` seconds open, lets at most `half_open_requests` trial calls be in flight at
    once; closes after `success_threshold` trial successes; reopens on any trial failure.
    Results recorded while open are ignored (they belong to calls made before it opened).
    The constructor raises ValueError (TypeError for non-numbers) naming a bad parameter.
    """

    def __init__(
        self,
        failure_threshold: int = 5,
        success_threshold: int = 3,
        timeout: float = 60.0,
        half_open_requests: int = 3,
        clock: Callable[[], float] = time.monotonic,
        on_state_change: Callable[[CircuitState, CircuitState], Any] | None = None,
        name: str | None = None,
    ) -> None:
        self.failure_threshold = _check_count("failure_threshold", failure_threshold)
        self.success_threshold = _check_count("success_threshold", success_threshold)
        self.timeout = _check_timeout(timeout)
        self.half_open_requests = _check_count("half_open_requests", half_open_requests)
        self.clock = clock
        self.on_state_change = on_state_change
        self.name = name
        self._lock = threading.Lock()
        self._state = CircuitState.closed
        self._failures = 0  # consecutive failures while closed
        self._successes = 0  # trial successes while half-open
        self._in_flight = 0  # trial calls admitted and not yet reported while half-open
        self._opened_at = 0.0  # clock() when it last opened; meaningful only while open
        # Bumped on every transition, so call() can tell a result that belongs to an
        # earlier period (e.g. a slow call admitted while closed that ends in half-open)
        # from a trial result: the former must not free a trial slot.
        self._epoch = 0

    # -- reading -------------------------------------------------------------------------

    @property
    def state(self) -> CircuitState:
        """The current state; moves open -> half_open first if the timeout has passed."""
        with self._lock:
            changes = self._observe_time(self.clock())
            state = self._state
        self._notify(changes)
        return state

    @property
    def failure_count(self) -> int:
        """Consecutive failures recorded while closed."""
        return self._failures

    @property
    def success_count(self) -> int:
        """Trial successes recorded in the current half-open period."""
        return self._successes

    @property
    def trials_in_flight(self) -> int:
        """Trial calls admitted in the current half-open period and not yet reported."""
        return self._in_flight

    def time_until_retry(self) -> float:
        """Seconds until an open breaker admits a trial; 0.0 when closed or half-open."""
        with self._lock:
            now = self.clock()
            changes = self._observe_time(now)
            remaining = self._remaining(now)
        self._notify(changes)
        return remaining

    # -- using ---------------------------------------------------------------------------

    def allow(self) -> bool:
        """Whether a call may go through now; counts it as a trial when half-open."""
        with self._lock:
            changes = self._observe_time(self.clock())
            allowed = self._admit()
        self._notify(changes)
        return allowed

    def record_success(self) -> None:
        """Report a successful call (closed: resets the failure count; half-open: a trial
        success, which may close the breaker; open: ignored)."""
        self._record(success=True, epoch=None)

    def record_failure(self) -> None:
        """Report a failed call (closed: may open the breaker; half-open: reopens it;
        open: ignored)."""
        self._record(success=False, epoch=None)

    def reset(self) -> None:
        """Close the breaker and forget every count (calls on_state_change if it was not closed)."""
        with self._lock:
            changes = self._fire(CircuitEvent.reset, self.clock())
        self._notify(changes)

    def call(self, fn: Callable[..., _T], *args: Any, **kwargs: Any) -> _T:
        """Call ``fn(*args, **kwargs)`` through the breaker and record its outcome.

        Raises CircuitOpenError (with `retry_after`) when the call is not allowed, and
        re-raises whatever `fn` raises after recording a failure. A BaseException that is
        not an Exception (KeyboardInterrupt...) is re-raised without being judged.
        """
        with self._lock:
            now = self.clock()
            changes = self._observe_time(now)
            allowed = self._admit()
            epoch = self._epoch
            refusal = None if allowed else self._refusal(now)
        self._notify(changes)
        if refusal is not None:
            raise refusal
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self._record(success=False, epoch=epoch)
            raise
        except BaseException:
            self._release(epoch)
            raise
        self._record(success=True, epoch=epoch)
        return result

    # -- internals (the caller holds the lock unless said otherwise) ---------------------

    def _fire(self, event: CircuitEvent, now: float) -> list[_Change]:
        old = self._state
        new = TRANSITIONS[(old, event)]
        self._state = new
        self._epoch += 1
        _ON_ENTER[new](self, now)
        return [(old, new)] if old != new else []

    def _enter_closed(self, now: float) -> None:
        self._failures = 0
        self._successes = 0
        self._in_flight = 0

    def _enter_open(self, now: float) -> None:
        self._opened_at = now
        self._successes = 0
        self._in_flight = 0

    def _enter_half_open(self, now: float) -> None:
        self._successes = 0
        self._in_flight = 0

    def _observe_time(self, now: float) -> list[_Change]:
        if self._state is CircuitState.open and self._remaining(now) <= 0.0:
            return self._fire(CircuitEvent.timeout_elapsed, now)
        return []

    def _remaining(self, now: float) -> float:
        if self._state is not CircuitState.open:
            return 0.0
        return max(0.0, self.timeout - (now - self._opened_at))

    def _admit(self) -> bool:
        if self._state is CircuitState.half_open:
            if self._in_flight >= self.half_open_requests:
                return False
            self._in_flight += 1
            return True
        return self._state is CircuitState.closed

    def _refusal(self, now: float) -> CircuitOpenError:
        label = "circuit" if self.name is None else f"circuit {self.name!r}"
        if self._state is CircuitState.open:
            retry_after = self._remaining(now)
            message = f"{label} is open; next trial call allowed in {retry_after:.3f}s"
        else:
            retry_after = 0.0
            message = (
                f"{label} is half-open with all {self.half_open_requests} trial calls in "
                "flight; retry when one of them finishes"
            )
        error = CircuitOpenError(message)
        error.retry_after = retry_after
        return error

    def _record(self, *, success: bool, epoch: int | None) -> None:
        """Record an outcome; with an `epoch`, only if no transition happened since then.
        Takes the lock itself."""
        with self._lock:
            now = self.clock()
            changes = self._observe_time(now)
            if epoch is None or epoch == self._epoch:
                handler = _ON_SUCCESS if success else _ON_FAILURE
                changes += handler[self._state](self, now)
        self._notify(changes)

    def _success_closed(self, now: float) -> list[_Change]:
        self._failures = 0
        return []

    def _failure_closed(self, now: float) -> list[_Change]:
        self._failures += 1
        if self._failures >= self.failure_threshold:
            return self._fire(CircuitEvent.tripped, now)
        return []

    def _success_half_open(self, now: float) -> list[_Change]:
        self._in_flight = max(0, self._in_flight - 1)
        self._successes += 1
        if self._successes >= self.success_threshold:
            return self._fire(CircuitEvent.recovered, now)
        return []

    def _failure_half_open(self, now: float) -> list[_Change]:
        return self._fire(CircuitEvent.trial_failed, now)

    def _ignore(self, now: float) -> list[_Change]:
        return []

    def _release(self, epoch: int) -> None:
        """Give back a trial slot without judging the call. Takes the lock itself."""
        with self._lock:
            if epoch == self._epoch and self._state is CircuitState.half_open:
                self._in_flight = max(0, self._in_flight - 1)

    def _notify(self, changes: list[_Change]) -> None:
        """Call on_state_change for each change; runs without the lock."""
        if self.on_state_change is None:
            return
        for old, new in changes:
            self.on_state_change(old, new)

    def __repr__(self) -> str:
        label = "" if self.name is None else f"{self.name!r}, "
        return (
            f"CircuitBreaker({label}state={self._state}, failures={self._failures}, "
            f"successes={self._successes}, trials_in_flight={self._in_flight})"
        )


# What each state does on entry and with each kind of result: policy as data.
_ON_ENTER: dict[CircuitState, Callable[[CircuitBreaker, float], None]] = {
    CircuitState.closed: CircuitBreaker._enter_closed,
    CircuitState.open: CircuitBreaker._enter_open,
    CircuitState.half_open: CircuitBreaker._enter_half_open,
}
_ON_SUCCESS: dict[CircuitState, Callable[[CircuitBreaker, float], list[_Change]]] = {
    CircuitState.closed: CircuitBreaker._success_closed,
    CircuitState.open: CircuitBreaker._ignore,
    CircuitState.half_open: CircuitBreaker._success_half_open,
}
_ON_FAILURE: dict[CircuitState, Callable[[CircuitBreaker, float], list[_Change]]] = {
    CircuitState.closed: CircuitBreaker._failure_closed,
    CircuitState.open: CircuitBreaker._ignore,
    CircuitState.half_open: CircuitBreaker._failure_half_open,
}
