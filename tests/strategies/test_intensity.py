"""Restart intensity: OTP's add_restart and the sliding window, against a brute-force model."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.intensity import RestartIntensity, add_restart


class FakeClock:
    def __init__(self, now=0.0):
        self.now = now

    def __call__(self):
        return self.now


def test_add_restart_keeps_the_inclusive_window_and_appends():
    assert (1.0, 5.0, 6.0) == add_restart((0.0, 1.0, 5.0), 6.0, 5.0)  # 6 - 1 == 5 is kept
    assert (6.0,) == add_restart((0.0,), 6.0, 5.0)
    assert (3.0,) == add_restart((), 3.0, 5.0)


def test_exactly_max_restarts_is_fine_one_more_exceeds():
    intensity = RestartIntensity(3, 5.0, clock=FakeClock())
    assert [False, False, False, True] == [intensity.record() for _ in range(4)]


def test_restarts_spread_beyond_the_window_never_exceed():
    intensity = RestartIntensity(1, 5.0)
    assert [False] * 10 == [intensity.record(now=6.0 * i) for i in range(10)]


def test_window_is_inclusive_at_its_edge():
    at_edge = RestartIntensity(1, 5.0)
    assert [False, True] == [at_edge.record(now=0.0), at_edge.record(now=5.0)]
    past_edge = RestartIntensity(1, 5.0)
    assert [False, False] == [past_edge.record(now=0.0), past_edge.record(now=5.001)]


def test_zero_max_restarts_trips_on_the_first():
    assert RestartIntensity(0, 5.0).record(now=1.0) is True


def test_clock_is_used_when_no_time_is_given():
    clock = FakeClock(100.0)
    intensity = RestartIntensity(2, 10.0, clock=clock)
    intensity.record()
    clock.now = 105.0
    intensity.record()
    assert 2 == intensity.count()
    clock.now = 110.5
    assert 1 == intensity.count()
    assert not intensity.exceeded()
    assert intensity.record() is False  # 105 and 110.5 are in the window; 100 has left
    assert (105.0, 110.5) == intensity.restarts


def test_count_and_reset():
    intensity = RestartIntensity(5, 10.0)
    for t in (0.0, 1.0, 2.0):
        intensity.record(now=t)
    assert 3 == intensity.count(now=2.0)
    assert 2 == intensity.count(now=10.5)
    intensity.reset()
    assert 0 == intensity.count(now=2.0)
    assert () == intensity.restarts


@pytest.mark.parametrize(
    ("args", "error", "message"),
    [
        ((-1, 5.0), ValueError, r"^max_restarts: expected an integer >= 0, got -1$"),
        ((3, 0), ValueError, r"^max_seconds: expected a number of seconds > 0, got 0$"),
        ((3, -1.5), ValueError, r"^max_seconds: expected a number of seconds > 0, got -1\.5$"),
        (
            (3, float("nan")),
            ValueError,
            r"^max_seconds: expected a number of seconds > 0, got nan$",
        ),
        (("3", 5.0), TypeError, r"^max_restarts: expected an integer >= 0, got '3'$"),
        ((True, 5.0), TypeError, r"^max_restarts: expected an integer >= 0, got True$"),
        ((3, "5"), TypeError, r"^max_seconds: expected a number of seconds > 0, got '5'$"),
    ],
)
def test_invalid_limits_name_the_field(args, error, message):
    with pytest.raises(error, match=message):
        RestartIntensity(*args)


# Gaps on a 0.5 s grid hit the window's edge exactly; arbitrary floats cover the rest.
gaps = st.lists(
    st.one_of(st.integers(0, 12).map(lambda n: n / 2), st.floats(0, 6, allow_nan=False)),
    min_size=1,
    max_size=40,
)


@given(max_restarts=st.integers(0, 5), max_seconds=st.sampled_from([0.5, 1.0, 2.5, 5.0]), gaps=gaps)
def test_matches_a_brute_force_model(max_restarts, max_seconds, gaps):
    intensity = RestartIntensity(max_restarts, max_seconds)
    history = []
    now = 0.0
    for gap in gaps:
        now += gap
        history.append(now)
        in_window = sum(1 for t in history if now - t <= max_seconds)
        assert (in_window > max_restarts) == intensity.record(now=now)
        assert in_window == intensity.count(now=now)
        assert len(intensity.restarts) == in_window  # pruned to the window, never more
