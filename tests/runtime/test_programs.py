"""External programs as children, and the capture of children's output."""

from __future__ import annotations

import os
import signal
import time

import psutil
import pytest

from supervisor import NoSuchChild, StartError, Supervisor, child
from supervisor.specs import program
from workers.echo import Echo

from .._procs import wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def pid_of(app, cid, path=""):
    return {i.id: i.pid for i in app.which_children(path)}[cid]


def test_program_runs_in_its_own_process_group(start_tree):
    app = start_tree(Supervisor("root", children=[program("p", ["sleep", "100"])]))
    pid = pid_of(app, "p")
    assert os.getpgid(pid) == pid
    assert os.getpgid(pid) != os.getpgid(app.pid)


def test_program_ignoring_sigterm_is_killed_after_the_grace_with_its_group(start_tree,
                                                                           events):
    script = "trap '' TERM; sleep 300 & sleep 300 & wait"
    app = start_tree(Supervisor("root", children=[
        program("stubborn", ["sh", "-c", script], shutdown=0.5)]))
    leader = psutil.Process(pid_of(app, "stubborn"))
    events.wait_for(lambda log: len(leader.children()) == 2, what="two sleeps started")
    group = [leader.pid] + [p.pid for p in leader.children()]
    started = time.monotonic()
    app.terminate_child("", "stubborn")
    took = time.monotonic() - started
    assert 0.4 <= took < 3.0
    assert events.named("exited", "stubborn")[0]["detail"] == "killed by SIGKILL"
    assert wait_gone(group, timeout=2.0) == []


def test_program_stop_signal_is_configurable(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        program("p", ["sleep", "100"], stop_signal="SIGINT", shutdown=5)]))
    app.terminate_child("", "p")
    assert events.named("exited", "p")[0]["detail"] == "killed by SIGINT"


def test_program_exit_codes_map_to_exit_reasons(start_tree, events):
    # start_seconds=0: up at exec, so these quick exits are exits, not start failures.
    start_tree(Supervisor("root", children=[
        program("ok", ["true"], restart="transient", start_seconds=0),
        program("bad", ["sh", "-c", "exit 3"], restart="temporary", start_seconds=0),
        child("keep", Echo),
    ]))
    ok = events.wait_count("exited", 1, "ok")[0]
    bad = events.wait_count("exited", 1, "bad")[0]
    assert (ok["reason"], ok["category"], ok["detail"]) == ("normal", None, "exit code 0")
    assert (bad["reason"], bad["category"], bad["detail"]) == (
        "exited", "connection_error", "exit code 3")
    assert events.named("restarted", "ok") == []


def test_a_program_that_cannot_run_fails_the_start(start_tree):
    with pytest.raises(StartError, match=r"^child 'p' failed to start \(initialization_error\)"
                                         r": FileNotFoundError: cannot run \['/no/such/prog'\]"):
        start_tree(Supervisor("root", children=[program("p", ["/no/such/prog"])]))


def test_program_env_and_cwd(start_tree, events, tmp_path):
    start_tree(Supervisor("root", children=[program(
        "p", ["sh", "-c", 'echo "$GREETING from $(pwd)" > out.txt'],
        env={"GREETING": "hello"}, cwd=str(tmp_path), restart="transient",
        start_seconds=0)]))
    events.wait_count("exited", 1, "p")
    assert (tmp_path / "out.txt").read_text() == f"hello from {tmp_path}\n"


def test_programs_take_no_calls(start_tree):
    app = start_tree(Supervisor("root", children=[program("p", ["sleep", "100"])]))
    with pytest.raises(NoSuchChild, match="is an external program; it takes no calls"):
        app.call("p", "anything")


def test_a_workers_subprocess_is_killed_when_its_program_group_leader_dies(start_tree,
                                                                           events):
    app = start_tree(Supervisor("root", children=[
        program("p", ["sh", "-c", "sleep 300 & wait"], restart="temporary")]))
    leader = psutil.Process(pid_of(app, "p"))
    events.wait_for(lambda log: len(leader.children()) == 1, what="the sleep started")
    orphan = leader.children()[0].pid
    os.kill(leader.pid, signal.SIGKILL)
    events.wait_count("exited", 1, "p")
    assert wait_gone([orphan], timeout=2.0) == []


# ------------------------------------------------------------------ start_seconds
def test_a_program_ending_within_start_seconds_is_a_start_failure(start_tree, events):
    # Even with exit code 0 (supervisord's startsecs): it did not start.
    start_tree(Supervisor("root", children=[
        program("quick", ["true"], restart="transient",
                errors={"connection_error": {"recovery": "abandon"}}),
        child("keep", Echo)]))
    (failed,) = events.wait_count("start_failed", 1, "quick")
    assert failed["category"] == "connection_error"
    assert failed["message"] == "exited within start_seconds (exit code 0)"
    assert events.named("started", "quick") == []  # never reported up
    (failure,) = events.wait_count("failure", 1, "quick")
    assert failure["category"] == "connection_error"


def test_a_restarted_program_is_back_only_once_it_ran_start_seconds(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        program("p", ["sleep", "100"], start_seconds=0.5)]))
    events.wait_count("started", 1, "p")
    killed = time.time()
    os.kill(pid_of(app, "p"), signal.SIGKILL)
    (complete,) = events.wait_count("complete", 1, "p")
    (restarted,) = events.named("restarted", "p")
    assert complete["result"] == "succeeded"
    # Both come after the replacement ran its start_seconds, not at its exec.
    assert events.wait_count("started", 2, "p")[1]["pid"] == restarted["pid"]
    times = [m["time"] for n, m, meta in events.events
             if n[-1] in ("restarted", "complete") and meta.get("path") == "p"]
    assert all(t - killed >= 0.5 for t in times)
