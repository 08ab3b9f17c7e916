"""The circuit breaker: thresholds, timeout, half-open limit, callbacks, threads, and a model."""

import itertools
import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.circuit import (
    TRANSITIONS,
    CircuitBreaker,
    CircuitEvent,
    CircuitOpenError,
    CircuitState,
)

CLOSED, OPEN, HALF_OPEN = CircuitState.closed, CircuitState.open, CircuitState.half_open


class FakeClock:
    def __init__(self, now=1000.0):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def changes():
    return []


@pytest.fixture
def breaker(clock, changes):
    return CircuitBreaker(clock=clock, on_state_change=lambda old, new: changes.append((old, new)))


def fail(breaker, times=1):
    for _ in range(times):
        breaker.record_failure()


def open_then_half_open(breaker, clock):
    fail(breaker, 5)
    clock.advance(60.0)
    assert breaker.allow()


def boom():
    raise RuntimeError("boom")


# -- the table -------------------------------------------------------------------------------


def test_transition_table():
    assert {
        (CLOSED, CircuitEvent.tripped): OPEN,
        (OPEN, CircuitEvent.timeout_elapsed): HALF_OPEN,
        (HALF_OPEN, CircuitEvent.trial_failed): OPEN,
        (HALF_OPEN, CircuitEvent.recovered): CLOSED,
        (CLOSED, CircuitEvent.reset): CLOSED,
        (OPEN, CircuitEvent.reset): CLOSED,
        (HALF_OPEN, CircuitEvent.reset): CLOSED,
    } == TRANSITIONS
    for state, event in itertools.product(CircuitState, CircuitEvent):
        assert (event == CircuitEvent.reset) <= ((state, event) in TRANSITIONS)


def test_states_are_str_enums():
    assert ["closed", "open", "half_open"] == list(CircuitState)
    assert "open" == OPEN


# -- behaviour -------------------------------------------------------------------------------


def test_opens_after_failure_threshold_consecutive_failures(breaker):
    fail(breaker, 4)
    assert CLOSED == breaker.state
    assert breaker.allow()
    fail(breaker)
    assert OPEN == breaker.state
    assert not breaker.allow()


def test_a_success_resets_the_failure_count(breaker):
    fail(breaker, 4)
    breaker.record_success()
    fail(breaker, 4)
    assert (CLOSED, 4) == (breaker.state, breaker.failure_count)


def test_half_open_after_the_timeout(breaker, clock):
    fail(breaker, 5)
    clock.advance(59.5)
    assert not breaker.allow()
    assert 0.5 == breaker.time_until_retry()
    clock.advance(0.5)
    assert 0.0 == breaker.time_until_retry()
    assert HALF_OPEN == breaker.state  # reading the state applies the elapsed timeout
    assert breaker.allow()


def test_half_open_lets_at_most_half_open_requests_trials_in_flight(breaker, clock):
    open_then_half_open(breaker, clock)
    assert [True, True, False, False] == [breaker.allow() for _ in range(4)]
    assert 3 == breaker.trials_in_flight
    breaker.record_success()
    assert [True, False] == [breaker.allow() for _ in range(2)]


def test_closes_after_success_threshold_successes(breaker, clock):
    open_then_half_open(breaker, clock)
    breaker.record_success()
    breaker.record_success()
    assert HALF_OPEN == breaker.state
    breaker.record_success()
    assert (CLOSED, 0, 0) == (breaker.state, breaker.failure_count, breaker.success_count)
    fail(breaker, 4)
    assert CLOSED == breaker.state  # the failure count started again from zero


def test_success_threshold_above_the_trial_limit_still_closes(clock):
    breaker = CircuitBreaker(success_threshold=5, half_open_requests=2, clock=clock)
    open_then_half_open(breaker, clock)
    for _ in range(5):
        breaker.allow()
        breaker.record_success()
    assert CLOSED == breaker.state


def test_any_failure_in_half_open_reopens_for_a_full_timeout(breaker, clock):
    open_then_half_open(breaker, clock)
    breaker.record_success()
    clock.advance(10.0)
    breaker.record_failure()
    assert OPEN == breaker.state
    assert 60.0 == breaker.time_until_retry()
    clock.advance(59.0)
    assert not breaker.allow()
    clock.advance(1.0)
    assert breaker.allow()


def test_results_recorded_while_open_are_ignored(breaker, clock):
    fail(breaker, 5)
    clock.advance(30.0)
    breaker.record_success()
    breaker.record_failure()
    assert (OPEN, 30.0) == (breaker.state, breaker.time_until_retry())


