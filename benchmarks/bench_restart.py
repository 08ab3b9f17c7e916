"""Restart latency: SIGKILL an idle worker, time until a replacement serves a call.

Contenders run one after another in this one process; each is cleaned up before the next.

    raw floor   a forked frame server watched through its pidfd in a selector. Per round:
                SIGKILL -> pidfd readable (noticed) -> waitpid -> fork a replacement ->
                one frame answered (serving).
    ours        SIGKILL the worker of a one-worker tree, then app.call("w", "echo", 1)
                (retry=True) until it succeeds (serving). "noticed" is the supervisor's
                ("supervisor","child","exited") telemetry time minus the kill time (wall
                clocks of two processes); "ready" likewise from the "started" event.
    peers       ProcessPoolExecutor and loky break on a dead worker: time to a result from
                a fresh executor. pebble(1) breaks too when its only worker dies ("All
                workers expired"): time to a result from a fresh pool (or from the same
                pool, should it survive). multiprocessing.Pool is left out: a worker killed
                while idle holds the task queue's lock, so the pool never serves again,
                and Pool.terminate() then blocks on that same lock.

Rounds are spaced by GAP seconds, longer than the tree's `stable_after`, so every kill
is "the first crash after a healthy run", which the design restarts at once.

Run: ``python -m benchmarks restart [--quick]`` (or ``python -m benchmarks.bench_restart``).
"""

from __future__ import annotations

import os
import selectors
import signal
import threading
import time
from collections.abc import Callable
from typing import Any

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

NAME = "restart"
GAP = 0.2  # seconds between rounds
STABLE_AFTER = 0.1  # the tree's stable_after: shorter than GAP
RESULT_TIMEOUT = 30.0  # a peer that does not serve within this is reported as hung

FLOOR = "raw floor (pidfd + fork)"
OURS = "ours: supervisor restart"


def _own(pid: int) -> int:
    """`pid`, checked to be a descendant of this process (we kill no one else's). Called
    before the timed window opens: the psutil walk costs 1-2 ms, which the window of
    ours and the peers once included and the floor's did not."""
    me = os.getpid()
    if me not in {p.pid for p in psutil.Process(pid).parents()}:
        raise RuntimeError(f"refusing to kill pid {pid}: not a descendant of {me}")
    return pid


def _check(deadline: float) -> None:
    if time.monotonic() > deadline:
        raise TimeoutError(f"no successful call within {RESULT_TIMEOUT}s after the kill")


def _result(rounds: int, noticed: list[int], serving: list[int], errors: int = 0,
            ready: list[int] | None = None, note: str = "") -> dict[str, Any]:
    return {"rounds": rounds, "noticed": summarize(noticed), "ready": summarize(ready or []),
            "serving": summarize(serving), "errors_seen": errors, "note": note,
            "raw_ns": {"noticed": noticed, "serving": serving, "ready": ready or []}}


# --------------------------------------------------------------------------- contenders
def run_floor(rounds: int) -> dict[str, Any]:
    noticed: list[int] = []
    serving: list[int] = []
    sel = selectors.DefaultSelector()
    pid, sock = fork_frame_server()
    pidfd = os.pidfd_open(pid)
    try:
        sel.register(pidfd, selectors.EVENT_READ)
        client = FrameClient(sock)
        for _ in range(20):
            client.call(1)
        for _ in range(rounds):
            time.sleep(GAP)
            t0 = time.perf_counter_ns()
            os.kill(pid, signal.SIGKILL)
            if not sel.select(10.0):
                raise RuntimeError("the floor's pidfd did not become readable within 10 s")
            t1 = time.perf_counter_ns()
            os.waitpid(pid, 0)
            sel.unregister(pidfd)
            os.close(pidfd)
            sock.close()
            pidfd = -1
            pid, sock = fork_frame_server()
            pidfd = os.pidfd_open(pid)
            sel.register(pidfd, selectors.EVENT_READ)
            client = FrameClient(sock)
            if client.call(1) != 1:
                raise RuntimeError("the floor's replacement answered wrongly")
            t2 = time.perf_counter_ns()
            noticed.append(t1 - t0)
            serving.append(t2 - t0)
    finally:
        sel.close()
        sock.close()
        if pidfd >= 0:
            os.close(pidfd)
        reap(pid)
    return _result(rounds, noticed, serving)


