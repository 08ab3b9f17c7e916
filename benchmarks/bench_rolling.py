"""Rolling restart under load: replace every worker of a 4-worker pool while one thread
keeps 256 calls in flight at full rate, and count what callers lose.

Contenders, measured in one run, each `rounds` times:

    ours: rolling_restart      app.rolling_restart("p"): each replacement is ready before
                               the worker it replaces leaves; that one finishes what it
                               runs, answers what was sent meanwhile NotRun, and the pool
                               client sends those calls again to a live worker
    ours: stop-then-start      terminate_child + restart_child per worker, one at a time
                               (what `restart PATH` and supervisord's restart do)
    ProcessPoolExecutor swap   a new ProcessPoolExecutor(4) warmed up, new calls sent to
                               it, then the old one's shutdown(wait=True): the blue-green
                               deploy by hand, for a pool that has no restart of its own

The load: a thread submits `echo(1)` and takes results oldest first, keeping 256 calls in
flight; every completion time is recorded (perf_counter_ns, outside the timed work only an
append). Per round: failed calls, the roll's duration, throughput during the roll as a
share of the 0.5 s before it, and the longest gap between two completions during the roll
(the stall a caller sees), and per round a timeline of completions per 10 ms around the
roll (``python -m benchmarks.plot`` draws the median round's as rolling_restart.png).
Nothing is asserted: numbers go to the table and to ``benchmarks/results/rolling.json``.

Run: ``python -m benchmarks.bench_rolling [--quick]``.
"""

from __future__ import annotations

import collections
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

from benchmarks._util import echo, parse_args, print_table, report_leftovers, write_json

NAME = "rolling"
IN_FLIGHT = 256
SIZE = 4
BEFORE = 0.5  # seconds of load measured before the roll (the baseline)
BUCKET_MS = 10  # the chart's time step


class Load:
    """One thread keeping IN_FLIGHT calls in flight through `submit()` (which may change
    target between calls), recording each completion's time and each failure."""

    def __init__(self, submit: Callable[[], Any]) -> None:
        self.submit = submit
        self.done: list[int] = []
        self.failed: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        window: collections.deque = collections.deque()
        done, clock = self.done, time.perf_counter_ns
        while not self.stop.is_set() or window:
            while not self.stop.is_set() and len(window) < IN_FLIGHT:
                window.append(self.submit())
            future = window.popleft()
            try:
                future.result(60)
            except Exception as exc:  # the caller's loss: counted, never raised
                self.failed.append(f"{type(exc).__name__}: {exc}"[:200])
            done.append(clock())

    def __enter__(self) -> Load:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop.set()
        self.thread.join(120)


