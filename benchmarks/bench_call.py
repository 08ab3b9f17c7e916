"""Tiny-call round trip: the raw floor, our App.call, and the peers, side by side.

Every contender runs in this one process and is alive at once; after a warm-up the
measured calls are interleaved in blocks (rotating which contender goes first), so drift
in the machine's load lands on all of them alike. One sample = one blocking call of a
tiny value (the int 1), timed with ``time.perf_counter_ns``.

Where the processes run decides most of a tiny call's cost (waking another CPU costs more
than the codec), so the same contenders are measured under three placements: free (the
scheduler decides, as users run it), same (every thread of every process on one CPU) and
split (the caller on one CPU, every child on another).

    raw floor        msgspec frame over an AF_UNIX socketpair to a forked child
    ours             app.call("w", "echo", 1) on a one-worker tree (direct socketpair)
    ProcessPool...   ProcessPoolExecutor(1).submit(echo, 1).result()
    mp.Pool          multiprocessing.Pool(1).apply(echo, (1,))
    loky             loky.get_reusable_executor(1).submit(echo, 1).result()
    pebble           pebble.ProcessPool(1).schedule(echo, args=(1,)).result()

Run: ``python -m benchmarks call [--quick]`` (or ``python -m benchmarks.bench_call``).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import attrs
import psutil

from benchmarks._util import (
    FrameClient,
    echo,
    fmt_ratio,
    fmt_us,
    fork_frame_server,
    parse_args,
    print_table,
    ratio,
    reap,
    report_leftovers,
    summarize,
    write_json,
)

NAME = "call"
FLOOR = "raw floor (msgspec/socketpair)"
OURS = "ours: app.call"
PPE = "ProcessPoolExecutor"


@attrs.define
class Contender:
    name: str
    call: Callable[[], Any]


def _floor(stack: contextlib.ExitStack) -> Contender:
    pid, sock = fork_frame_server()
    stack.callback(reap, pid)
    stack.callback(sock.close)  # EOF first: the child exits on its own
    client = FrameClient(sock)
    return Contender(FLOOR, lambda: client.call(1))


def _ours(stack: contextlib.ExitStack) -> Contender:
    import supervisor
    from supervisor import Supervisor, child
    from workers.echo import Echo

    app = supervisor.start(Supervisor("root", children=[child("w", Echo)]))
    stack.callback(app.stop)
    return Contender(OURS, lambda: app.call("w", "echo", 1))


def _ppe(stack: contextlib.ExitStack) -> Contender:
    from concurrent.futures import ProcessPoolExecutor

    ex = ProcessPoolExecutor(max_workers=1)
    stack.callback(ex.shutdown, wait=True, cancel_futures=True)
    return Contender(PPE, lambda: ex.submit(echo, 1).result())


def _mp_pool(stack: contextlib.ExitStack) -> Contender:
    import multiprocessing

    pool = multiprocessing.Pool(1)
    stack.callback(pool.join)
    stack.callback(pool.terminate)
    return Contender("multiprocessing.Pool", lambda: pool.apply(echo, (1,)))


def _loky(stack: contextlib.ExitStack) -> Contender:
    import loky

    ex = loky.get_reusable_executor(max_workers=1)
    stack.callback(ex.shutdown, wait=True, kill_workers=True)
    return Contender("loky", lambda: ex.submit(echo, 1).result())


def _pebble(stack: contextlib.ExitStack) -> Contender:
    import pebble

    pool = pebble.ProcessPool(max_workers=1)
    stack.callback(pool.join)
    stack.callback(pool.stop)
    return Contender("pebble", lambda: pool.schedule(echo, args=(1,)).result())


# The floor forks first, while this process has no threads yet; the peers that fork
# (mp.Pool, ProcessPoolExecutor, pebble) come before those that fork+exec (loky, ours).
SETUPS = [(FLOOR, _floor), ("multiprocessing.Pool", _mp_pool), (PPE, _ppe),
          ("pebble", _pebble), ("loky", _loky), (OURS, _ours)]


def place(mode: str, cpus: list[int]) -> dict[str, list[int]]:
    """Pin every thread of this process and of every descendant for `mode`.

    free: all CPUs, as a user would run it. same: everything on one CPU (a round trip is
    two context switches, no cross-CPU wake-up). split: the caller on one CPU, every
    child process on another (each round trip wakes the other CPU).
    """
    one, other = cpus[0], cpus[-1]
    mine, theirs = {"free": (cpus, cpus), "same": ([one], [one]),
                    "split": ([one], [other])}[mode]
    _pin(os.getpid(), mine)
    for proc in psutil.Process().children(recursive=True):
        _pin(proc.pid, theirs)
    return {"caller": mine, "children": theirs}


def _pin(pid: int, cpus: list[int]) -> None:
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:  # exited
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # that thread has exited
            pass


def measure(contenders: list[Contender], n: int, warmup: int, blocks: int
            ) -> dict[str, list[int]]:
    for c in contenders:
        for _ in range(warmup):
            value = c.call()
            if value != 1:
                raise RuntimeError(f"{c.name} returned {value!r}, expected 1")
    samples: dict[str, list[int]] = {c.name: [] for c in contenders}
    per_block = max(1, n // blocks)
    clock = time.perf_counter_ns
    for b in range(blocks):
        k = b % len(contenders)
        for c in contenders[k:] + contenders[:k]:
            out, fn = samples[c.name], c.call
            for _ in range(per_block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n, warmup, blocks = (500, 50, 5) if args.quick else (5000, 300, 10)
    per_thread = 200 if args.quick else 2000
    cpus = sorted(os.sched_getaffinity(0))
    modes = ["free", "same", "split"] if len(cpus) > 1 else ["free", "same"]
    skipped: dict[str, str] = {}
    samples: dict[str, dict[str, list[int]]] = {}
    placement: dict[str, dict[str, list[int]]] = {}
    with contextlib.ExitStack() as stack:
        contenders = []
        for name, setup in SETUPS:
            try:
                contenders.append(setup(stack))
            except ImportError as exc:
                print(f"{name}: skipped: not installed ({exc})")
                skipped[name] = "not installed"
        for mode in modes:
            placement[mode] = place(mode, cpus)
            print(f"[{mode}] measuring {n} calls per contender after {warmup} warm-up calls,"
                  f" interleaved in {blocks} blocks; CPUs {placement[mode]}", flush=True)
            samples[mode] = measure(contenders, n, warmup, blocks)
        place("free", cpus)
        print(f"[threads] {THREADS} caller threads, {per_thread} calls each, {ROUNDS} rounds "
              "per contender, alternating", flush=True)
        threaded = measure_threads([c for c in contenders if c.name in THREADED],
                                   per_thread, ROUNDS)
    report_leftovers()
    stats: dict[str, dict[str, dict[str, Any]]] = {}
    summary: dict[str, dict[str, float | None]] = {}
    for mode in modes:
        stats[mode] = {name: summarize(s) for name, s in samples[mode].items()}
        summary[mode] = _report(mode, stats[mode], n, contenders)
    summary["threads"] = _report_threads(threaded, per_thread)
    write_json(NAME, {"quick": args.quick, "calls": n, "warmup": warmup, "blocks": blocks,
                      "placement": placement, "results": stats, "summary": summary,
                      "threads": threaded, "skipped": skipped})
    return 0


THREADS, ROUNDS = 4, 3
# The contenders measured with several caller threads: the floor (its one socketpair shared
# under a lock: one call at a time, the least a shared channel can cost), ours (one shared
# direct channel, replies filed by whichever caller reads), and the best peer.
THREADED = (FLOOR, OURS, PPE)


def measure_threads(contenders: list[Contender], per_thread: int, rounds: int
                    ) -> dict[str, dict[str, Any]]:
    """`THREADS` threads each make `per_thread` calls through one contender at once; the
    contenders take turns, `rounds` times. Per contender: the calls/s of its median round
    and the latency percentiles of all its calls."""
    import threading

    results: dict[str, dict[str, Any]] = {}
    rates: dict[str, list[float]] = {c.name: [] for c in contenders}
    samples: dict[str, list[int]] = {c.name: [] for c in contenders}
    for _ in range(rounds):
        for c in contenders:
            call = _serialized(c.call) if c.name == FLOOR else c.call
            per: list[list[int]] = [[] for _ in range(THREADS)]
            go = threading.Barrier(THREADS + 1)

            def run(out: list[int], call: Callable[[], Any] = call,
                    go: threading.Barrier = go) -> None:
                clock = time.perf_counter_ns
                go.wait()
                for _ in range(per_thread):
                    t0 = clock()
                    call()
                    out.append(clock() - t0)

            threads = [threading.Thread(target=run, args=(out,)) for out in per]
            for t in threads:
                t.start()
            go.wait()  # every thread is started: the window opens when they all may go
            t0 = time.perf_counter()
            for t in threads:
                t.join()
            elapsed = time.perf_counter() - t0
            rates[c.name].append(THREADS * per_thread / elapsed)
            for out in per:
                samples[c.name].extend(out)
    for c in contenders:
        results[c.name] = {**summarize(samples[c.name]),
                           "calls_per_s": sorted(rates[c.name])[len(rates[c.name]) // 2],
                           "rounds_calls_per_s": rates[c.name]}
    return results


def _serialized(call: Callable[[], Any]) -> Callable[[], Any]:
    import threading

    lock = threading.Lock()

    def locked() -> Any:
        with lock:
            return call()
    return locked


def _report_threads(results: dict[str, dict[str, Any]], per_thread: int
                    ) -> dict[str, float | None]:
    floor = results.get(FLOOR, {})
    rows = []
    for name, r in results.items():
        r["rate_vs_floor"] = ratio(r["calls_per_s"], floor.get("calls_per_s"))
        rows.append([name, f"{r['calls_per_s']:,.0f}", fmt_ratio(r["rate_vs_floor"]),
                     fmt_us(r["p50_us"]), fmt_us(r["p99_us"])])
    print_table(f"[threads] {THREADS} caller threads at once, {per_thread} calls each, free "
                "placement (calls/s: higher is better; median of the rounds)",
                ["contender", "calls/s", "vs floor", "p50", "p99"], rows)
    ours, ppe = results.get(OURS, {}), results.get(PPE, {})
    summary = {"ours_vs_floor_rate": ours.get("rate_vs_floor"),
               "ours_vs_ppe_rate": ratio(ours.get("calls_per_s"), ppe.get("calls_per_s"))}
    print(f"summary [threads]: ours/floor calls/s {fmt_ratio(summary['ours_vs_floor_rate'])}; "
          f"ours/ProcessPoolExecutor {fmt_ratio(summary['ours_vs_ppe_rate'])}")
    return summary


PLACEMENT_TITLE = {"free": "free placement (the scheduler decides)",
                   "same": "caller and children pinned to one CPU",
                   "split": "caller on one CPU, children on the other"}


def _report(mode: str, stats: dict[str, dict[str, Any]], n: int,
            contenders: list[Contender]) -> dict[str, float | None]:
    floor = stats[FLOOR]
    rows = []
    for c in contenders:
        s = stats[c.name]
        s["p50_vs_floor"] = ratio(s["p50_us"], floor["p50_us"])
        s["p99_vs_floor"] = ratio(s["p99_us"], floor["p99_us"])
        rows.append([c.name, fmt_us(s["p50_us"]), fmt_us(s["p99_us"]), fmt_us(s["mean_us"]),
                     fmt_ratio(s["p50_vs_floor"]), fmt_ratio(s["p99_vs_floor"])])
    print_table(f"[{mode}] tiny call round trip, {n} calls each, {PLACEMENT_TITLE[mode]} "
                "(lower is better)",
                ["contender", "p50", "p99", "mean", "p50/floor", "p99/floor"], rows)
    ours, ppe = stats.get(OURS, {}), stats.get(PPE, {})
    summary = {
        "ours_vs_floor_p50": ratio(ours.get("p50_us"), floor["p50_us"]),
        "ours_vs_floor_p99": ratio(ours.get("p99_us"), floor["p99_us"]),
        "ppe_vs_ours_p50": ratio(ppe.get("p50_us"), ours.get("p50_us")),
        "ppe_vs_ours_p99": ratio(ppe.get("p99_us"), ours.get("p99_us")),
    }
    print(f"summary [{mode}]: ours/floor p50 {fmt_ratio(summary['ours_vs_floor_p50'])}, "
          f"p99 {fmt_ratio(summary['ours_vs_floor_p99'])}; ProcessPoolExecutor/ours p50 "
          f"{fmt_ratio(summary['ppe_vs_ours_p50'])}, p99 {fmt_ratio(summary['ppe_vs_ours_p99'])}")
    return summary


if __name__ == "__main__":
    raise SystemExit(main())
