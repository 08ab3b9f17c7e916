"""The command line end to end, in subprocesses: run, status, start/stop/restart, call,
shutdown (by socket and by SIGTERM), exit codes, the control socket's rules, log capture,
and every malformed file of the corpus giving its message and exit status 2."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from supervisor import cli
from supervisor.service.control import ControlServer
from supervisor.wire.trust import peer_uid

from .._procs import wait_gone
from .._service import Service, running
from ..config.test_malformed import EXPECTED, MALFORMED

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]

TREE = """
[tree]
id = "svc"
max_restarts = 5
max_seconds = 10

[[tree.children]]
id = "talker"
worker = "tests.cli._workers:Talker"

[[tree.children]]
id = "jobs"
type = "supervisor"

  [[tree.children.children]]
  id = "sleeper"
  command = ["sleep", "300"]
  shutdown = 1.0

  [[tree.children.children]]
  id = "calc"
  worker = "tests.runtime._workers:Calc"
  kwargs = { base = 40 }
"""


@pytest.fixture
def service(tmp_path):
    """service(tree=TREE, *extra) -> a Service just started (not yet up); stopped at
    teardown."""
    with running(tmp_path) as start:

        def _start(tree: str = TREE, *extra: str) -> Service:
            return start(tree, *extra)

        yield _start


def test_run_status_kill_restart_and_shutdown(service):
    svc = service()
    svc.wait_line("tree 'svc' is up")
    status = svc.cmd("status")
    assert status.returncode == 0, status.stderr
    rows = status.stdout.splitlines()
    assert rows[0].split() == ["PATH", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "RSS",
                               "CIRCUIT"]
    paths = [row.split()[0] for row in rows[1:]]
    assert paths == ["/", "talker", "jobs", "jobs/sleeper", "jobs/calc"]
    tree = json.loads(svc.cmd("status", "--json").stdout)
    talker = tree["children"][0]
    os.kill(talker["pid"], signal.SIGKILL)
    svc.wait_line("child.restarted talker")
    after = json.loads(svc.cmd("status", "--json").stdout)["children"][0]
    assert after["pid"] != talker["pid"] and after["restarts"] == 1
    done = svc.cmd("shutdown")
    assert (done.returncode, done.stdout) == (0, "tree stopped (normal)\n")
    assert svc.finish() == 0
    svc.wait_line("tree 'svc' stopped: normal")


def test_call_start_stop_restart(service):
    svc = service()
    svc.wait_line("is up")
    call = svc.cmd("call", "jobs/calc", "add", "[1, 1]")
    assert (call.returncode, call.stdout) == (0, "42\n")
    stop = svc.cmd("stop", "jobs/sleeper")
    assert (stop.returncode, stop.stdout) == (0, "jobs/sleeper: stopped\n")
    states = {c["id"]: c["state"] for c in json.loads(
        svc.cmd("status", "--json").stdout)["children"][1]["children"]}
    assert states == {"sleeper": "stopped", "calc": "running"}
    start = svc.cmd("start", "jobs/sleeper")
    assert start.returncode == 0 and start.stdout.startswith("jobs/sleeper: started (pid ")
    restart = svc.cmd("restart", "talker")
    assert restart.returncode == 0 and restart.stdout.startswith("talker: restarted (pid ")


def test_call_takes_keyword_arguments_and_status_one_subtree(service):
    svc = service()
    svc.wait_line("is up")
    call = svc.cmd("call", "jobs/calc", "add", '{"a": 1, "b": 2}')
    assert (call.returncode, call.stdout) == (0, "43\n")
    status = svc.cmd("status", "jobs")
    assert status.returncode == 0, status.stderr
    assert [row.split()[0] for row in status.stdout.splitlines()[1:]] == [
        "jobs", "jobs/sleeper", "jobs/calc"]
    sub = json.loads(svc.cmd("status", "jobs", "--json").stdout)
    assert (sub["path"], [c["id"] for c in sub["children"]]) == ("jobs", ["sleeper", "calc"])
    worker = svc.cmd("status", "talker")
    assert worker.returncode == 1
    assert worker.stderr.startswith("error: NoSuchChild: 'talker' is a worker, not a supervisor")


def test_version_and_every_command_has_a_help_with_an_example():
    version = subprocess.run([sys.executable, "-m", "supervisor", "--version"],
                             capture_output=True, text=True, timeout=30)
    assert version.returncode == 0
    assert re.fullmatch(r"python -m supervisor \(otp-supervisor \S+\)\n", version.stdout)
    for command in cli._HELP:
        page = subprocess.run([sys.executable, "-m", "supervisor", command, "--help"],
                              capture_output=True, text=True, timeout=30)
        assert page.returncode == 0, page.stderr
        assert "\nexample:\n  python -m supervisor " + command in page.stdout, command


def test_the_console_script_is_the_same_command():
    script = Path(sys.executable).with_name("otp-supervisor")
    if not script.exists():
        pytest.skip(f"{script} is not installed (an editable install made before the "
                    "script existed); `pip install .` installs it")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True,
                            timeout=30)
    assert result.returncode == 0
    assert result.stdout.startswith("otp-supervisor (otp-supervisor ")


@pytest.mark.parametrize("args, code, message", [
    (("call", "nope", "x"), 1, "error: NoSuchChild: no child 'nope'\n"),
    (("call", "jobs/calc", "add", '"x"'), 2,
     "error: JSON-ARGS: expected a JSON array of arguments or a JSON object of keyword "
     "arguments, got '\"x\"'\n"),
    (("call", "jobs/calc", "add", '{"a": 1, "timeout": 3}'), 2,
     "error: JSON-ARGS: timeout: reserved by the call itself (use --timeout); pass such an "
     "argument by position\n"),
    (("call", "jobs/calc", "add", "[1"), 2, None),
    (("call", "jobs/calc", "missing"), 1,
     "error: CommandError: UnknownCommand: Calc has no command 'missing' (commands: add, "
     "busy, get, slow, unencodable)\n"),
    (("stop", "/"), 2, "error: PATH: expected a child path such as 'jobs/sleeper'\n"),
])
def test_control_command_errors(service, args, code, message):
    svc = service()
    svc.wait_line("is up")
    result = svc.cmd(*args)
    assert result.returncode == code
    if message is not None:
        assert result.stderr == message
    assert "Traceback" not in result.stderr


def test_sigterm_stops_the_tree_gracefully_in_reverse_order(service):
    svc = service()
    svc.wait_line("is up")
    pids = [c["pid"] for c in json.loads(svc.cmd("status", "--json").stdout)["children"]]
    svc.proc.send_signal(signal.SIGTERM)
    assert svc.finish() == 0
    exits = [line.split("child.exited ")[1].split()[0] for line in svc.lines
             if "child.exited" in line]
    assert exits == ["jobs/calc", "jobs/sleeper", "jobs", "talker"]
    assert wait_gone(pids, timeout=2) == []


def test_the_root_giving_up_exits_1(service):
    svc = service("""
        [tree]
        id = "fragile"
        max_restarts = 0

        [[tree.children]]
        id = "w"
        worker = "workers.echo:Echo"
    """)
    svc.wait_line("is up")
    pid = json.loads(svc.cmd("status", "--json").stdout)["children"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    assert svc.finish() == 1
    svc.wait_line("stopped: reached_max_restart_intensity")


ONE_WORKER = """
    [tree]
    id = "fragile"
    auto_shutdown = "any_significant"
    {row}

    [[tree.children]]
    id = "w"
    worker = "workers.echo:Echo"
    restart = "transient"
    significant = true
