"""Figures for the README's "Hostile conditions": how the tree fares when the world misbehaves.

    stuck-log   `python -m supervisor run` with stderr a pipe that is read normally, then
                one that nobody reads (after the "is up" line): a chatty worker prints 2,000
                lines before each round, the echo worker is SIGKILLed, and the time from the
                kill to the replacement's "started" event (wall clocks of two processes) is
                recorded; a call must be answered after every round.
    memory      a worker allocating 500 MB/s (touched pages) under max_memory_mb=200, with
                the default shutdown (5 s), with shutdown=30, and with shutdown=30 in a
                worker that ignores SIGTERM: its peak RSS (the kernel's VmHWM, sampled every
                5 ms) and how long after the memory_exceeded event it was gone.

Run: ``python -m benchmarks.hostile [stuck-log] [memory]`` (Linux: reads /proc).
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import supervisor
from supervisor import Supervisor, child, telemetry

ROOT = Path(__file__).resolve().parents[1]
ROUNDS = 20

TREE = """
[tree]
id = "root"
max_restarts = 1000
max_seconds = 1.0

[[tree.children]]
id = "echo"
worker = "workers.echo:Echo"
stable_after = 0.05

[[tree.children]]
id = "chatty"
worker = "tests.faults._workers:Chatty"
"""


class Starts:
    """"started" events of one path, as (pid, wall time)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.seen: list[tuple[int, float]] = []
        self.cond = threading.Condition()

    def __call__(self, event, measurements, metadata) -> None:
        if event[-1] == "started" and metadata.get("path") == self.path:
            with self.cond:
                self.seen.append((metadata["pid"], measurements["time"]))
                self.cond.notify_all()

    def after(self, pid: int, timeout: float) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: any(p != pid for p, _ in self.seen), timeout):
                raise TimeoutError(f"no replacement for pid {pid} within {timeout}s")
            when = next(t for p, t in self.seen if p != pid)
            self.seen.clear()
            return when


def stuck_log(mode: str) -> None:
    tmp = Path(tempfile.mkdtemp())
    (tmp / "tree.toml").write_text(TREE)
    sock = str(tmp / "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(tmp / "tree.toml"),
                             "--socket", sock], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    starts = Starts("echo")
    telemetry.attach("hostile", [("supervisor", "child")], starts)
    latencies = []
    try:
        for line in proc.stderr:
            if b"is up" in line:
                break
        if mode == "read":
            threading.Thread(target=proc.stderr.read, daemon=True).start()
        with supervisor.connect(sock) as app:
            for n in range(ROUNDS):
                app.call("chatty", "say", 2000, timeout=30)
                pid = app.call("echo", "pid", timeout=30)
                killed = time.time()
                os.kill(pid, signal.SIGKILL)
                latencies.append((starts.after(pid, 30) - killed) * 1000)
                assert app.call("echo", "echo", n, timeout=30) == n
                time.sleep(0.1)  # past stable_after: each kill is a first crash
        print(f"stderr {mode:5}: kill -> replacement started: median "
              f"{statistics.median(latencies):.1f} ms, max {max(latencies):.1f} ms "
              f"({ROUNDS} rounds, a call answered after each)", flush=True)
    finally:
        telemetry.detach("hostile")
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        tail = proc.stderr.read() if mode == "stuck" else b""
        proc.wait(30)
        for line in tail.splitlines():
            if b"dropped" in line:
                print(f"  then, once read: {line.decode().split(' - ')[-1].split('| ')[-1]}")


def peak_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def memory(shutdown: float, handle_term: bool, rate: int = 500, limit: int = 200,
           cap: int = 8000) -> None:
    from tests.runtime._workers import Hog

    seen: list[tuple[str, float, dict]] = []
    cond = threading.Condition()

    def record(event, measurements, metadata) -> None:
        if metadata.get("path") == "hog":
            with cond:
                seen.append((event[-1], time.monotonic(), metadata))
                cond.notify_all()

    telemetry.attach("hostile", [("supervisor",)], record)
    tree = Supervisor("root", children=[
        child("hog", Hog, kwargs={"handle_term": handle_term}, max_memory_mb=limit,
              shutdown=shutdown, restart="temporary")])
    try:
        with supervisor.start(tree) as app:
            telemetry.detach(telemetry.DEFAULT_REPORTER)
            pid = app.call("hog", "pid")
            peak = [0.0]

            def sample() -> None:
                while (value := peak_mb(pid)) is not None:
                    peak[0] = max(peak[0], value)
                    time.sleep(0.005)

            sampler = threading.Thread(target=sample)
            sampler.start()
            app.cast("hog", "grow", rate, cap)
            with cond:
                cond.wait_for(lambda: any(name == "exited" for name, _, _ in seen), 120)
            sampler.join(10)
        (_, over_at, over), = [e for e in seen if e[0] == "memory_exceeded"]
        (_, gone_at, gone), = [e for e in seen if e[0] == "exited"]
        print(f"shutdown={shutdown:g}{' (ignores SIGTERM)' if handle_term else ''}: "
              f"{rate} MB/s under max_memory_mb={limit}: peak RSS {peak[0]:.0f} MB, "
              f"noticed at {over['rss_mb']:.0f} MB, {gone['detail']} "
              f"{gone_at - over_at:.2f} s after", flush=True)
    finally:
        telemetry.detach("hostile")


def main(argv: list[str]) -> int:
    for name in argv or ["stuck-log", "memory"]:
        if name == "stuck-log":
            stuck_log("read")
            stuck_log("stuck")
        elif name == "memory":
            memory(5.0, False)
            memory(30.0, False)
            memory(30.0, True)
        else:
            print(f"unknown: {name!r}; expected stuck-log or memory", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
