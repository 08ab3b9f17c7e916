"""retry and @retrying: attempts, sleeps, what is retried, the circuit breaker in the loop."""

import random

import pytest

from strategies.circuit import CircuitBreaker, CircuitOpenError
from strategies.retry import retry, retrying


class Flaky:
    """Fails `failures` times (with fresh errors it remembers), then returns `result`."""

    def __init__(self, failures, error=ConnectionError, result="ok"):
        self.failures, self.error, self.result = failures, error, result
        self.calls = 0
        self.raised = []

    def __call__(self):
        self.calls += 1
        if self.calls <= self.failures:
            exc = self.error(f"failure {self.calls}")
            self.raised.append(exc)
            raise exc
        return self.result


@pytest.fixture
def sleeps():
    return []


def test_exponential_success_on_attempt_3_sleeps_the_right_delays(sleeps):
    fn = Flaky(2)
    result = retry(fn, max_attempts=5, backoff="exponential", base_delay=0.01, sleep=sleeps.append)
    assert ("ok", 3, [0.01, 0.02]) == (result, fn.calls, sleeps)


def test_success_on_the_first_attempt_never_sleeps(sleeps):
    fn = Flaky(0)
    assert "ok" == retry(fn, sleep=sleeps.append)
    assert (1, []) == (fn.calls, sleeps)


def test_when_attempts_run_out_the_last_error_is_reraised_unwrapped(sleeps):
    fn = Flaky(10)
    with pytest.raises(ConnectionError, match=r"^failure 3$") as info:
        retry(fn, sleep=sleeps.append)
    assert info.value is fn.raised[-1]
    assert (3, [1.0, 2.0]) == (fn.calls, sleeps)


def test_predicate_decides_what_is_retried(sleeps):
    fn = Flaky(2, error=ValueError)
    assert "ok" == retry(fn, retry_on=lambda exc: "failure" in str(exc), sleep=sleeps.append)
    fn = Flaky(2, error=ValueError)
    with pytest.raises(ValueError, match=r"^failure 1$"):
        retry(fn, retry_on=lambda exc: False, sleep=sleeps.append)
    assert 1 == fn.calls


def test_an_error_not_matching_retry_on_is_reraised_at_once(sleeps):
    fn = Flaky(2, error=KeyError)
    with pytest.raises(KeyError):
        retry(fn, retry_on=ConnectionError, sleep=sleeps.append)
    assert (1, []) == (fn.calls, sleeps)


def test_retry_on_takes_a_tuple_of_types(sleeps):
    fn = Flaky(2, error=TimeoutError)
    assert "ok" == retry(fn, retry_on=(ConnectionError, TimeoutError), sleep=sleeps.append)


def test_base_exceptions_are_never_retried(sleeps):
    fn = Flaky(2, error=KeyboardInterrupt)
    with pytest.raises(KeyboardInterrupt):
        retry(fn, retry_on=lambda exc: True, sleep=sleeps.append)
    assert 1 == fn.calls


def test_max_attempts_1_means_no_retry(sleeps):
    fn = Flaky(1)
    with pytest.raises(ConnectionError):
        retry(fn, max_attempts=1, sleep=sleeps.append)
    assert (1, []) == (fn.calls, sleeps)


def test_on_retry_sees_attempt_error_and_delay_before_each_sleep(sleeps):
    seen = []
    fn = Flaky(2)

    def on_retry(attempt, exc, delay):
        seen.append((attempt, exc, delay, len(sleeps)))

    retry(fn, backoff="linear", base_delay=0.5, sleep=sleeps.append, on_retry=on_retry)
    assert [(1, fn.raised[0], 0.5, 0), (2, fn.raised[1], 1.0, 1)] == seen


