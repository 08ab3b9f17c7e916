"""Call a function again when it fails, waiting a backoff schedule's delays in between.

    retry(fn, max_attempts=3, backoff="exponential", base_delay=1.0, ...)   # call now
    @retrying(max_attempts=3, ...)                                          # decorate
    def fetch(url): ...

One design, two spellings: `retry` always takes the function and calls it at once;
`retrying` takes only options and returns a decorator that runs `retry` on every call. The
sleeping function is injectable (tests pass a recorder; an event loop passes its own), so
nothing here ever sleeps unless the caller's `sleep` does.
"""

from __future__ import annotations

import functools
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

from strategies.backoff import BackoffSpec, Schedule, make_schedule
from strategies.circuit import CircuitBreaker, CircuitOpenError

__all__ = ["RetryOn", "retry", "retrying"]

_T = TypeVar("_T")

RetryOn = type[BaseException] | tuple[type[BaseException], ...] | Callable[[BaseException], bool]
"""Which errors are retried: an exception type, a tuple of them, or a predicate exc -> bool."""


def _retry_predicate(retry_on: RetryOn) -> Callable[[BaseException], bool]:
    if isinstance(retry_on, type) and issubclass(retry_on, BaseException):
        return lambda exc: isinstance(exc, retry_on)
    if isinstance(retry_on, tuple):
        if not all(isinstance(t, type) and issubclass(t, BaseException) for t in retry_on):
            raise TypeError(f"retry_on: expected exception types, got {retry_on!r}")
        return lambda exc: isinstance(exc, retry_on)
    if callable(retry_on):
        return retry_on
    raise TypeError(
        f"retry_on: expected an exception type, a tuple of them or a predicate, got {retry_on!r}"
    )


def _check_max_attempts(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_attempts: expected an integer >= 1, got {value!r}")
    if value < 1:
        raise ValueError(f"max_attempts: expected an integer >= 1, got {value!r}")
    return value


def retry(
    fn: Callable[[], _T],
    *,
    max_attempts: int = 3,
    backoff: BackoffSpec | Schedule = "exponential",
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    circuit: CircuitBreaker | None = None,
    retry_on: RetryOn = (Exception,),
    sleep: Callable[[float], Any] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], Any] | None = None,
) -> _T:
    """Call ``fn()`` up to `max_attempts` times and return its first result.

    After failed attempt n (1-based) it calls ``on_retry(n, exc, delay)`` if given, then
    ``sleep(delay)`` with ``delay = make_schedule(backoff, ...).delay(n)`` (a fresh schedule
    per `retry` call). Only Exceptions matching `retry_on` are retried; any other error is
    re-raised at once, as is `CircuitOpenError` (failing fast is the point of an open
    circuit). With `circuit`, every attempt goes through ``circuit.call(fn)``. When the
    attempts run out, the last error is re-raised as it is (not wrapped).
    Raises ValueError/TypeError for bad options before calling `fn`.
    """
    max_attempts = _check_max_attempts(max_attempts)
    should_retry = _retry_predicate(retry_on)
    schedule = make_schedule(backoff, base_delay=base_delay, max_delay=max_delay, rng=rng)
    for attempt in range(1, max_attempts + 1):
        try:
            return circuit.call(fn) if circuit is not None else fn()
        except CircuitOpenError:
            raise
        except Exception as exc:
            if attempt == max_attempts or not should_retry(exc):
                raise
            delay = schedule.delay(attempt)
            if on_retry is not None:
                on_retry(attempt, exc, delay)
            sleep(delay)
    raise AssertionError("unreachable: the last attempt returns or raises")


def retrying(
    *,
    max_attempts: int = 3,
    backoff: BackoffSpec | Schedule = "exponential",
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    circuit: CircuitBreaker | None = None,
    retry_on: RetryOn = (Exception,),
    sleep: Callable[[float], Any] = time.sleep,
    rng: random.Random | None = None,
    on_retry: Callable[[int, BaseException, float], Any] | None = None,
) -> Callable[[Callable[..., _T]], Callable[..., _T]]:
    """Decorator factory: ``@retrying(...)`` makes every call of the function a `retry`.

    Takes the options of `retry`; checks them at decoration time (ValueError/TypeError).
    Pass a `backoff` name or table rather than a Schedule object when the function may run
    in several threads at once: a named schedule is built afresh for every call.
    """
    options = dict(
        max_attempts=_check_max_attempts(max_attempts),
        backoff=backoff,
        base_delay=base_delay,
        max_delay=max_delay,
        circuit=circuit,
        retry_on=retry_on,
        sleep=sleep,
        rng=rng,
        on_retry=on_retry,
    )
    _retry_predicate(retry_on)
    make_schedule(backoff, base_delay=base_delay, max_delay=max_delay, rng=rng)

    def decorate(fn: Callable[..., _T]) -> Callable[..., _T]:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> _T:
            return retry(functools.partial(fn, *args, **kwargs), **options)

        wrapper.retry_options = options  # type: ignore[attr-defined]
        return wrapper

    return decorate
