"""Fixtures of the fault campaign, and the switch for its long runs.

Tests marked `slow` (the long chaos campaign) are skipped unless they are asked for with
``-m slow`` or ``SUPERVISOR_LONG=1``: the default run stays short.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from supervisor import WorkerError

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def long_runs_wanted(config: pytest.Config) -> bool:
    return os.environ.get("SUPERVISOR_LONG") == "1" or "slow" in (
        config.getoption("markexpr", default="") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_runs_wanted(config):
        return
    skip = pytest.mark.skip(reason="long campaign: run with -m slow or SUPERVISOR_LONG=1")
    for item in items:
        # Only this folder's tests: the hook sees every collected item of the session.
        if HERE in item.path.parents and item.get_closest_marker("slow"):
            item.add_marker(skip)


# ------------------------------------------------------------------ the tree as it runs
def walk(app, path: str = "", ancestors: tuple[int, ...] = ()) -> dict[str, dict]:
    """Every node below `path` that is running now: path -> {pid, kind, ancestors}.

    `ancestors` are the pids of the supervisors above the node (its own supervisor last),
    read in the same walk. A subtree whose supervisor is restarting while we look is left
    out (its `which_children` fails with a classified WorkerError).
    """
    nodes: dict[str, dict] = {}
    for info in app.which_children(path):
        if info.state != "running" or info.pid is None:
            continue
        nodes[info.path] = {"pid": info.pid, "kind": info.kind, "ancestors": ancestors}
        if info.kind == "supervisor":
            try:
                nodes.update(walk(app, info.path, (*ancestors, info.pid)))
            except WorkerError:
                continue
    return nodes


@pytest.fixture
def raw_channel():
    """raw_channel(app, path) -> a CallChannel to the worker that the App does not share
    (`App._router._open`); its `.sock` is ours to write anything to. Closed at teardown."""
    opened = []

    def _open(app, path: str, timeout: float = 10.0):
        chan = app._router._open(path, time.monotonic() + timeout)
        opened.append(chan)
        return chan

    yield _open
    for chan in opened:
        chan.close()


# ------------------------------------------------------------------ service mode
class Service:
    """`python -m supervisor run TREE.toml --socket PATH` in a subprocess; its stderr is
    collected line by line so tests wait for log lines (a condition, not a sleep)."""

    def __init__(self, tmp_path: Path, tree: str) -> None:
        self.toml = tmp_path / "tree.toml"
        self.toml.write_text(textwrap.dedent(tree))
        self.socket = str(tmp_path / "ctl.sock")
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run", str(self.toml), "--socket",
             self.socket], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace")
        self.reader = threading.Thread(target=self._collect, daemon=True)
        self.reader.start()

    def _collect(self) -> None:
        for line in self.proc.stderr:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_line(self, text: str, timeout: float = 20.0, start: int = 0) -> int:
        """Index of the first line from `start` on that contains `text`."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if text in self.lines[i]:
                        return i
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not self.reader.is_alive():
                    tail = "\n".join(line[:200] for line in self.lines[-30:])
                    raise AssertionError(f"no line with {text!r}; last lines:\n{tail}")
                self.cond.wait(remaining)

    def connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10.0)
        sock.connect(self.socket)
        return sock

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.proc.wait(10)
        self.reader.join(5)
        self.proc.stderr.close()


@pytest.fixture
def service(tmp_path):
    """service(tree_toml) -> a running Service (up and serving); stopped at teardown."""
    started: list[Service] = []

    def _start(tree: str) -> Service:
        svc = Service(tmp_path, tree)
        started.append(svc)
        svc.wait_line("is up")
        return svc

    yield _start
    for svc in started:
        svc.stop()
