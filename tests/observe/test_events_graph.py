"""`events [-f] [--json]` and `check --graph`."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from supervisor.config import load
from supervisor.observe.graph import to_dot

from .._service import running
from ._observe import TREE, pid_of

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "tests" / "config" / "good").glob("*.toml"))


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


class _Lines:
    """The stdout lines of a process, collected by a thread; wait for one on a condition."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, args=(proc,), daemon=True)
        self.thread.start()

    def _read(self, proc: subprocess.Popen) -> None:
        for line in proc.stdout:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    def wait_for(self, pattern: str, timeout: float = 20.0) -> str:
        def found() -> str | None:
            return next((line for line in self.lines if re.search(pattern, line)), None)

        with self.cond:
            if not self.cond.wait_for(lambda: found() or not self.thread.is_alive(), timeout) \
                    or found() is None:
                raise AssertionError(f"no line matching {pattern!r} in {self.lines[-20:]}")
            return found()


@pytest.mark.integration
@pytest.mark.timeout(90)
def test_events_follow_sees_a_restart(service):
    svc = service(TREE)
    svc.wait_line("tree 'svc' is up")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "events", "-f",
                             "--socket", svc.socket], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out = _Lines(proc)
        out.wait_for(r" child\.started jobs/calc pid=\d+")  # kept before we came
        pid = pid_of(svc, "jobs/calc")
        os.kill(pid, signal.SIGKILL)
        exited = out.wait_for(r" child\.exited jobs/calc ")
        assert f"pid={pid} reason=killed category=connection_error" in exited
        restarted = out.wait_for(r" child\.restarted jobs/calc ")
        assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} child\.restarted jobs/calc pid=\d+ "
                            r"restarts=1", restarted)
        assert sum(" child.exited jobs/calc " in line for line in out.lines) == 1  # no dup
        assert svc.cmd("shutdown").returncode == 0
        assert proc.wait(30) == 0  # -f ends with the tree
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_events_without_follow_prints_the_kept_events_as_json(service):
    svc = service(TREE)
    svc.wait_line("tree 'svc' is up")
    done = svc.cmd("events", "--json")
    assert done.returncode == 0, done.stderr
    records = [json.loads(line) for line in done.stdout.splitlines()]
    started = [r["path"] for r in records if r["event"] == "child.started"]
    assert started == ["talker", "jobs/sleeper", "jobs/calc", "jobs"]
    assert all(set(r) == {"event", "time", "path", "measurements", "metadata"}
               for r in records)


# ---------------------------------------------------------------------------- the graph
_STATEMENT = re.compile(r'^  "(?:[^"\\]|\\.)*"( -> "(?:[^"\\]|\\.)*")? \[(.*)\];$')
_ATTR = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\w+)(, |$)')


def _parse_dot(text: str) -> tuple[set[str], list[tuple[str, str]]]:
    """A strict reader for the DOT subset `check --graph` writes: every line is a graph,
    node or edge statement with well-formed quoting; returns (nodes, edges)."""
    lines = text.splitlines()
    assert re.fullmatch(r'digraph "(?:[^"\\]|\\.)*" \{', lines[0]) and lines[-1] == "}"
    nodes, edges = set(), []
    for line in lines[1:-1]:
        if line.strip() in ("rankdir=TB;",) or re.fullmatch(r"  (node|edge) \[.*\];", line):
            continue
        match = _STATEMENT.match(line)
        assert match, f"not a DOT statement: {line!r}"
        assert "".join(m.group(0) for m in _ATTR.finditer(match.group(2))) == match.group(2)
        names = re.findall(r'"((?:[^"\\]|\\.)*)"', line.split(" [")[0])
        if match.group(1):
            edges.append((names[0], names[1]))
        else:
            nodes.add(names[0])
    assert {name for edge in edges for name in edge} <= nodes
    return nodes, edges


@pytest.mark.parametrize("config", CONFIGS, ids=[c.name for c in CONFIGS])
def test_check_graph_is_dot(config):
    done = subprocess.run([sys.executable, "-m", "supervisor", "check", "--graph",
                           str(config)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == to_dot(load(config))
    nodes, edges = _parse_dot(done.stdout)
    assert len(edges) == len(nodes) - 1  # a tree
    if shutil.which("dot"):
        svg = subprocess.run(["dot", "-Tsvg"], input=done.stdout, capture_output=True,
                             text=True, timeout=60)
        assert svg.returncode == 0, svg.stderr
        assert "<svg" in svg.stdout


def test_the_graph_marks_strategies_restart_types_and_overrides():
    nodes, edges = _parse_dot(to_dot(load(ROOT / "tests" / "config" / "good" / "full.toml")))
    text = to_dot(load(ROOT / "tests" / "config" / "good" / "full.toml"))
    assert '"/" -> "/echo" [style=dashed];' in text  # transient
    assert '"/" -> "/sleeper" [style=dotted];' in text  # temporary
    assert '"/" -> "/workers" [style=solid];' in text  # permanent
    assert "rest_for_one\\nintensity 7 in 12.5s" in text
    assert re.search(r'"/echo" \[[^]]*color="red", peripheries="2"[^]]*errors: python_error',
                     text)
    assert "/jobs/job#template" in nodes


def test_check_graph_svg(tmp_path):
    if shutil.which("dot") is None:
        pytest.skip("Graphviz's dot is not installed (apt-get install graphviz)")
    out = tmp_path / "tree.svg"
    done = subprocess.run([sys.executable, "-m", "supervisor", "check", "--graph", "--svg",
                           str(out), str(ROOT / "tests" / "config" / "good" / "full.toml")],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().lstrip().startswith(b"<?xml") and b"rest_for_one" in out.read_bytes()