def run_ours(rounds: int) -> dict[str, Any]:
    import supervisor
    from supervisor import Supervisor, WorkerCrashed, child
    from workers.echo import Echo

    events: list[tuple[str, float, int]] = []  # (event, supervisor wall time, pid)
    cond = threading.Condition()

    def on_event(event: tuple[str, ...], measurements: Any, metadata: Any) -> None:
        if metadata.get("path") == "w" and event[-1] in ("exited", "started"):
            with cond:
                events.append((event[-1], measurements["time"], metadata.get("pid")))
                cond.notify_all()

    def first_event(kind: str, pred: Callable[[float, int], bool]) -> float | None:
        with cond:
            found: list[float] = []

            def ready() -> bool:
                found[:] = [t for k, t, p in events if k == kind and pred(t, p)][:1]
                return bool(found)

            cond.wait_for(ready, timeout=5.0)
            return found[0] if found else None

    handler = f"bench-restart-{os.getpid()}"
    supervisor.telemetry.attach(handler, [("supervisor", "child")], on_event)
    noticed: list[int] = []
    ready: list[int] = []
    serving: list[int] = []
    errors = 0
    spec = Supervisor("root", max_restarts=100_000, max_seconds=5.0,
                      children=[child("w", Echo, stable_after=STABLE_AFTER)])
    app = supervisor.start(spec)
    try:
        for _ in range(20):
            app.call("w", "echo", 1)
        for _ in range(rounds):
            (info,) = app.which_children("")
            if info.state != "running" or info.pid is None:
                raise RuntimeError(f"worker not running before the round: {info}")
            app.call("w", "echo", 1)  # the channel is open and warm
            time.sleep(GAP)
            pid = info.pid
            t0_wall = time.time()
            victim = _own(pid)
            t0 = time.perf_counter_ns()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + RESULT_TIMEOUT
            while True:
                try:
                    value = app.call("w", "echo", 1, timeout=RESULT_TIMEOUT)
                    break
                except WorkerCrashed:  # the call was in flight when the kill landed
                    errors += 1
                    ended = app.wait(0)
                    if ended is not None:
                        raise RuntimeError(f"the tree ended ({ended}) after the kill; "
                                           f"events: {events[-6:]}") from None
                    _check(deadline)
            t2 = time.perf_counter_ns()
            if value != 1:
                raise RuntimeError(f"the replacement answered {value!r}")
            exited = first_event("exited", lambda t, p, pid=pid: p == pid)
            started = first_event("started", lambda t, p, pid=pid, t0=t0_wall:
                                  p != pid and t >= t0)
            if exited is None or started is None:
                raise RuntimeError(f"no exited/started telemetry for pid {pid}: {events}")
            noticed.append(int((exited - t0_wall) * 1e9))
            ready.append(int((started - t0_wall) * 1e9))
            serving.append(t2 - t0)
    finally:
        supervisor.telemetry.detach(handler)
        app.stop()
    return _result(rounds, noticed, serving, errors, ready,
                   note="noticed/ready: supervisor's wall clock minus the caller's")


def run_ppe(rounds: int) -> dict[str, Any]:
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    serving: list[int] = []
    errors = 0
    broken: list[ProcessPoolExecutor] = []
    ex = ProcessPoolExecutor(max_workers=1)
    try:
        for _ in range(rounds):
            ex.submit(echo, 1).result(RESULT_TIMEOUT)
            (pid,) = list(ex._processes)
            time.sleep(GAP)
            victim = _own(pid)
            t0 = time.perf_counter_ns()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + RESULT_TIMEOUT
            while True:
                try:
                    ex.submit(echo, 1).result(RESULT_TIMEOUT)
                    break
                except BrokenProcessPool:
                    errors += 1
                    _check(deadline)
                    broken.append(ex)
                    ex = ProcessPoolExecutor(max_workers=1)
            serving.append(time.perf_counter_ns() - t0)
            while broken:  # outside the timing: the user need not wait for it
                broken.pop().shutdown(wait=True)
    finally:
        for old in broken + [ex]:
            old.shutdown(wait=True, cancel_futures=True)
    return _result(rounds, [], serving, errors, note="a new executor each round")


def run_loky(rounds: int) -> dict[str, Any]:
    import loky
    from loky.process_executor import BrokenProcessPool, ShutdownExecutorError

    serving: list[int] = []
    errors = 0
    ex = loky.get_reusable_executor(max_workers=1)
    try:
        for _ in range(rounds):
            ex.submit(echo, 1).result(RESULT_TIMEOUT)
            (pid,) = list(ex._processes)
            time.sleep(GAP)
            victim = _own(pid)
            t0 = time.perf_counter_ns()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + RESULT_TIMEOUT
            while True:
                ex = loky.get_reusable_executor(max_workers=1)
                try:
                    ex.submit(echo, 1).result(RESULT_TIMEOUT)
                    break
                except (BrokenProcessPool, ShutdownExecutorError):  # TerminatedWorkerError
                    errors += 1
                    _check(deadline)
            serving.append(time.perf_counter_ns() - t0)
    finally:
        ex.shutdown(wait=True, kill_workers=True)
    return _result(rounds, [], serving, errors,
                   note="get_reusable_executor() replaces the broken executor")


