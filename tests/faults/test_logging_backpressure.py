"""A log reader that stops reading (`| less` paused, Ctrl-S, a stalled collector) never
stalls a supervisor: its lines are queued (bounded), then dropped and counted; crashes are
still noticed, restarts and calls still served. Before, loguru's write to the full stderr
pipe blocked the service root's loop: a killed worker stayed a zombie, calls timed out.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import select
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from loguru import logger

import supervisor
from supervisor import telemetry
from supervisor.tree.logsink import StderrSink
from supervisor.tree.loop import Loop

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
DROPPED = re.compile(r"dropped (\d+) log lines while stderr was not being read")
FLOOD = 20_000  # lines of ~210 bytes: 4 MiB, far past a pipe (64 KiB) and the queue (1 MiB)

TREE = """
[tree]
id = "root"
max_restarts = 100
max_seconds = 1.0

[[tree.children]]
id = "echo"
worker = "workers.echo:Echo"

[[tree.children]]
id = "chatty"
worker = "tests.faults._workers:Chatty"
"""


class Tap:
    """The read end of a process's stderr, read only when the test says so."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.data = b""

    def read_until(self, pattern: str | re.Pattern, timeout: float = 30.0) -> re.Match:
        """Read until `pattern` shows up in what was read (or raise AssertionError)."""
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern
        deadline = time.monotonic() + timeout
        while (found := regex.search(self.data.decode("utf-8", "replace"))) is None:
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, remaining))
            chunk = os.read(self.fd, 1 << 16) if ready else b""
            if not chunk:
                tail = self.data[-2000:].decode("utf-8", "replace")
                raise AssertionError(f"no {regex.pattern!r} in stderr; it ends with:\n{tail}")
            self.data += chunk
        return found

    def read_to_end(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while (remaining := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], remaining)
            if not ready:
                continue
            chunk = os.read(self.fd, 1 << 16)
            if not chunk:
                return
            self.data += chunk
        raise AssertionError("stderr did not reach EOF in time")


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM (graceful), SIGKILL after 20 s; reaps. Only the pid we started."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait(10)


def test_a_stuck_stderr_pipe_does_not_stall_the_service(tmp_path, events):
    toml = tmp_path / "tree.toml"
    toml.write_text(TREE)
    sock = str(tmp_path / "ctl.sock")
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run", str(toml), "--socket",
                             sock], cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tap = Tap(proc.stderr.fileno())
    try:
        tap.read_until("is up")
        # From here nobody reads the service's stderr until the end of the test.
        with supervisor.connect(sock) as app:
            # The worker's output goes through its supervisor's log: this call returns
            # only if the supervisor keeps reading the worker's pipe.
            assert app.call("chatty", "say", FLOOD, timeout=30) > 0
            pid = app.call("echo", "pid", timeout=10)
            os.kill(pid, signal.SIGKILL)
            events.wait_for(lambda log: [m for m in log.named("started", "echo")
                                         if m["pid"] != pid], timeout=10, what="a new echo")
            assert app.call("echo", "echo", "still here", timeout=10) == "still here"
            assert [c.state for c in app.which_children()] == ["running", "running"]
            assert app.call("chatty", "say", FLOOD, timeout=30) > 0  # still stuck: no wait
        # The reader is back: what was queued, then how much was dropped.
        dropped = int(tap.read_until(DROPPED).group(1))
        assert dropped > 0
        assert stop(proc) == 0
        tap.read_to_end()
    finally:
        stop(proc)
        proc.stderr.close()
    text = tap.data.decode("utf-8", "replace")
    assert "tree 'root' stopped" in text  # the last lines were written once it drained


APP_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys, threading
    import supervisor
    from supervisor import Supervisor, child, telemetry
    from tests.faults._workers import Chatty
    from workers.echo import Echo

    started = threading.Condition()
    pids = []

    def on_start(event, measurements, metadata):
        if metadata["path"] == "echo":
            with started:
                pids.append(metadata["pid"])
                started.notify_all()

    tree = Supervisor("root", children=[child("echo", Echo), child("chatty", Chatty)])
    with supervisor.start(tree) as app:
        # The default reporter stays on: it logs the events to this process's stuck
        # stderr from a thread of its own, never from the thread that reads the root.
        telemetry.attach("t", [("supervisor", "child", "started")], on_start)
        print("up", flush=True)
        sys.stdin.readline()  # the test has stopped reading our stderr
        app.call("chatty", "say", FLOOD, timeout=30)
        pid = app.call("echo", "pid", timeout=10)
        os.kill(pid, signal.SIGKILL)
        with started:
            restarted = started.wait_for(lambda: pids and pids[-1] != pid, 10)
        answer = app.call("echo", "echo", "still here", timeout=10) if restarted else None
        print(json.dumps({"restarted": bool(restarted), "answer": answer}), flush=True)
