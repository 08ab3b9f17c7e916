"""What a worker counts about the calls it serves: calls, errors by category, latency.

Counted where the calls are served (the serving loop), with plain integers and a fixed
bucket list: no lock, no allocation per call, no metrics library in the worker. The
worker's control thread reads a snapshot when its supervisor forwards a `GetMetrics`
request (the service root's metrics server asks; nobody else pays for it).

The serving loop is the only writer. The control thread reads while it may be writing:
each counter read is atomic under the GIL, so a snapshot is at worst one call behind on
one counter, never garbage, and every counter only grows.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any

__all__ = ["CallMeter", "BOUNDS"]

BOUNDS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
          0.5, 1.0, 2.5, 5.0, 10.0)
"""Upper bounds (seconds, inclusive) of the latency buckets; one more bucket takes the rest."""


class CallMeter:
    """Counters of one worker process's served calls (see the module docstring)."""

    __slots__ = ("calls", "errors", "counts", "seconds")

    def __init__(self) -> None:
        self.calls = 0  # commands run (a map chunk counts its items)
        self.errors: dict[str, int] = {}  # failed commands by category
        self.counts = [0] * (len(BOUNDS) + 1)  # command frames by latency bucket
        self.seconds = 0.0  # the latencies' sum

    def observe(self, seconds: float, calls: int = 1) -> None:
        """One command frame served in `seconds`, running `calls` commands."""
        self.calls += calls
        self.counts[bisect_left(BOUNDS, seconds)] += 1
        self.seconds += seconds

    def error(self, category: str) -> None:
        self.errors[category] = self.errors.get(category, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """The counters as plain values (what `GetMetrics` answers)."""
        return {"calls": self.calls, "errors": dict(self.errors), "bounds": list(BOUNDS),
                "counts": list(self.counts), "seconds": self.seconds}