"""


@pytest.mark.parametrize("row, act, status, line", [
    # the matrix gives up on its only child: nothing left to run (issue 14)
    ('[tree.errors.connection_error]\n    recovery = "abandon"', "kill", 1,
     "stopped: children_abandoned"),
    # the row opts in to escalate: the supervisor gives up, naming the category
    ('[tree.errors.connection_error]\n    recovery = "abandon"\n    on_exhausted = '
     '"escalate"', "kill", 1, "stopped: escalated:connection_error"),
    ("", "exit", 0, "stopped: auto_shutdown"),  # a significant child ended normally
    ("", "shutdown", 0, "stopped: normal"),
])
def test_the_exit_line_names_the_real_reason(service, row, act, status, line):
    svc = service(ONE_WORKER.format(row=row))
    svc.wait_line("is up")
    pid = json.loads(svc.cmd("status", "--json").stdout)["children"][0]["pid"]
    if act == "kill":
        os.kill(pid, signal.SIGKILL)
    elif act == "exit":
        assert svc.cmd("call", "w", "exit", '["normal"]').returncode == 0
    else:
        assert svc.cmd("shutdown").returncode == 0
    assert svc.finish() == status
    svc.wait_line(line)
    if "intensity" not in line:
        assert not any("intensity.exceeded" in text for text in svc.lines)


def test_status_shows_an_abandoned_child_and_why(service):
    svc = service("""
        [tree]
        id = "svc"

        [[tree.children]]
        id = "w"
        worker = "workers.echo:Echo"
        errors = { connection_error = { recovery = "abandon" } }

        [[tree.children]]
        id = "s"
        worker = "workers.echo:Echo"
    """)
    svc.wait_line("is up")
    pid = json.loads(svc.cmd("status", "--json").stdout)["children"][0]["pid"]
    os.kill(pid, signal.SIGKILL)
    svc.wait_line("child.abandoned w")
    rows = svc.cmd("status").stdout.splitlines()
    assert rows[0].split()[-1] == "REASON"
    (w,) = [row for row in rows if row.split()[0] == "w"]
    assert w.split()[2] == "abandoned"
    assert "connection_error on 1 consecutive failure(s); last: killed by SIGKILL" in w
    w = json.loads(svc.cmd("status", "--json").stdout)["children"][0]
    assert (w["state"], w["pid"]) == ("abandoned", None)
    call = svc.cmd("call", "w", "ping")
    assert call.returncode == 1 and "ChildAbandoned" in call.stderr
    started = svc.cmd("start", "w")
    assert started.returncode == 0, started.stderr
    assert svc.cmd("call", "w", "ping").stdout.strip() == '"pong"'


def test_a_child_failing_to_start_exits_1_with_its_traceback(service):
    svc = service("""
        [tree]
        id = "broken"

        [[tree.children]]
        id = "w"
        worker = "workers.echo:Echo"
        kwargs = { fail_init = true }
    """)
    assert svc.finish() == 1
    svc.wait_line("child 'w' failed (initialization_error): RuntimeError: init asked to fail")
    svc.wait_line("remote traceback:")


def test_the_output_of_a_child_that_failed_to_start_is_logged(service):
    # The last lines before an init failure are what a user needs most.
    svc = service("""
        [tree]
        id = "broken"

        [[tree.children]]
        id = "w"
        worker = "tests.cli._workers:Doomed"
    """)
    assert svc.finish() == 1
    svc.wait_line("[w] loading the model")
    svc.wait_line("[w] model file is corrupt")


def test_worker_output_and_the_last_lines_of_a_crash_are_logged(service):
    svc = service()
    svc.wait_line("[talker] talker talker up")
    assert svc.cmd("call", "talker", "say", '["hello there"]').returncode == 0
    svc.wait_line("[talker] hello there")
    svc.cmd("call", "talker", "die_loudly")
    svc.wait_line("[talker] about to die")
    svc.wait_line("[talker] last words")


def test_a_workers_log_line_is_stamped_once_with_its_own_level(service):
    svc = service()
    svc.wait_line("is up")
    assert svc.cmd("call", "talker", "warn", "[90]").returncode == 0
    at = svc.wait_line("[talker] disk 90 full")
    line = svc.lines[at]
    # One timestamp and one level (the worker's), then the child's tag and the message.
    assert re.fullmatch(r"\d\d:\d\d:\d\d\.\d{3} \| WARNING \| \[talker\] disk 90 full", line)


def test_log_json_carries_a_workers_record_fields_as_fields(service):
    svc = service(TREE, "--log-json")
    svc.wait_line("is up")
    assert svc.cmd("call", "talker", "warn", "[90]").returncode == 0
    assert svc.cmd("call", "talker", "say", '["plain words"]').returncode == 0
    svc.wait_line("plain words")
    assert svc.cmd("shutdown").returncode == 0
    svc.finish()
    records = [json.loads(line)["record"] for line in svc.lines if line.startswith("{")]
    (warned,) = [r for r in records if r["message"] == "[talker] disk 90 full"]
    assert (warned["level"]["name"], warned["extra"]) == (
        "WARNING", {"child": "talker", "stream": "log", "disk": "sda"})
    (said,) = [r for r in records if r["message"] == "[talker] plain words"]
    assert (said["level"]["name"], said["extra"]) == (
        "INFO", {"child": "talker", "stream": "stdout"})


def test_log_json_prints_one_object_per_line(service):
    svc = service(TREE, "--log-json")
    svc.wait_line("is up")
    assert svc.cmd("shutdown").returncode == 0
    svc.finish()
    records = [json.loads(line) for line in svc.lines if line.startswith("{")]
    assert records and all("record" in r and "text" in r for r in records)
    assert any(r["record"]["extra"].get("event") == "child.started" for r in records)


# ------------------------------------------------------------------ the control socket
def test_socket_is_private_and_a_second_run_is_refused(service, tmp_path):
    svc = service()
    svc.wait_line("is up")
    mode = stat.S_IMODE(os.stat(svc.socket).st_mode)
    assert mode == 0o600
    second = subprocess.run([sys.executable, "-m", "supervisor", "run", str(svc.toml),
                             "--socket", svc.socket], cwd=ROOT, capture_output=True,
                            text=True, timeout=30)
    assert second.returncode == 2
    assert second.stderr == (f"error: socket: a tree is already running on {svc.socket}; "
                             "stop it first or pick another --socket\n")


def test_default_socket_directory_is_private_and_found_without_flags(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "xdg"))
    proc = subprocess.Popen([sys.executable, "-m", "supervisor", "run",
                             str(ROOT / "examples" / "demo.toml")], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stderr:
            if "is up" in line:
                break
        directory = tmp_path / "xdg" / "supervisor"
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
        assert (directory / "demo.sock").exists()
        status = subprocess.run([sys.executable, "-m", "supervisor", "status"], cwd=ROOT,
                                env=env, capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert "jobs/ticker" in status.stdout
        done = subprocess.run([sys.executable, "-m", "supervisor", "shutdown"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stderr.close()


def test_no_running_tree_is_exit_2(tmp_path):
    env = dict(os.environ, XDG_RUNTIME_DIR=str(tmp_path / "empty"))
    result = subprocess.run([sys.executable, "-m", "supervisor", "status"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert result.stderr.startswith("error: socket: no running tree found in ")


def test_a_stale_socket_is_replaced(service, tmp_path):
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tmp_path / "ctl.sock"))
    stale.close()  # the file stays; nobody listens: a run that died
    svc = service()
    svc.wait_line("is up")
    assert svc.cmd("status").returncode == 0


def test_another_uid_cannot_reach_the_socket(service, tmp_path):
    if os.getuid() != 0:
        pytest.skip("switching uid needs root")
    svc = service()
    svc.wait_line("is up")
    os.chmod(tmp_path, 0o755)  # let the other uid reach the directory; the socket is 0600
    probe = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(f"""
            import os, socket
            os.setgid(65534); os.setuid(65534)
            s = socket.socket(socket.AF_UNIX)
            try:
                s.connect({svc.socket!r})
            except PermissionError:
                print("refused")
        """)], capture_output=True, text=True, timeout=30)
    assert probe.stdout == "refused\n", probe.stderr


def test_the_server_refuses_a_peer_with_another_uid(monkeypatch):
    """SO_PEERCRED: a connection whose peer uid is not ours is closed at accept."""
    left, right = socket.socketpair()
    assert peer_uid(left) == os.getuid()

    class FakeListener:
        def accept(self):
            return left, None

    server = ControlServer.__new__(ControlServer)
    server.listener = FakeListener()
    server.clients = {}
    monkeypatch.setattr("supervisor.service.control.peer_uid", lambda conn: os.getuid() + 1)
    server._accept()
    assert server.clients == {}
    assert left.fileno() == -1  # closed
    right.close()


# ------------------------------------------------------------------ check and the corpus
def test_check_prints_the_tree(capsys):
    assert cli.main(["check", str(ROOT / "examples" / "demo.toml")]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "demo (supervisor): one_for_one, max_restarts=5, max_seconds=10"
    assert "ticker (program): $ sh -c" in out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_malformed_file_is_exit_2_with_its_message(name, capsys, monkeypatch):
    monkeypatch.chdir(MALFORMED)
    assert cli.main(["check", name]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {name}{EXPECTED[name]}\n"


@pytest.mark.parametrize("name", ["unknown_strategy.toml", "syntax_unclosed_bracket.toml"])
def test_run_with_a_bad_file_is_exit_2_without_traceback(name):
    result = subprocess.run([sys.executable, "-m", "supervisor", "run", name],
                            cwd=MALFORMED, capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 2
    assert result.stderr == f"error: {name}{EXPECTED[name]}\n"


def test_a_tree_file_resolves_its_workers_from_its_own_directory(tmp_path):
    """`worker = "module:Class"` next to the tree file works from any working directory
    (`directory` defaults to the file's own; a relative one is the file's too)."""
    project = tmp_path / "project"
    (project / "lib").mkdir(parents=True)
    (project / "lib" / "mine.py").write_text(
        "from supervisor import Worker\n\nclass Mine(Worker):\n    def hi(self):\n"
        "        return 'hi'\n")
    (project / "tree.toml").write_text(
        '[tree]\nid = "p"\ndirectory = "lib"\n\n[[tree.children]]\nid = "m"\n'
        'worker = "mine:Mine"\n')
    result = subprocess.run([sys.executable, "-m", "supervisor", "check",
                             str(project / "tree.toml")], cwd="/", capture_output=True,
                            text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "m" in result.stdout and "mine:Mine" in result.stdout
    missing = project / "bad.toml"
    missing.write_text('[tree]\nid = "p"\ndirectory = "nowhere"\n')
    bad = subprocess.run([sys.executable, "-m", "supervisor", "check", str(missing)],
                         cwd="/", capture_output=True, text=True, timeout=30)
    assert (bad.returncode, bad.stderr) == (
        2, f"error: {missing}: tree.directory: {project / 'nowhere'} is not a directory\n")


def test_signal_sends_a_signal_to_a_running_child(service):
    svc = service()
    svc.wait_line("is up")
    before = json.loads(svc.cmd("status", "--json").stdout)["children"][0]
    sent = svc.cmd("signal", "talker", "KILL")
    assert (sent.returncode, sent.stdout) == (0, f"talker: sent SIGKILL (pid {before['pid']})\n")
    svc.wait_line("child.restarted talker")  # a death like any other: restarted
    after = json.loads(svc.cmd("status", "--json").stdout)["children"][0]
    assert after["pid"] != before["pid"] and after["restarts"] == 1
    bad = svc.cmd("signal", "talker", "SIGNOPE")
    assert (bad.returncode, bad.stderr) == (
        2, "error: SIGNAL: expected a signal name such as 'SIGTERM', got 'SIGNOPE'\n")
    assert svc.cmd("stop", "jobs/sleeper").returncode == 0
    stopped = svc.cmd("signal", "jobs/sleeper", "TERM")
    assert stopped.returncode == 1
    assert stopped.stderr.startswith("error: WorkerError: 'jobs/sleeper' is not running")


def test_completion_without_its_extra_says_which_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "shtab", None)  # `import shtab` raises ImportError
    assert cli.main(["completion", "bash"]) == 2
    assert capsys.readouterr().err == (
        "error: completion needs the completion extra: "
        "pip install 'otp-supervisor[completion]'\n")