""").replace("FLOOD", str(FLOOD))


def test_a_stuck_stderr_pipe_does_not_stall_an_apps_tree(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", APP_SCRIPT], cwd=ROOT, text=True,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        assert proc.stdout.readline().strip() == "up"
        proc.stdin.write("go\n")
        proc.stdin.flush()
        ready, _, _ = select.select([proc.stdout], [], [], 60)
        assert ready, "the App's script did not report within 60 s"
        assert json.loads(proc.stdout.readline()) == {"restarted": True,
                                                      "answer": "still here"}
        _, err = proc.communicate(timeout=60)
        assert proc.returncode == 0
        assert DROPPED.search(err)
    finally:
        stop(proc)
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()


# ------------------------------------------------------------------ the sink itself
@pytest.fixture
def pipe():
    r, w = os.pipe()
    yield r, w
    for fd in (r, w):
        os.close(fd)


def drain(fd: int) -> bytes:
    os.set_blocking(fd, False)
    data = b""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return data
        data += chunk


def test_the_sink_queues_then_drops_then_reports_once_drained(pipe):
    r, w = pipe
    sink = StderrSink(fd=w, limit=64 * 1024)
    loop = Loop()
    sink.attach(loop)
    handler = logger.add(sink, format="{message}", level="INFO")
    try:
        for n in range(5000):  # ~500 KiB: the pipe (64 KiB) then the queue fill up
            logger.info("line {:06d} {}", n, "x" * 90)  # returns: never waits for a reader
        assert sink.queued <= sink.limit
        assert sink.dropped > 0
        dropped = sink.dropped
        # fd 2's description is shared with other processes: it must stay blocking.
        assert not fcntl.fcntl(w, fcntl.F_GETFL) & os.O_NONBLOCK
        received = drain(r)
        deadline = time.monotonic() + 10
        while not DROPPED.search(received.decode()) and time.monotonic() < deadline:
            loop.run_once(max_wait=0.5)  # the writable fd wakes the loop, which writes
            received += drain(r)
    finally:
        logger.remove(handler)  # the sink's stop(): it closes its own descriptor
        loop.selector.close()
    lines = received.decode().splitlines()
    assert DROPPED.fullmatch(lines[-1]).group(1) == str(dropped)
    kept = [int(line.split()[1]) for line in lines[:-1]]
    assert kept == list(range(len(kept)))  # the oldest lines, in order, whole
    assert len(kept) + dropped == 5000


def test_the_sink_writes_a_regular_file_in_full(tmp_path):
    path = tmp_path / "log"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT)
    try:
        sink = StderrSink(fd=fd, limit=1024)
        for n in range(1000):
            sink.write(f"line {n}\n")
    finally:
        os.close(fd)
    assert path.read_text().splitlines() == [f"line {n}" for n in range(1000)]
    assert sink.dropped == 0


def test_an_apps_default_reporter_never_holds_up_the_reader_thread(monkeypatch):
    """The reporter's log is blocked (its handler waits on `unblock`): delivering events
    still returns at once; past the queue's bound they are dropped, then counted."""
    unblock = threading.Event()
    logged = []

    def blocked_report(event, measurements, metadata):
        unblock.wait(30)
        logged.append(metadata["n"])

    monkeypatch.setattr(telemetry, "_report", blocked_report)
    monkeypatch.setattr(telemetry._ReportThread, "LIMIT", 100)
    reporter = telemetry._ReportThread()
    warnings = []
    handler = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING",
                         filter=lambda r: "telemetry log lines" in r["message"])
    try:
        reporter(("supervisor", "child", "started"), {}, {"n": 0})
        with reporter.cond:  # the thread has taken it and is stuck logging it
            assert reporter.cond.wait_for(lambda: reporter.busy, 10)
        for n in range(1, 150):  # 100 wait, the rest are dropped
            reporter(("supervisor", "child", "started"), {}, {"n": n})
        assert reporter.dropped == 49
        unblock.set()
        reporter.flush(10)
    finally:
        unblock.set()
        logger.remove(handler)
    assert logged == list(range(101))
    assert warnings == ["dropped 49 telemetry log lines while the log was blocked"]
