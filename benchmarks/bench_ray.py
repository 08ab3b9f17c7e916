"""Children on a Ray cluster: call round trip and restart, against local children and raw Ray.

A local Ray instance (2 CPUs, no dashboard, usage stats off, a private temp dir) is started
for the run in a session of its own and ended with its process group at the end.

    call        one tiny call (the int 1), interleaved in blocks, rotating who goes first:
                raw floor (a forked frame server), ours to a local child, ours to a
                backend="ray" child (caller -> bridge -> actor), and a raw Ray actor call
                (`ray.get(actor.echo.remote(1))` from this process, a Ray driver).
    restart     `ray.kill` of the actor, then time until a call is answered again:
                ours (the bridge notices through its pending watch, exits classified, the
                supervisor forks a new bridge, which creates a new actor), against Ray's
                own restart (an actor with max_restarts=-1 and max_task_retries=-1, killed
                with `ray.kill(..., no_restart=False)`; the call waits for the restart).

Order matters: a process that called `ray.init` must never fork, so the floor and the trees
are started (fork+exec) before this process joins the cluster as a driver.

Run: ``python -m benchmarks ray [--quick]`` (or ``python -m benchmarks.bench_ray``). Needs
the ray extra (``pip install -e .[ray]``); without it the benchmark says so and skips.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

from benchmarks._util import (
    FrameClient,
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

NAME = "ray"
FLOOR = "raw floor (socketpair)"
LOCAL = "ours: local child"
RAY_CHILD = "ours: Ray child (bridge)"
RAW_RAY = "raw Ray actor call"
OURS_RESTART = "ours: ray.kill -> bridge restart"
RAY_RESTART = "Ray's own max_restarts restart"
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


class Head:
    """A local Ray head in a session of its own; `close()` ends that process group."""

    def __init__(self) -> None:
        self.tmp = tempfile.mkdtemp(prefix="otpray-")
        os.environ.update(RAY_ENV)
        ray_cli = os.path.join(os.path.dirname(sys.executable), "ray")
        proc = subprocess.Popen(
            [ray_cli, "start", "--head", "--num-cpus=2", "--include-dashboard=false",
             "--disable-usage-stats", "--port=0", "--node-ip-address=127.0.0.1",
             f"--temp-dir={self.tmp}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
        self.pgid = proc.pid
        out, _ = proc.communicate(timeout=120)
        if proc.returncode != 0:
            self.close()
            raise RuntimeError(f"ray start failed: {out.decode(errors='replace')[-2000:]}")
        with open(os.path.join(self.tmp, "ray_current_cluster")) as f:
            self.address = f.read().strip()

    def close(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.killpg(self.pgid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)  # no event says a process group emptied; bounded
        shutil.rmtree(self.tmp, ignore_errors=True)


def measure_calls(contenders: dict[str, Callable[[], Any]], n: int, warmup: int,
                  blocks: int) -> dict[str, list[int]]:
    names = list(contenders)
    for name in names:
        for _ in range(warmup):
            contenders[name]()
    samples: dict[str, list[int]] = {name: [] for name in names}
    per_block = max(1, n // blocks)
    clock = time.perf_counter_ns
    for block in range(blocks):
        order = names[block % len(names):] + names[:block % len(names)]
        for name in order:
            fn, out = contenders[name], samples[name]
            for _ in range(per_block):
                t0 = clock()
                fn()
                out.append(clock() - t0)
    return samples


def ours_restart(app: Any, ray: Any, rounds: int) -> list[int]:
    """ray.kill the Ray child's actor; time until a new actor answers through `app.call`
    (`ray.kill` is asynchronous: an answer from the old actor does not count)."""
    from supervisor import WorkerCrashed

    samples = []
    for _ in range(rounds):
        old = app.call("remote", "pid")
        bridge = {i.id: i.pid for i in app.which_children()}["remote"]
        actor = ray.get_actor(f"remote@{bridge}", namespace="otp-supervisor")
        t0 = time.perf_counter_ns()
        ray.kill(actor, no_restart=True)
        while True:
            try:
                if app.call("remote", "pid", timeout=60) != old:
                    break
            except WorkerCrashed:  # the call landed in the dying bridge: ask again
                continue
        samples.append(time.perf_counter_ns() - t0)
        time.sleep(0.3)  # longer than the child's stable_after: each kill is a first failure
    return samples


def ray_restart(ray: Any, actor: Any, rounds: int) -> list[int]:
    """ray.kill(no_restart=False) of an actor with Ray's restarts on; time until the
    restarted actor (a new pid) answers."""
    samples = []
    for _ in range(rounds):
        old = ray.get(actor.pid.remote())
        t0 = time.perf_counter_ns()
        ray.kill(actor, no_restart=False)
        while ray.get(actor.pid.remote(), timeout=120) == old:  # max_task_retries=-1
            pass
        samples.append(time.perf_counter_ns() - t0)
        time.sleep(0.3)
    return samples


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    if importlib.util.find_spec("ray") is None:
        print("skipped: Ray is not installed (pip install -e '.[ray]')")
        return 0
    n, warmup, blocks, rounds = (300, 30, 5, 2) if args.quick else (3000, 200, 10, 8)
    import supervisor
    from supervisor import Supervisor, child
    from workers.echo import Echo

    head = Head()
    floor_pid = None
    app = None
    try:
        floor_pid, floor_sock = fork_frame_server()
        floor = FrameClient(floor_sock)
        app = supervisor.start(Supervisor(
            "root", max_restarts=100, max_seconds=60, ray_address=head.address, children=[
                child("local", Echo),
                child("remote", Echo, backend="ray", stable_after=0.1),
            ]))
        import ray  # joins only now: nothing forks in this process after this

        ray.init(address=head.address, log_to_driver=False, configure_logging=False)

        @ray.remote
        class RawEcho:
            def echo(self, value: Any) -> Any:
                return value

            def pid(self) -> int:
                return os.getpid()

        raw = RawEcho.remote()
        ray.get(raw.echo.remote(1))
        contenders = {
            FLOOR: lambda: floor.call(1),
            LOCAL: lambda: app.call("local", "echo", 1),
            RAY_CHILD: lambda: app.call("remote", "echo", 1),
            RAW_RAY: lambda: ray.get(raw.echo.remote(1)),
        }
        print(f"measuring {n} calls per contender after {warmup} warm-up calls, "
              f"interleaved in {blocks} blocks", flush=True)
        calls = measure_calls(contenders, n, warmup, blocks)
        print(f"restart: {rounds} rounds each", flush=True)
        restarting = RawEcho.options(max_restarts=-1, max_task_retries=-1).remote()
        restarts = {OURS_RESTART: ours_restart(app, ray, rounds),
                    RAY_RESTART: ray_restart(ray, restarting, rounds)}
        ray.shutdown()
    finally:
        if app is not None:
            app.stop()
        if floor_pid is not None:
            os.kill(floor_pid, signal.SIGKILL)
            reap(floor_pid)
        head.close()
    report_leftovers()
    return _report(args.quick, n, warmup, blocks, rounds, calls, restarts)


def _report(quick: bool, n: int, warmup: int, blocks: int, rounds: int,
            calls: dict[str, list[int]], restarts: dict[str, list[int]]) -> int:
    stats = {name: summarize(s) for name, s in calls.items()}
    rows = []
    for name, s in stats.items():
        rows.append([name, fmt_us(s["p50_us"]), fmt_us(s["p99_us"]), fmt_us(s["mean_us"]),
                     fmt_ratio(ratio(s["p50_us"], stats[RAW_RAY]["p50_us"])),
                     fmt_ratio(ratio(s["p50_us"], stats[LOCAL]["p50_us"]))])
    print_table(f"tiny call round trip, {n} calls each (lower is better)",
                ["contender", "p50", "p99", "mean", "p50/raw Ray", "p50/local"], rows)
    rstats = {name: summarize(s) for name, s in restarts.items()}
    print_table(f"ray.kill -> answered again, {rounds} rounds each (lower is better)",
                ["contender", "p50", "p99", "min", "max"],
                [[name, fmt_us(s["p50_us"]), fmt_us(s["p99_us"]), fmt_us(s["min_us"]),
                  fmt_us(s["max_us"])] for name, s in rstats.items()])
    summary = {
        "ray_child_vs_raw_ray_p50": ratio(stats[RAY_CHILD]["p50_us"], stats[RAW_RAY]["p50_us"]),
        "ray_child_vs_raw_ray_p99": ratio(stats[RAY_CHILD]["p99_us"], stats[RAW_RAY]["p99_us"]),
        "ray_child_vs_local_p50": ratio(stats[RAY_CHILD]["p50_us"], stats[LOCAL]["p50_us"]),
        "restart_ours_vs_ray_p50": ratio(rstats[OURS_RESTART]["p50_us"],
                                         rstats[RAY_RESTART]["p50_us"]),
    }
    print(f"summary: Ray child/raw Ray p50 {fmt_ratio(summary['ray_child_vs_raw_ray_p50'])}, "
          f"p99 {fmt_ratio(summary['ray_child_vs_raw_ray_p99'])}; Ray child/local p50 "
          f"{fmt_ratio(summary['ray_child_vs_local_p50'])}; restart ours/Ray's p50 "
          f"{fmt_ratio(summary['restart_ours_vs_ray_p50'])}")
    write_json(NAME, {"quick": quick, "calls": n, "warmup": warmup, "blocks": blocks,
                      "rounds": rounds, "results": stats, "restart": rstats,
                      "restart_samples_us": {k: [x / 1000 for x in v]
                                             for k, v in restarts.items()},
                      "summary": summary})
    return 0


if __name__ == "__main__":
    sys.exit(main())