def test_callback_sees_every_transition_in_order(breaker, clock, changes):
    open_then_half_open(breaker, clock)
    breaker.record_failure()
    clock.advance(60.0)
    for _ in range(3):
        assert breaker.allow()
        breaker.record_success()
    breaker.reset()  # already closed: no change to report
    fail(breaker, 5)
    breaker.reset()
    assert [
        (CLOSED, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, OPEN),
        (OPEN, HALF_OPEN),
        (HALF_OPEN, CLOSED),
        (CLOSED, OPEN),
        (OPEN, CLOSED),
    ] == changes


def test_callback_may_use_the_breaker_without_deadlocking(clock):
    seen = []

    def on_change(old, new):
        seen.append((new, breaker.state, breaker.time_until_retry(), breaker.allow()))

    breaker = CircuitBreaker(
        failure_threshold=1, timeout=5.0, clock=clock, on_state_change=on_change
    )
    breaker.record_failure()
    assert [(OPEN, OPEN, 5.0, False)] == seen


def test_reset_forgets_everything(breaker, clock):
    fail(breaker, 5)
    breaker.reset()
    assert (CLOSED, 0) == (breaker.state, breaker.failure_count)
    assert breaker.allow()


def test_call_returns_the_result_and_records_success(breaker):
    fail(breaker, 4)
    assert 3 == breaker.call(lambda x, y=0: x + y, 1, y=2)
    assert 0 == breaker.failure_count


def test_call_reraises_the_functions_error_and_records_failure(breaker):
    for _ in range(5):
        with pytest.raises(RuntimeError, match=r"^boom$"):
            breaker.call(boom)
    assert OPEN == breaker.state


def test_call_when_open_raises_circuit_open_error_saying_when(clock):
    breaker = CircuitBreaker(failure_threshold=1, timeout=60.0, clock=clock, name="db")
    breaker.record_failure()
    clock.advance(15.5)
    called = []
    with pytest.raises(
        CircuitOpenError, match=r"^circuit 'db' is open; next trial call allowed in 44\.500s$"
    ) as info:
        breaker.call(called.append, 1)
    assert (44.5, []) == (info.value.retry_after, called)


def test_call_when_half_open_limit_is_reached_has_retry_after_zero(clock):
    breaker = CircuitBreaker(failure_threshold=1, half_open_requests=1, clock=clock)
    breaker.record_failure()
    clock.advance(60.0)
    assert breaker.allow()
    message = (
        r"^circuit is half-open with all 1 trial calls in flight; retry when one of them finishes$"
    )
    with pytest.raises(CircuitOpenError, match=message) as info:
        breaker.call(lambda: None)
    assert 0.0 == info.value.retry_after


def test_interrupted_trial_frees_its_slot_without_counting(clock):
    breaker = CircuitBreaker(failure_threshold=1, half_open_requests=1, clock=clock)
    breaker.record_failure()
    clock.advance(60.0)

    def interrupted():
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        breaker.call(interrupted)
    assert (HALF_OPEN, 0, 0) == (breaker.state, breaker.trials_in_flight, breaker.success_count)


def test_a_slow_call_from_before_the_trip_does_not_count_as_a_trial(breaker, clock):
    def slow():
        fail(breaker, 5)  # other callers trip the breaker meanwhile...
        clock.advance(60.0)
        assert [True, True, True] == [breaker.allow() for _ in range(3)]  # ...and it goes half-open
        return "late"

    assert "late" == breaker.call(slow)
    assert (HALF_OPEN, 3, 0) == (breaker.state, breaker.trials_in_flight, breaker.success_count)


def test_circuit_open_error_supports_cooperative_multiple_inheritance():
    class WorkerError(Exception):
        def __init__(self, message, *, path=None):
            super().__init__(message)
            self.path = path

    class CircuitOpen(WorkerError, CircuitOpenError):
        def __init__(self, message, *, retry_at=None, **kwargs):
            self.retry_at = retry_at
            super().__init__(message, **kwargs)

    error = CircuitOpen("down", retry_at=5.0, path="jobs/job-1")
    assert ("down", "jobs/job-1", 5.0, None) == (
        str(error),
        error.path,
        error.retry_at,
        error.retry_after,
    )
    assert isinstance(error, CircuitOpenError)
    assert CircuitOpenError.__init__ is Exception.__init__


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"failure_threshold": 0},
            ValueError,
            r"^failure_threshold: expected an integer >= 1, got 0$",
        ),
        (
            {"success_threshold": -1},
            ValueError,
            r"^success_threshold: expected an integer >= 1, got -1$",
        ),
        (
            {"half_open_requests": 0},
            ValueError,
            r"^half_open_requests: expected an integer >= 1, got 0$",
        ),
        ({"timeout": -1.0}, ValueError, r"^timeout: expected a number of seconds >= 0, got -1\.0$"),
        ({"timeout": "60"}, TypeError, r"^timeout: expected a number of seconds >= 0, got '60'$"),
        (
            {"failure_threshold": 2.5},
            TypeError,
            r"^failure_threshold: expected an integer >= 1, got 2\.5$",
        ),
    ],
)
def test_invalid_parameters_name_the_field(options, error, message):
    with pytest.raises(error, match=message):
        CircuitBreaker(**options)


