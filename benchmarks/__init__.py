"""Runnable comparisons against the peers and the physical floor.

    python -m benchmarks [call|restart|many|pool|aio|rolling|ray ...] [--quick]

Each benchmark runs in its own fresh process (so one's children, threads and memory do
not tilt the next), prints a table of p50/p99 and ratios to the raw floor, and writes
``benchmarks/results/<name>.json``. They measure; they assert nothing about speed.
"""

BENCHMARKS = ("call", "restart", "many", "pool", "aio", "rolling", "ray")

__all__ = ["BENCHMARKS"]
