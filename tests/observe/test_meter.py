"""The worker's call meter: Prometheus' bucket rule (a bound is inclusive), its snapshot."""

from __future__ import annotations

from supervisor.runtime.meter import BOUNDS, CallMeter


def test_a_latency_lands_in_the_first_bucket_whose_bound_it_does_not_exceed():
    meter = CallMeter()
    for seconds in (0.0, BOUNDS[0], BOUNDS[0] * 1.0001, BOUNDS[-1], BOUNDS[-1] * 2):
        meter.observe(seconds)
    counts = meter.snapshot()["counts"]
    assert counts[0] == 2 and counts[1] == 1
    assert counts[len(BOUNDS) - 1] == 1 and counts[len(BOUNDS)] == 1  # the last bound; +Inf
    assert sum(counts) == 5


def test_the_snapshot_is_plain_values_that_only_grow():
    meter = CallMeter()
    meter.observe(0.002, calls=256)  # a map chunk: one frame, its items counted as calls
    meter.error("python_error")
    meter.error("python_error")
    meter.error("communication_error")
    first = meter.snapshot()
    assert first == {"calls": 256, "errors": {"python_error": 2, "communication_error": 1},
                     "bounds": list(BOUNDS), "counts": first["counts"], "seconds": 0.002}
    assert first["counts"][BOUNDS.index(0.0025)] == 1
    meter.observe(0.5)
    first["errors"]["python_error"] = 99  # a copy: the meter is not changed through it
    second = meter.snapshot()
    assert second["calls"] == 257 and second["errors"]["python_error"] == 2