def run_pebble(rounds: int) -> dict[str, Any]:
    from concurrent.futures.process import BrokenProcessPool

    import pebble
    from pebble import ProcessExpired

    serving: list[int] = []
    errors = 0
    broke = 0
    broken: list[pebble.ProcessPool] = []
    pool = pebble.ProcessPool(max_workers=1)
    try:
        for _ in range(rounds):
            pool.schedule(echo, args=(1,)).result(RESULT_TIMEOUT)
            (pid,) = list(pool._pool_manager.worker_manager.workers)
            time.sleep(GAP)
            victim = _own(pid)
            t0 = time.perf_counter_ns()
            os.kill(victim, signal.SIGKILL)
            deadline = time.monotonic() + RESULT_TIMEOUT
            while True:
                _check(deadline)
                try:
                    pool.schedule(echo, args=(1,)).result(RESULT_TIMEOUT)
                    break
                except ProcessExpired:  # the task died with the worker; the pool lives
                    errors += 1
                except (BrokenProcessPool, RuntimeError):
                    # "All workers expired" breaks the pool; schedule() on a broken pool
                    # raises RuntimeError("Unexpected error within the Pool").
                    errors += 1
                    broke += 1
                    broken.append(pool)
                    pool = pebble.ProcessPool(max_workers=1)
            serving.append(time.perf_counter_ns() - t0)
            while broken:  # outside the timing
                old = broken.pop()
                old.stop()
                old.join(10.0)
    finally:
        for old in broken + [pool]:
            old.stop()
            old.join(10.0)
    return _result(rounds, [], serving, errors,
                   note=f"the pool broke in {broke} of {rounds} rounds; a new pool then")


# --------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    full = {FLOOR: 30, OURS: 30, "ProcessPoolExecutor": 30, "loky": 10, "pebble": 15}
    quick = {FLOOR: 8, OURS: 8, "ProcessPoolExecutor": 8, "loky": 4, "pebble": 4}
    plan = [(FLOOR, run_floor), (OURS, run_ours), ("ProcessPoolExecutor", run_ppe),
            ("loky", run_loky), ("pebble", run_pebble)]
    results: dict[str, dict[str, Any]] = {}
    skipped: dict[str, str] = {}
    failures: dict[str, str] = {}
    for name, run in plan:
        rounds = (quick if args.quick else full)[name]
        print(f"{name}: {rounds} rounds ...", flush=True)
        try:
            results[name] = run(rounds)
        except ImportError as exc:
            print(f"{name}: skipped: not installed ({exc})")
            skipped[name] = "not installed"
        except Exception as exc:  # report it with its evidence; the others still run
            failures[name] = f"{type(exc).__name__}: {exc}"
            print(f"{name}: FAILED: {failures[name]}")
    report_leftovers()

    floor = results.get(FLOOR, {"noticed": {}, "serving": {}})
    rows = []
    for name, r in results.items():
        n, rd, s = r["noticed"], r["ready"], r["serving"]
        r["serving_p50_vs_floor"] = ratio(s.get("p50_us"), floor["serving"].get("p50_us"))
        r["serving_p99_vs_floor"] = ratio(s.get("p99_us"), floor["serving"].get("p99_us"))
        r["noticed_p50_vs_floor"] = ratio(n.get("p50_us"), floor["noticed"].get("p50_us"))
        rows.append([name, str(r["rounds"]), fmt_us(n.get("p50_us")), fmt_us(n.get("p99_us")),
                     fmt_us(rd.get("p50_us")), fmt_us(s.get("p50_us")), fmt_us(s.get("p99_us")),
                     fmt_ratio(r["serving_p50_vs_floor"]), fmt_ratio(r["serving_p99_vs_floor"]),
                     str(r["errors_seen"])])
    print_table("restart after SIGKILL of an idle worker (lower is better)",
                ["contender", "rounds", "noticed p50", "noticed p99", "ready p50",
                 "serving p50", "serving p99", "serving p50/floor", "p99/floor",
                 "errors seen"], rows)
    print("noticed = kill -> exit seen by the watcher; ready = kill -> replacement reported"
          " ready; serving = kill -> first successful call (caller's clock).\n"
          "errors seen = calls that failed after the kill before one succeeded.")
    ours = results.get(OURS, {})
    ppe = results.get("ProcessPoolExecutor", {})
    summary = {
        "ours_vs_floor_noticed_p50": ours.get("noticed_p50_vs_floor"),
        "ours_vs_floor_serving_p50": ours.get("serving_p50_vs_floor"),
        "ours_vs_floor_serving_p99": ours.get("serving_p99_vs_floor"),
        "ppe_vs_ours_serving_p50": ratio(ppe.get("serving", {}).get("p50_us"),
                                         ours.get("serving", {}).get("p50_us")),
    }
    print(f"\nsummary: ours/floor noticed p50 {fmt_ratio(summary['ours_vs_floor_noticed_p50'])},"
          f" kill-to-serving p50 {fmt_ratio(summary['ours_vs_floor_serving_p50'])}, p99 "
          f"{fmt_ratio(summary['ours_vs_floor_serving_p99'])}; ProcessPoolExecutor/ours "
          f"kill-to-serving p50 {fmt_ratio(summary['ppe_vs_ours_serving_p50'])}")
    write_json(NAME, {"quick": args.quick, "gap_s": GAP, "stable_after_s": STABLE_AFTER,
                      "results": results, "summary": summary, "skipped": skipped,
                      "failures": failures})
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