# -- threads ---------------------------------------------------------------------------------


def run_threads(count, target):
    barrier = threading.Barrier(count)
    results = [None] * count

    def run(index):
        barrier.wait(timeout=10)
        results[index] = target()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    return results


def test_concurrent_failures_are_all_counted():
    breaker = CircuitBreaker(failure_threshold=10**9)

    def record():
        for _ in range(500):
            breaker.record_failure()

    run_threads(8, record)
    assert (CLOSED, 4000) == (breaker.state, breaker.failure_count)


def test_concurrent_trials_respect_the_half_open_limit(clock):
    breaker = CircuitBreaker(failure_threshold=1, half_open_requests=5, clock=clock)
    breaker.record_failure()
    clock.advance(60.0)
    results = run_threads(16, breaker.allow)
    assert (5, 5) == (results.count(True), breaker.trials_in_flight)


def test_concurrent_trip_is_reported_once(clock, changes):
    breaker = CircuitBreaker(
        failure_threshold=100,
        clock=clock,
        on_state_change=lambda old, new: changes.append((old, new)),
    )

    def record():
        for _ in range(50):
            breaker.record_failure()

    run_threads(8, record)
    assert (OPEN, [(CLOSED, OPEN)]) == (breaker.state, changes)


# -- model -----------------------------------------------------------------------------------


class Model:
    """The documented behaviour, spelled out with plain ifs."""

    def __init__(self, failure_threshold, success_threshold, timeout, half_open_requests):
        self.limits = (failure_threshold, success_threshold, timeout, half_open_requests)
        self.state, self.failures, self.successes, self.in_flight, self.opened_at = (
            CLOSED,
            0,
            0,
            0,
            0.0,
        )

    def tick(self, now):
        if self.state == OPEN and now - self.opened_at >= self.limits[2]:
            self.state, self.successes, self.in_flight = HALF_OPEN, 0, 0

    def allow(self, now):
        self.tick(now)
        if self.state == HALF_OPEN and self.in_flight < self.limits[3]:
            self.in_flight += 1
            return True
        return self.state == CLOSED

    def success(self, now):
        self.tick(now)
        if self.state == CLOSED:
            self.failures = 0
        elif self.state == HALF_OPEN:
            self.in_flight = max(0, self.in_flight - 1)
            self.successes += 1
            if self.successes >= self.limits[1]:
                self.state, self.failures, self.successes, self.in_flight = CLOSED, 0, 0, 0

    def failure(self, now):
        self.tick(now)
        if self.state == CLOSED:
            self.failures += 1
            if self.failures >= self.limits[0]:
                self.state, self.opened_at = OPEN, now
        elif self.state == HALF_OPEN:
            self.state, self.opened_at, self.successes, self.in_flight = OPEN, now, 0, 0


operations = st.lists(
    st.one_of(
        st.just(("allow",)),
        st.just(("success",)),
        st.just(("failure",)),
        st.tuples(st.just("advance"), st.sampled_from([0.5, 1.0, 2.0, 5.0])),
    ),
    max_size=80,
)


@given(
    limits=st.tuples(
        st.integers(1, 4), st.integers(1, 4), st.sampled_from([0.0, 1.0, 3.0]), st.integers(1, 3)
    ),
    ops=operations,
)
def test_breaker_matches_the_model(limits, ops):
    clock = FakeClock(0.0)
    changes = []
    breaker = CircuitBreaker(*limits, clock=clock, on_state_change=lambda o, n: changes.append(n))
    model = Model(*limits)
    for op in ops:
        if op[0] == "advance":
            clock.advance(op[1])
        elif op[0] == "allow":
            assert model.allow(clock.now) == breaker.allow()
        elif op[0] == "success":
            model.success(clock.now)
            breaker.record_success()
        elif op[0] == "failure":
            model.failure(clock.now)
            breaker.record_failure()
        model.tick(clock.now)  # reading breaker.state below applies an elapsed timeout too
        assert model.state == breaker.state
        assert (model.successes, model.in_flight) == (
            breaker.success_count,
            breaker.trials_in_flight,
        )
        if model.state == CLOSED:
            assert model.failures == breaker.failure_count
    if changes:
        assert changes[-1] == breaker.state  # the last reported change is the current state