@pytest.mark.parametrize(
    ("backoff", "expected"),
    [
        ("none", [0, 0, 0]),
        ("immediate", [0, 0.1, 0.2]),
        ((0.3, 0.7), [0.3, 0.7, 0.7]),
        (lambda n: n / 10, [0.1, 0.2, 0.3]),
    ],
)
def test_any_backoff_spec_works(backoff, expected, sleeps):
    retry(Flaky(3), max_attempts=4, backoff=backoff, sleep=sleeps.append)
    assert expected == sleeps


def test_max_delay_caps_the_sleeps(sleeps):
    retry(Flaky(5), max_attempts=6, max_delay=3.0, sleep=sleeps.append)
    assert [1, 2, 3, 3, 3] == sleeps


def test_jitter_uses_the_injected_rng(sleeps):
    retry(
        Flaky(4),
        max_attempts=5,
        backoff="decorrelated_jitter",
        rng=random.Random(3),
        sleep=sleeps.append,
    )
    again = []
    retry(
        Flaky(4),
        max_attempts=5,
        backoff="decorrelated_jitter",
        rng=random.Random(3),
        sleep=again.append,
    )
    assert sleeps == again
    assert all(1.0 <= s <= 30.0 for s in sleeps)


def test_each_attempt_goes_through_the_circuit(sleeps):
    breaker = CircuitBreaker(failure_threshold=3)
    fn = Flaky(2)
    assert "ok" == retry(fn, circuit=breaker, sleep=sleeps.append)
    assert 0 == breaker.failure_count  # the final success reset the count


def test_an_open_circuit_stops_the_retries(sleeps):
    breaker = CircuitBreaker(failure_threshold=2, timeout=60.0, clock=lambda: 0.0)
    fn = Flaky(10)
    with pytest.raises(CircuitOpenError) as info:
        retry(fn, max_attempts=5, circuit=breaker, sleep=sleeps.append)
    assert (2, [1.0, 2.0], 60.0) == (fn.calls, sleeps, info.value.retry_after)


def test_circuit_open_error_raised_by_fn_is_not_retried(sleeps):
    def refuse():
        raise CircuitOpenError("downstream circuit is open")

    with pytest.raises(CircuitOpenError, match=r"^downstream circuit is open$"):
        retry(refuse, retry_on=lambda exc: True, sleep=sleeps.append)
    assert [] == sleeps


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"max_attempts": 0}, ValueError, r"^max_attempts: expected an integer >= 1, got 0$"),
        ({"max_attempts": "3"}, TypeError, r"^max_attempts: expected an integer >= 1, got '3'$"),
        ({"retry_on": "ConnectionError"}, TypeError, r"^retry_on: expected an exception type"),
        ({"retry_on": (ValueError, 3)}, TypeError, r"^retry_on: expected exception types, got"),
        ({"backoff": "expo"}, ValueError, r"^backoff: unknown schedule 'expo'"),
    ],
)
def test_bad_options_fail_before_calling(options, error, message):
    fn = Flaky(0)
    with pytest.raises(error, match=message):
        retry(fn, **options)
    assert 0 == fn.calls
    with pytest.raises(error, match=message):
        retrying(**options)


def test_decorator_retries_every_call_with_its_arguments(sleeps):
    calls = []

    @retrying(max_attempts=4, backoff="linear", base_delay=0.1, sleep=sleeps.append)
    def add(x, y=0):
        """Add, failing on the first call of each pair."""
        calls.append((x, y))
        if len(calls) % 2:
            raise ConnectionError("flaky")
        return x + y

    assert 3 == add(1, y=2)
    assert 7 == add(3, 4)
    assert [(1, 2), (1, 2), (3, 4), (3, 4)] == calls
    assert [0.1, 0.1] == sleeps
    assert ("add", "Add, failing on the first call of each pair.") == (add.__name__, add.__doc__)
    assert 4 == add.retry_options["max_attempts"]


def test_decorator_reraises_the_last_error(sleeps):
    @retrying(max_attempts=2, sleep=sleeps.append)
    def always():
        raise TimeoutError("slow")

    with pytest.raises(TimeoutError, match=r"^slow$"):
        always()
    assert [1.0] == sleeps
