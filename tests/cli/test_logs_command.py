"""`python -m supervisor logs PATH [-n N] [-f]`: a child's output from the running tree.

The tree runs in a subprocess (tests/_service.py); `logs -f` runs in another, whose stdout
a reader thread collects: a test waits for a line with a timeout, never sleeps.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys

import pytest

from supervisor.tree.childlog import TAIL_LINES, ChildLog
from supervisor.wire import messages as P
from tests._service import ROOT, CollectedLines, running

LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} \| (\w+) +\| (\w+) +\| (.*)")

TREE = """
[tree]
id = "logs"
max_restarts = 5
max_seconds = 10

[[tree.children]]
id = "talker"
worker = "tests.cli._workers:Talker"

[[tree.children]]
id = "jobs"
type = "supervisor"

  [[tree.children.children]]
  id = "ticker"
  start_seconds = 0
  command = ["{python}", "-u", "-c", "import sys, time\\ni = 0\\nwhile True:\\n    i += 1\\n    print(f'tick {{i}}')\\n    print(f'tock {{i}}', file=sys.stderr)\\n    time.sleep(0.2)"]
"""


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


class Follower(CollectedLines):
    """`logs ARGS` in a subprocess; its stdout lines collected by a thread."""

    def __init__(self, svc, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "logs", *args, "--socket", svc.socket],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.collect(self.proc.stdout)

    def wait_line(self, pattern: str, timeout: float = 20.0) -> int:
        return self.wait_for(lambda line: re.search(pattern, line), f"matching {pattern!r}",
                             timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        self.reader.join(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


@pytest.fixture
def follow():
    started: list[Follower] = []

    def _follow(svc, *args: str) -> Follower:
        started.append(Follower(svc, *args))
        return started[-1]

    yield _follow
    for follower in started:
        follower.close()


def test_logs_n_prints_the_last_lines_without_log_files(service):
    svc = service(TREE.format(python=sys.executable))
    svc.wait_line("is up")
    for word in ("one", "two", "three"):
        assert svc.cmd("call", "talker", "say", json.dumps([word])).returncode == 0
    done = svc.cmd("logs", "talker", "-n", "2")
    assert done.returncode == 0, done.stderr
    lines = [LINE.fullmatch(line).groups() for line in done.stdout.splitlines()]
    assert lines == [("INFO", "stdout", "two"), ("INFO", "stdout", "three")]
    everything = svc.cmd("logs", "talker").stdout.splitlines()
    assert [LINE.fullmatch(line)[3] for line in everything] == [
        "talker talker up", "one", "two", "three"]


def test_logs_f_follows_a_live_child_and_ends_with_the_tree(service, follow):
    svc = service(TREE.format(python=sys.executable))
    svc.wait_line("is up")
    follower = follow(svc, "jobs/ticker", "-n", "1", "-f")
    first = follower.wait_line(r"\| (stdout|stderr) +\| t[io]ck \d+$")
    start = int(re.search(r"\d+$", follower.lines[first])[0])
    # New lines keep coming, each stream tagged.
    follower.wait_line(rf"\| stdout +\| tick {start + 3}$")
    follower.wait_line(rf"\| stderr +\| tock {start + 3}$")
    assert svc.cmd("shutdown").returncode == 0
    code = follower.proc.wait(30)
    assert (code, follower.proc.stderr.read()) == (0, "")  # the tree stopped: a clean end


def test_logs_f_json_lines_parse_and_carry_the_fields(service, follow):
    svc = service(TREE.format(python=sys.executable))
    svc.wait_line("is up")
    follower = follow(svc, "talker", "-f", "--json")
    follower.wait_line("talker talker up")
    assert svc.cmd("call", "talker", "warn", "[75]").returncode == 0
    follower.wait_line("disk 75 full")
    records = [json.loads(line) for line in follower.lines]
    assert [(r["child"], r["stream"], r["level"], r["message"]) for r in records] == [
        ("talker", "stdout", "INFO", "talker talker up"),
        ("talker", "log", "WARNING", "disk 75 full")]


def test_logs_f_follows_across_a_crash_and_ctrl_c_ends_it(service, follow):
    svc = service(TREE.format(python=sys.executable))
    svc.wait_line("is up")
    follower = follow(svc, "talker", "-f")
    follower.wait_line("talker talker up")
    svc.cmd("call", "talker", "die_loudly")
    follower.wait_line(r"\| stderr +\| last words$")
    assert svc.cmd("call", "talker", "say", '["after the crash"]').returncode == 0
    follower.wait_line(r"\| stdout +\| after the crash$")
    follower.proc.send_signal(signal.SIGINT)
    assert follower.proc.wait(20) == 0


@pytest.mark.parametrize(("path", "message"), [
    ("nope", "error: no child 'nope'\n"),
    ("jobs/nope", "error: no child 'jobs/nope'\n"),
    ("talker/x", "error: no child 'talker/x': 'talker' is a worker\n"),
    ("jobs", "error: 'jobs' is a supervisor: logs shows a worker's or a program's output "
             "(a supervisor's own lines are in the tree's log)\n"),
])
def test_an_unknown_path_is_exit_2_naming_it(service, path, message):
    svc = service(TREE.format(python=sys.executable))
    svc.wait_line("is up")
    done = svc.cmd("logs", path)
    assert (done.returncode, done.stdout, done.stderr) == (2, "", message)


# ---------------------------------------------------------------------- the kept tail
class _Loop:
    """The two loop calls a ChildLog makes, run by hand."""

    def __init__(self) -> None:
        self.soon: list = []

    def call_soon(self, callback):
        self.soon.append(callback)

    def call_later(self, delay, callback):
        return _Timer()


class _Timer:
    def cancel(self) -> None:
        pass


class _Uplink:
    def __init__(self) -> None:
        self.sent: list = []

    def relay(self, origin, msg) -> None:
        self.sent.append(msg)


def test_a_reader_that_fell_behind_is_told_how_many_lines_it_missed():
    log = ChildLog("chatty", _Loop())
    log.echo = False  # no loguru output from this unit test
    uplink = _Uplink()
    log.answer(P.Logs(id=1, path="chatty", lines=5), None, uplink)
    first = uplink.sent[-1].value
    for i in range(TAIL_LINES + 100):
        log.write("stdout", "INFO", f"line {i}")
    log.answer(P.Logs(id=2, path="chatty", after=first.next, epoch=first.epoch), None, uplink)
    chunk = uplink.sent[-1].value
    assert chunk.dropped == 100
    assert chunk.lines[0].message == "line 100"
    # A new epoch (the keeping supervisor restarted) is read from its start.
    other = ChildLog("chatty", _Loop())
    other.echo = False
    other.write("stderr", "INFO", "fresh")
    other.answer(P.Logs(id=3, path="chatty", after=chunk.next, epoch=chunk.epoch), None, uplink)
    assert [line.message for line in uplink.sent[-1].value.lines] == ["fresh"]


def test_a_waiting_reader_is_answered_once_per_burst():
    loop = _Loop()
    log = ChildLog("quiet", loop)
    log.echo = False
    uplink = _Uplink()
    log.answer(P.Logs(id=1, path="quiet", after=0, wait=True, epoch=log.epoch), None, uplink)
    assert uplink.sent == []  # parked: nothing to say yet
    for i in range(3):
        log.write("stdout", "INFO", f"burst {i}")
    assert len(loop.soon) == 1
    loop.soon.pop()()
    (answer,) = uplink.sent
    assert [line.message for line in answer.value.lines] == ["burst 0", "burst 1", "burst 2"]
