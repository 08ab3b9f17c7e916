"""Many workers: 1,000 idle Echo workers under one supervisor, next to 1,000 bare forks.

    raw floor   fork N children from this process, each blocking on its own pipe (the
                parent keeps the write ends; a child closes every fd it inherited but 0-2
                and its pipe). Time to fork all; then close every write end (EOF) and reap all = time to stop.
    ours        supervisor.start(Supervisor("root", children=[child(f"w{i}", Echo) ...]))
                -> time to start (every init returned), then one app.call to every worker
                (each opens its direct channel through the root), then app.stop().

Also measured for both: memory per child as USS (psutil memory_full_info().uss, the pages
only that process holds) averaged over a sample of 50 children, fds per child
(/proc/<pid>/fd), and CPU while idle for IDLE seconds: the root supervisor's cpu_percent
and the CPU time all children used in that window (a polling loop would show up there).

Run: ``python -m benchmarks many [--quick]`` (or ``python -m benchmarks.bench_many``).
"""

from __future__ import annotations

import os
import random
import resource
import statistics
import time
from typing import Any

import psutil

from benchmarks._util import (
    fmt_ratio,
    parse_args,
    print_table,
    raise_nofile,
    ratio,
    reap,
    report_leftovers,
    write_json,
)

NAME = "many"
SAMPLE = 50
IDLE = 3.0


# --------------------------------------------------------------------------- probes
def _uss_mib(pids: list[int]) -> float | None:
    values = []
    for pid in pids:
        try:
            values.append(psutil.Process(pid).memory_full_info().uss / 2**20)
        except psutil.Error:
            pass
    return statistics.fmean(values) if values else None


def _fds(pid: int) -> list[str]:
    out = []
    for fd in sorted(os.listdir(f"/proc/{pid}/fd"), key=int):
        try:
            out.append(f"{fd}->{os.readlink(f'/proc/{pid}/fd/{fd}')}")
        except OSError:
            pass
    return out


