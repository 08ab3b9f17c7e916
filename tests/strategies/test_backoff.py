"""Backoff schedules: exact sequences, scaling, capping, tables, callables, jitter state."""

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.backoff import (
    IMMEDIATE_TABLE,
    SCHEDULE_NAMES,
    DecorrelatedJitter,
    Schedule,
    delay,
    make_schedule,
)

ATTEMPTS = range(1, 9)
UNCAPPED = 1e9

EXPECTED_SEQUENCES = {
    "none": [0, 0, 0, 0, 0, 0, 0, 0],
    "linear": [1, 2, 3, 4, 5, 6, 7, 8],
    "exponential": [1, 2, 4, 8, 16, 32, 64, 128],
    "fibonacci": [1, 1, 2, 3, 5, 8, 13, 21],
    "immediate": [0, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
}


def sequence(spec, **options):
    schedule = make_schedule(spec, **options)
    return [schedule.delay(n) for n in ATTEMPTS]


class MaxRng:
    """An rng whose uniform(a, b) always returns b: makes the jitter chain predictable."""

    def __init__(self):
        self.calls = []

    def uniform(self, a, b):
        self.calls.append((a, b))
        return b


def test_schedule_names_are_exactly_the_documented_ones():
    assert (
        "none",
        "linear",
        "exponential",
        "fibonacci",
        "decorrelated_jitter",
        "immediate",
    ) == SCHEDULE_NAMES


@pytest.mark.parametrize("name", sorted(EXPECTED_SEQUENCES))
def test_exact_sequence_for_attempts_1_to_8(name):
    assert EXPECTED_SEQUENCES[name] == sequence(name, max_delay=UNCAPPED)


def test_default_max_delay_caps_exponential_at_30_seconds():
    assert [1, 2, 4, 8, 16, 30, 30, 30] == sequence("exponential")


@pytest.mark.parametrize(
    ("name", "base", "expected"),
    [
        ("linear", 0.5, [0.5, 1, 1.5, 2, 2.5, 3, 3.5, 4]),
        ("exponential", 0.25, [0.25, 0.5, 1, 2, 4, 8, 16, 32]),
        ("fibonacci", 2.0, [2, 2, 4, 6, 10, 16, 26, 42]),
        ("none", 5.0, [0, 0, 0, 0, 0, 0, 0, 0]),
    ],
)
def test_named_schedules_scale_by_base_delay(name, base, expected):
    assert expected == sequence(name, base_delay=base, max_delay=UNCAPPED)


def test_exponential_with_a_small_base_gives_the_retry_example_delays():
    assert [0.01, 0.02, 0.04] == sequence("exponential", base_delay=0.01)[:3]


def test_immediate_is_not_scaled_by_base_delay_but_is_capped():
    assert [0, 0.1, 0.2, 0.2] == sequence("immediate", base_delay=7.0)[:4]
    assert [0, 0.1, 0.15, 0.15] == sequence("immediate", max_delay=0.15)[:4]
    assert (0.0, 0.1, 0.2) == IMMEDIATE_TABLE


@pytest.mark.parametrize("name", SCHEDULE_NAMES)
def test_every_named_schedule_is_capped_by_max_delay(name):
    uncapped = sequence(name, max_delay=UNCAPPED, rng=random.Random(7))
    capped = sequence(name, max_delay=3.0, rng=random.Random(7))
    assert all(0 <= d <= 3.0 for d in capped)
    if name != "decorrelated_jitter":  # the jitter chain depends on earlier (capped) draws
        assert [min(3.0, d) for d in uncapped] == capped


def test_explicit_table_repeats_its_last_value_and_is_not_scaled():
    assert [0.5, 1, 5, 5, 5, 5, 5, 5] == sequence((0.5, 1.0, 5.0), base_delay=10.0)
    assert [0.5, 1, 5, 5, 5, 5, 5, 5] == sequence([0.5, 1, 5])


def test_explicit_table_is_capped_by_max_delay():
    assert [1, 2, 2, 2, 2, 2, 2, 2] == sequence((1, 100), max_delay=2.0)


@pytest.mark.parametrize(
    ("table", "error", "message"),
    [
        ((), ValueError, r"^backoff table: expected at least one delay, got an empty table$"),
        ((1, -2), ValueError, r"^backoff\[1\]: expected a number of seconds >= 0, got -2$"),
        ((1, "2"), TypeError, r"^backoff\[1\]: expected a number of seconds >= 0, got '2'$"),
        (
            (float("nan"),),
            ValueError,
            r"^backoff\[0\]: expected a number of seconds >= 0, got nan$",
        ),
    ],
)
def test_bad_tables_are_rejected(table, error, message):
    with pytest.raises(error, match=message):
        make_schedule(table)


def test_callable_gives_seconds_unscaled_and_capped():
    assert [1, 4, 9, 16, 25, 30, 30, 30] == sequence(lambda n: n * n, base_delay=10.0)


def test_callable_returning_a_negative_delay_is_an_error():
    schedule = make_schedule(lambda n: -1.0)
    with pytest.raises(
        ValueError, match=r"^backoff\(2\): expected a number of seconds >= 0, got -1\.0$"
    ):
        schedule.delay(2)


def test_callable_returning_a_non_number_is_an_error():
    with pytest.raises(
        TypeError, match=r"^backoff\(1\): expected a number of seconds >= 0, got 'soon'$"
    ):
        make_schedule(lambda n: "soon").delay(1)


@pytest.mark.timeout(5)
def test_fibonacci_80_computes_instantly():
    schedule = make_schedule("fibonacci", max_delay=float("inf"))
    assert 23416728348467685 == pytest.approx(schedule.delay(80), rel=1e-15)
    assert 30.0 == make_schedule("fibonacci").delay(10**7)


@pytest.mark.timeout(5)
def test_huge_attempts_do_not_overflow():
    assert 30.0 == make_schedule("exponential").delay(10**9)
    assert 30.0 == make_schedule("linear").delay(10**12)
    assert 0.0 == make_schedule("exponential", base_delay=0).delay(10**9)
    assert 5.0 == make_schedule("decorrelated_jitter", max_delay=5.0, rng=MaxRng()).delay(10**9)


def test_decorrelated_jitter_follows_the_aws_formula_with_an_injected_rng():
    rng = MaxRng()
    schedule = make_schedule("decorrelated_jitter", base_delay=1.0, max_delay=30.0, rng=rng)
    assert [3, 9, 27, 30, 30, 30, 30, 30] == [schedule.delay(n) for n in ATTEMPTS]
    assert [(1, 3), (1, 9), (1, 27), (1, 81), (1, 90), (1, 90), (1, 90), (1, 90)] == rng.calls


@given(seed=st.integers(0, 2**32), base=st.sampled_from([0.01, 0.5, 1.0, 2.0]))
def test_decorrelated_jitter_stays_within_base_and_three_times_previous(seed, base):
    max_delay = 20.0
    schedule = DecorrelatedJitter(base, max_delay, random.Random(seed))
    previous = base
    for attempt in range(1, 30):
        current = schedule.delay(attempt)
        assert min(base, max_delay) <= current <= min(max_delay, 3 * previous)
        previous = current


def test_decorrelated_jitter_is_reproducible_with_a_seeded_rng():
    first = sequence("decorrelated_jitter", rng=random.Random(42))
    second = sequence("decorrelated_jitter", rng=random.Random(42))
    assert first == second
    assert len(set(first)) > 1


def test_two_jitter_schedules_do_not_share_state():
    alone = sequence("decorrelated_jitter", rng=random.Random(1))
    a = make_schedule("decorrelated_jitter", rng=random.Random(1))
    b = make_schedule("decorrelated_jitter", rng=random.Random(1))
    interleaved_a, interleaved_b = [], []
    for n in ATTEMPTS:
        interleaved_a.append(a.delay(n))
        interleaved_b.append(b.delay(n))
    assert alone == interleaved_a == interleaved_b


def test_jitter_attempt_1_and_reset_start_a_new_chain():
    rng = MaxRng()
    schedule = DecorrelatedJitter(1.0, 100.0, rng)
    assert [3, 9] == [schedule.delay(1), schedule.delay(2)]
    assert 3 == schedule.delay(1)
    schedule.delay(2)
    schedule.reset()
    assert 3 == schedule.delay(1)


def test_jitter_skipping_ahead_replays_the_chain():
    assert 27 == DecorrelatedJitter(1.0, 100.0, MaxRng()).delay(3)
    assert 27 == delay("decorrelated_jitter", 3, max_delay=100.0, rng=MaxRng())


def test_default_rng_is_used_when_none_is_given():
    value = make_schedule("decorrelated_jitter").delay(1)
    assert 1.0 <= value <= 3.0


@pytest.mark.parametrize("spec", [*SCHEDULE_NAMES, (1, 2), lambda n: n])
def test_attempt_below_1_is_a_value_error(spec):
    schedule = make_schedule(spec)
    with pytest.raises(ValueError, match=r"^attempt: expected an integer >= 1, got 0$"):
        schedule.delay(0)
    with pytest.raises(TypeError, match=r"^attempt: expected an integer >= 1, got 1\.5$"):
        schedule.delay(1.5)


def test_unknown_name_is_a_value_error_listing_the_valid_ones():
    message = (
        r"^backoff: unknown schedule 'expo'; expected one of none, linear, exponential, "
        r"fibonacci, decorrelated_jitter, immediate$"
    )
    with pytest.raises(ValueError, match=message):
        make_schedule("expo")


@pytest.mark.parametrize("spec", [5, None, b"linear", 2.5])
def test_spec_of_another_type_is_a_type_error(spec):
    with pytest.raises(TypeError, match=r"^backoff: expected a schedule name"):
        make_schedule(spec)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"base_delay": -1}, r"^base_delay: expected a number of seconds >= 0, got -1$"),
        ({"max_delay": -0.5}, r"^max_delay: expected a number of seconds >= 0, got -0\.5$"),
        ({"max_delay": float("nan")}, r"^max_delay: expected a number of seconds >= 0, got nan$"),
    ],
)
def test_bad_base_or_max_delay_is_a_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        make_schedule("linear", **options)


@pytest.mark.parametrize("spec", [*SCHEDULE_NAMES, (1,), lambda n: 1])
def test_every_schedule_satisfies_the_protocol_and_is_passed_through(spec):
    schedule = make_schedule(spec)
    assert isinstance(schedule, Schedule)
    assert schedule is make_schedule(schedule)
    schedule.reset()


def test_delay_convenience_matches_make_schedule():
    assert 8.0 == delay("exponential", 4)
    assert 0.4 == delay("linear", 4, base_delay=0.1)
    assert 2.0 == delay("exponential", 4, max_delay=2.0)
    assert 0.2 == delay("immediate", 9)


@given(
    name=st.sampled_from(["none", "linear", "exponential", "fibonacci"]),
    base=st.floats(0, 100),
    max_delay=st.floats(0, 1000),
    attempt=st.integers(1, 5000),
)
def test_formula_schedules_are_non_decreasing_and_within_bounds(name, base, max_delay, attempt):
    schedule = make_schedule(name, base_delay=base, max_delay=max_delay)
    here, after = schedule.delay(attempt), schedule.delay(attempt + 1)
    assert 0.0 <= here <= after <= max_delay