def _measure(load: Load, roll: Callable[[], Any]) -> dict[str, float]:
    # Warm up, then BEFORE seconds of baseline, then the roll.
    while len(load.done) < 4 * IN_FLIGHT:
        time.sleep(0.01)
    time.sleep(BEFORE)
    failed_before = len(load.failed)
    t0 = time.perf_counter_ns()
    roll()
    t1 = time.perf_counter_ns()
    time.sleep(0.2)  # the calls sent during the roll complete (or fail) after it
    done = list(load.done)
    base = [t for t in done if t0 - BEFORE * 1e9 <= t < t0]
    during = [t for t in done if t0 <= t < t1]
    rate_before = len(base) / BEFORE
    rate_during = len(during) / ((t1 - t0) / 1e9)
    edges = [t0, *during, t1]
    gap = max(b - a for a, b in zip(edges, edges[1:], strict=False))
    # Completions per BUCKET_MS from 0.2 s before the roll to 0.2 s after it (for the chart).
    start, width = t0 - 200_000_000, BUCKET_MS * 1_000_000
    timeline = [0] * int((t1 + 200_000_000 - start) // width + 1)
    for t in done:
        if start <= t < start + width * len(timeline):
            timeline[(t - start) // width] += 1
    return {"failed": len(load.failed) - failed_before, "roll_s": (t1 - t0) / 1e9,
            "rate_before": rate_before, "share_during": rate_during / rate_before,
            "longest_gap_ms": gap / 1e6, "timeline": timeline}


def ours(rounds: int, rolling: bool) -> list[dict[str, float]]:
    import supervisor
    from supervisor import Pool, Supervisor, telemetry
    from workers.echo import Echo

    app = supervisor.start(Supervisor("root", max_restarts=1000, max_seconds=1,
                                      children=[Pool("p", Echo, size=SIZE)]))
    telemetry.detach(telemetry.DEFAULT_REPORTER)
    try:
        pool = app.pool("p")

        def stop_then_start() -> None:
            for i in range(SIZE):
                app.terminate_child("p", f"p-{i}")
                app.restart_child("p", f"p-{i}")

        roll = (lambda: app.rolling_restart("p")) if rolling else stop_then_start
        out = []
        for _ in range(rounds):
            with Load(lambda: pool.submit("echo", 1)) as load:
                out.append(_measure(load, roll))
        return out
    finally:
        app.stop(timeout=30)


def ppe_swap(rounds: int) -> list[dict[str, float]]:
    from concurrent.futures import ProcessPoolExecutor, wait

    current = [ProcessPoolExecutor(SIZE)]

    def swap() -> None:
        fresh = ProcessPoolExecutor(SIZE)
        wait([fresh.submit(echo, 1) for _ in range(SIZE * 4)])  # its workers are up
        old, current[0] = current[0], fresh
        old.shutdown(wait=True)

    try:
        out = []
        for _ in range(rounds):
            with Load(lambda: current[0].submit(echo, 1)) as load:
                out.append(_measure(load, swap))
        return out
    finally:
        current[0].shutdown(wait=True, cancel_futures=True)


def _summary(samples: list[dict[str, Any]]) -> dict[str, float]:
    keys = [k for k in samples[0] if k != "timeline"]
    out = {f"{k}_median": statistics.median(s[k] for s in samples) for k in keys}
    out["failed_total"] = sum(s["failed"] for s in samples)
    out["longest_gap_ms_max"] = max(s["longest_gap_ms"] for s in samples)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args("Rolling restart of a 4-worker pool at full submit rate.", argv)
    rounds = 3 if args.quick else 7
    results: dict[str, Any] = {}
    # The forking peer goes first, before this process starts any thread of ours.
    for name, run in (("ProcessPoolExecutor swap", lambda: ppe_swap(rounds)),
                      ("ours: rolling_restart", lambda: ours(rounds, rolling=True)),
                      ("ours: stop-then-start", lambda: ours(rounds, rolling=False))):
        samples = run()
        results[name] = {"samples": samples, **_summary(samples)}
    rows = [[name, f"{r['failed_total']}", f"{r['roll_s_median'] * 1000:.0f} ms",
             f"{r['rate_before_median'] / 1000:.0f}k/s",
             f"{r['share_during_median']:.0%}",
             f"{r['longest_gap_ms_median']:.0f} / {r['longest_gap_ms_max']:.0f} ms"]
            for name, r in results.items()]
    print_table(f"Replacing all {SIZE} workers under load ({IN_FLIGHT} calls in flight), "
                f"median of {rounds} rounds",
                ["contender", "failed calls", "roll", "rate before", "rate during roll",
                 "longest stall p50 / max"], rows)
    ours_r = results["ours: rolling_restart"]
    print(f"\nsummary: rolling_restart failed {ours_r['failed_total']} calls in {rounds} "
          f"rolls; throughput during the roll {ours_r['share_during_median']:.0%} of before")
    write_json(NAME, {"quick": args.quick, "rounds": rounds, "in_flight": IN_FLIGHT,
                      "size": SIZE, "bucket_ms": BUCKET_MS, "results": results})
    report_leftovers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