def _mean_fds(pids: list[int]) -> float:
    return statistics.fmean(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def _cpu_seconds(procs: list[psutil.Process]) -> float:
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            pass
    return total


def _idle_cpu(root: psutil.Process | None, children: list[int]) -> dict[str, float | None]:
    """CPU over IDLE seconds of doing nothing: root's percent, children's seconds."""
    procs = [psutil.Process(pid) for pid in children]
    if root is not None:
        root.cpu_percent(None)
    before = _cpu_seconds(procs)
    time.sleep(IDLE)
    after = _cpu_seconds(procs)
    return {"root_cpu_percent": root.cpu_percent(None) if root is not None else None,
            "children_cpu_s": after - before}


# --------------------------------------------------------------------------- floor
def run_floor(n: int) -> dict[str, Any]:
    pids: list[int] = []
    writers: list[int] = []
    result: dict[str, Any] = {}
    max_fd = resource.getrlimit(resource.RLIMIT_NOFILE)[0]  # closerange uses close_range(2)
    try:
        t0 = time.perf_counter()
        for _ in range(n):
            r, w = os.pipe()
            pid = os.fork()
            if pid == 0:
                try:
                    # Keep 0-2 and our pipe (as fd 3); close everything else inherited,
                    # or the other children's write ends would keep their pipes open.
                    os.dup2(r, 3)
                    os.closerange(4, max_fd)
                    os.read(3, 1)
                finally:
                    os._exit(0)
            os.close(r)
            writers.append(w)
            pids.append(pid)
        result["start_s"] = time.perf_counter() - t0
        # Idle first: a child forked last may not have closed what it inherited yet (on
        # a loaded machine it once counted 24 fds on average), and its fds and memory are
        # what it keeps, not what it passes through.
        result.update(_idle_cpu(None, pids))
        sample = random.Random(0).sample(pids, min(SAMPLE, len(pids)))
        result["uss_mib"] = _uss_mib(sample)
        result["fds_per_child"] = _mean_fds(sample)
        result["fds_example"] = _fds(sample[0])
        t0 = time.perf_counter()
        for w in writers:
            os.close(w)
        writers.clear()
        for pid in pids:
            os.waitpid(pid, 0)
        result["stop_s"] = time.perf_counter() - t0
        pids.clear()
    finally:
        for w in writers:
            os.close(w)
        for pid in pids:
            reap(pid)
    return result


# --------------------------------------------------------------------------- ours
def run_ours(n: int) -> dict[str, Any]:
    import supervisor
    from supervisor import Supervisor, child
    from workers.echo import Echo

    spec = Supervisor("root", max_restarts=10, max_seconds=5.0,
                      children=[child(f"w{i}", Echo) for i in range(n)])
    result: dict[str, Any] = {}
    t0 = time.perf_counter()
    app = supervisor.start(spec, timeout=300.0)
    result["start_s"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        for i in range(n):
            if app.call(f"w{i}", "echo", i) != i:
                raise RuntimeError(f"w{i} answered wrongly")
        result["first_call_all_s"] = time.perf_counter() - t0
        result["start_and_call_all_s"] = result["start_s"] + result["first_call_all_s"]
        t0 = time.perf_counter()
        for i in range(n):
            app.call(f"w{i}", "echo", i)
        result["second_call_all_s"] = time.perf_counter() - t0
        infos = app.which_children("")
        pids = [info.pid for info in infos if info.pid is not None]
        if len(pids) != n:
            raise RuntimeError(f"{len(pids)} of {n} workers running")
        sample = random.Random(0).sample(pids, min(SAMPLE, len(pids)))
        root = psutil.Process(app.pid)
        result.update(_idle_cpu(root, pids))  # first, as for the floor
        result["uss_mib"] = _uss_mib(sample)
        result["fds_per_child"] = _mean_fds(sample)
        result["fds_example"] = _fds(sample[0])
        result["root_uss_mib"] = _uss_mib([app.pid])
        result["root_fds"] = len(os.listdir(f"/proc/{app.pid}/fd"))
        result["caller_fds"] = len(os.listdir("/proc/self/fd"))
    finally:
        t0 = time.perf_counter()
        app.stop()
        result["stop_s"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    n = 100 if args.quick else 1000
    soft, new, hard = raise_nofile()
    print(f"RLIMIT_NOFILE soft {soft} -> {new} (hard {hard}); {n} children; "
          f"processes on the machine now: {len(psutil.pids())}")
    results: dict[str, dict[str, Any]] = {}
    failures: dict[str, str] = {}
    for name, run in (("raw floor (fork + pipe)", run_floor), ("ours", run_ours)):
        print(f"{name}: {n} children ...", flush=True)
        try:
            results[name] = run(n)
        except Exception as exc:  # report what failed, with the evidence, and go on
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED: {failures[name]}")
    report_leftovers()
    floor = results.get("raw floor (fork + pipe)", {})
    ours = results.get("ours", {})

    def row(label: str, key: str, fmt: str) -> list[str]:
        f, o = floor.get(key), ours.get(key)
        return [label, "-" if f is None else f"{f:{fmt}}", "-" if o is None else f"{o:{fmt}}",
                fmt_ratio(ratio(o, f))]

    rows = [
        row("start: fork all / start() returns (s)", "start_s", ".2f"),
        row("then one call to every worker (s)", "first_call_all_s", ".2f"),
        row("start until every worker answered (s)", "start_and_call_all_s", ".2f"),
        row("a second call to every worker (s)", "second_call_all_s", ".3f"),
        row("stop (s)", "stop_s", ".2f"),
        row(f"USS per child (MiB, mean of {SAMPLE})", "uss_mib", ".2f"),
        row("fds per child", "fds_per_child", ".1f"),
        row("root supervisor USS (MiB)", "root_uss_mib", ".1f"),
        row("root supervisor fds", "root_fds", "d"),
        row(f"root CPU idle {IDLE:.0f}s (%)", "root_cpu_percent", ".2f"),
        row(f"all children CPU idle {IDLE:.0f}s (s)", "children_cpu_s", ".3f"),
    ]
    print_table(f"{n} idle children (time: lower is better)",
                ["measure", "raw floor", "ours", "ours/floor"], rows)
    for name, r in results.items():
        print(f"fds of one child, {name}: {', '.join(r.get('fds_example', []))}")
    summary = {k: ratio(ours.get(k), floor.get(k))
               for k in ("start_s", "stop_s", "uss_mib", "fds_per_child")}
    print("\nsummary: ours/floor start "
          f"{fmt_ratio(summary['start_s'])}, stop {fmt_ratio(summary['stop_s'])}, USS/child "
          f"{fmt_ratio(summary['uss_mib'])}, fds/child {fmt_ratio(summary['fds_per_child'])}; "
          f"root idle CPU {ours.get('root_cpu_percent', '-')}%")
    write_json(NAME, {"quick": args.quick, "children": n, "sample": SAMPLE, "idle_s": IDLE,
                      "rlimit_nofile": {"soft_before": soft, "soft": new, "hard": hard},
                      "results": results, "summary": summary, "failures": failures})
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
