"""The service root's HTTP server: /metrics (parsed with prometheus_client's own parser),
/api/status against `status --json`, the token rules, the address rules."""

from __future__ import annotations

import json
import os
import signal
import stat

import pytest
from prometheus_client.parser import text_string_to_metric_families

from .._procs import wait_gone
from .._service import running
from ._observe import PATHS, TREE, get_json, http, pid_of, served

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


def _samples(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    status, body = http(url + "metrics")
    assert status == 200, body
    found = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _value(samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _restarted(svc, path: str, old_pid: int) -> int:
    """Wait for `path` to run again under a new pid (its restarted event); the new pid."""
    start = 0
    while True:
        start = svc.wait_line(f"child.restarted {path} ", start=start) + 1
        pid = pid_of(svc, path)
        if pid not in (None, old_pid):
            return pid


def test_metrics_move_after_calls_and_after_a_kill(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    before = _samples(url)
    for path in PATHS[1:]:
        assert _value(before, "supervisor_child_up", path=path,
                      kind="supervisor" if path == "jobs" else "worker") == 1.0
    assert _value(before, "supervisor_intensity_max_restarts", path="") == 5.0
    assert _value(before, "supervisor_intensity_window_seconds", path="jobs") == 5.0

    for n in range(3):
        assert svc.cmd("call", "jobs/calc", "add", f"[{n}]").returncode == 0
    failed = svc.cmd("call", "jobs/calc", "boom")
    assert failed.returncode == 1
    after_calls = _samples(url)
    assert _value(after_calls, "supervisor_worker_calls_total", path="jobs/calc") == 4.0
    assert _value(after_calls, "supervisor_worker_call_errors_total", path="jobs/calc",
                  category="python_error") == 1.0
    assert _value(after_calls, "supervisor_worker_call_duration_seconds_count",
                  path="jobs/calc") == 4.0
    assert _value(after_calls, "supervisor_worker_call_duration_seconds_bucket",
                  path="jobs/calc", le="+Inf") == 4.0
    # An external program serves no calls: no call counters for it.
    assert not any(name.startswith("supervisor_worker_") and ("path", "jobs/sleeper") in labels
                   for name, labels in after_calls)

    pid = pid_of(svc, "jobs/calc")
    os.kill(pid, signal.SIGKILL)
    _restarted(svc, "jobs/calc", pid)
    after_kill = _samples(url)
    assert _value(after_kill, "supervisor_child_restarts_total", path="jobs/calc") == 1.0
    assert _value(after_kill, "supervisor_child_failures_total", path="jobs/calc",
                  category="connection_error", action="restart") == 1.0
    assert _value(after_kill, "supervisor_intensity_restarts", path="jobs") == 1.0
    assert _value(after_kill, "supervisor_recovery_total", path="jobs",
                  result="succeeded") == 1.0
    # The replacement's own counters start again (a counter reset, as Prometheus expects).
    assert _value(after_kill, "supervisor_worker_calls_total", path="jobs/calc") == 0.0


def _stable(node: dict) -> dict:
    """A status node without its live fields (uptime and RSS move between two reads)."""
    return {key: ([_stable(c) for c in value] if key == "children" else value)
            for key, value in node.items() if key not in ("uptime", "memory_mb")}


def test_api_status_is_the_status_json_document(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    api = get_json(url + "api/status")
    cli = json.loads(svc.cmd("status", "--json").stdout)
    assert _stable(api) == _stable(cli)
    assert [n["path"] for n in _nodes(api)] == PATHS
    # The live fields are there too, of the same kind.
    assert all(set(a) == set(c) for a, c in zip(_nodes(api), _nodes(cli), strict=True))


def _nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("children", ()) for n in _nodes(child)]


def test_read_only_without_a_token(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    assert "read-only" in svc.lines[svc.wait_line("serving http://")]
    pid = pid_of(svc, "talker")
    status, body = http(url + "api/control", body={"action": "restart", "path": "talker"},
                        headers={"X-Supervisor-Token": "anything"})
    assert (status, json.loads(body)["error"]) == (
        403, "read-only: this server has no token (run with --metrics-token-file)")
    assert pid_of(svc, "talker") == pid
    assert get_json(url + "api/tree")["buttons"] is False


def test_buttons_need_the_token_from_the_0600_file(service, tmp_path):
    token_file = tmp_path / "web.token"
    svc = service(TREE, "--metrics", "127.0.0.1:0", "--metrics-token-file", str(token_file))
    url = served(svc)
    assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
    token = token_file.read_text().strip()
    assert len(token) >= 32
    assert get_json(url + "api/tree")["buttons"] is True
    pid = pid_of(svc, "talker")
    for headers in ({}, {"X-Supervisor-Token": "wrong"}, {"X-Supervisor-Token": token[:-1]}):
        status, body = http(url + "api/control", body={"action": "restart", "path": "talker"},
                            headers=headers)
        assert (status, json.loads(body)["error"]) == (
            403, "missing or wrong X-Supervisor-Token header")
    assert pid_of(svc, "talker") == pid
    status, body = http(url + "api/control", body={"action": "restart", "path": "talker"},
                        headers={"X-Supervisor-Token": token})
    assert status == 200, body
    new_pid = json.loads(body)["pid"]
    assert new_pid not in (None, pid) and pid_of(svc, "talker") == new_pid
    assert wait_gone([pid], 10) == []
    status, body = http(url + "api/control", body={"action": "stop", "path": "jobs/nope"},
                        headers={"X-Supervisor-Token": token})
    assert status == 409 and json.loads(body)["error"].startswith("NoSuchChild: ")


def test_an_open_token_file_is_refused(service, tmp_path):
    token_file = tmp_path / "web.token"
    token_file.write_text("x" * 40)
    token_file.chmod(0o644)
    svc = service(TREE, "--metrics", "127.0.0.1:0", "--metrics-token-file", str(token_file))
    assert svc.finish(30) == 2
    assert any(f"refusing {token_file}: mode 0644 lets group or others see the token" in line
               for line in svc.lines)


def test_a_non_loopback_address_needs_a_token(service):
    svc = service(TREE, "--metrics", "0.0.0.0:0")
    assert svc.finish(30) == 2
    assert svc.lines[-1] == ("error: metrics.address: refusing to serve 0.0.0.0:0 without a "
                             "token: a non-loopback address needs token_file "
                             "(--metrics-token-file)")


def test_the_metrics_table_of_the_tree_file(service, tmp_path):
    svc = service(TREE + '\n[metrics]\naddress = "0"\n')  # a bare port: on loopback
    url = served(svc)
    assert url.startswith("http://127.0.0.1:")
    assert get_json(url + "api/status")["id"] == "svc"


@pytest.mark.parametrize(("table", "message"), [
    ('address = "localhost"', "metrics.address: expected HOST:PORT such as 127.0.0.1:9464, "
                              "got 'localhost'"),
    ('address = 9464', "metrics.address: expected a string, got integer 9464"),
    ('address = "127.0.0.1:1"\nport = 2', "metrics.port: unknown key 'port'; expected one of "
                                         "address, token_file"),
    ('token_file = "x"', "metrics.address: required key 'address' is missing"),
])
def test_a_bad_metrics_table_is_one_line_and_exit_2(tmp_path, table, message):
    import subprocess
    import sys

    tree = tmp_path / "tree.toml"
    tree.write_text(TREE + "\n[metrics]\n" + table + "\n")
    done = subprocess.run([sys.executable, "-m", "supervisor", "check", str(tree)],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stderr) == (2, f"error: {tree}: {message}\n")


def test_a_foreign_host_header_is_refused(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    status, body = http(url + "api/status", headers={"Host": "attacker.example:80"})
    assert status == 421
    assert http(url + "api/status", headers={"Host": "localhost:1"})[0] == 200


def test_the_page_loads_nothing_from_elsewhere(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    status, body = http(url)
    page = body.decode()
    assert status == 200 and "<table>" in page
    assert "http://" not in page and "https://" not in page and "src=" not in page


def test_a_wedged_worker_does_not_hold_up_the_scrape(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    pid = pid_of(svc, "jobs/calc")
    os.kill(pid, signal.SIGSTOP)
    try:
        samples = _samples(url)
    finally:
        os.kill(pid, signal.SIGCONT)
    assert ("supervisor_worker_calls_total", (("path", "talker"),)) in samples
    assert ("supervisor_worker_calls_total", (("path", "jobs/calc"),)) not in samples
    assert _value(samples, "supervisor_child_up", path="jobs/calc", kind="worker") == 1.0
    # Its late answer was left on a connection that is gone: the next scrape has it.
    assert ("supervisor_worker_calls_total", (("path", "jobs/calc"),)) in _samples(url)


_CHURN = """
[tree]
id = "churn"
max_restarts = 100
max_seconds = 10

[[tree.children]]
id = "calc"
worker = "tests.runtime._workers:Calc"
kwargs = { base = 40 }
stable_after = 0.1
"""


def test_restarts_go_on_while_the_server_is_busy(service):
    """The root forks replacements while server threads are mid-request (the fork-after-
    thread hazard: a child inheriting a lock held by a server thread would hang before
    it is ready, and the restart would never complete)."""
    import threading

    # Every kill is a first failure after a healthy run (stable_after): restarted at once.
    svc = service(_CHURN, "--metrics", "127.0.0.1:0")
    url = served(svc)
    stop = threading.Event()
    answers: list[int] = []

    def hammer(path: str) -> None:
        while not stop.is_set():
            answers.append(http(url + path)[0])

    threads = [threading.Thread(target=hammer, args=(path,), daemon=True)
               for path in ("metrics", "api/tree", "api/events?after=0")]
    for thread in threads:
        thread.start()
    try:
        start = 0
        for _ in range(8):
            pid = pid_of(svc, "calc")
            os.kill(pid, signal.SIGKILL)
            start = svc.wait_line("child.restarted calc ", start=start) + 1
            assert wait_gone([pid], 10) == []
            assert svc.cmd("call", "calc", "add", "[1, 1]").stdout.strip() == "42"
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert answers and set(answers) <= {200, 503}, sorted(set(answers))


def test_an_address_in_use_is_one_line_and_exit_2(service):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        svc = service(TREE, "--metrics", f"127.0.0.1:{port}")
        assert svc.finish(30) == 2
    assert svc.lines[-1] == "error: [Errno 98] Address already in use"
    assert not any("child.started" in line for line in svc.lines)  # nothing was started
