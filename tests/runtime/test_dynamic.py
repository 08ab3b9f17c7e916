"""Dynamic children (OTP's start_child & co.) and significant children with auto_shutdown."""

from __future__ import annotations

import os
import signal

import pytest

from supervisor import (
    ConfigError,
    NoSuchChild,
    PoolExhausted,
    StartError,
    Supervisor,
    WorkerError,
    child,
)
from workers.echo import Echo

from ._workers import Calc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def jobs_tree(**kwargs):
    return Supervisor("root", children=[
        Supervisor("jobs", strategy="simple_one_for_one",
                   template=child("job", Calc, args=(5,), restart="transient"), **kwargs),
    ])


def test_simple_one_for_one_children_get_numbered_ids_and_appended_args(start_tree):
    app = start_tree(jobs_tree())
    assert app.which_children("jobs") == []
    first = app.start_child("jobs")
    second = app.start_child("jobs", args=[])
    assert (first, second) == ("job-1", "job-2")
    assert app.call("jobs/job-1", "add", 1) == 6
    infos = app.which_children("jobs")
    assert [(i.id, i.kind, i.state, i.restarts) for i in infos] == [
        ("job-1", "worker", "running", 0), ("job-2", "worker", "running", 0)]
    assert all(i.pid for i in infos)
    # specs: the template, as in OTP (Elixir's DynamicSupervisor would say 2).
    assert app.count_children("jobs") == {"specs": 1, "active": 2, "supervisors": 0,
                                          "workers": 2}
    app.terminate_child("jobs", "job-1")
    assert [i.id for i in app.which_children("jobs")] == ["job-2"]
    assert app.start_child("jobs") == "job-3"


def test_simple_one_for_one_args_and_kwargs_reach_init(start_tree):
    app = start_tree(Supervisor("root", children=[
        Supervisor("jobs", strategy="simple_one_for_one", template=child("e", Echo))]))
    job = app.start_child("jobs", args=["p:"])
    assert app.call(f"jobs/{job}", "echo", "x") == "p:x"
    job = app.start_child("jobs", kwargs={"prefix": "k:"})
    assert app.call(f"jobs/{job}", "echo", "x") == "k:x"


def test_max_children_refuses_more(start_tree):
    app = start_tree(jobs_tree(max_children=1))
    app.start_child("jobs")
    with pytest.raises(PoolExhausted, match=r"^max_children \(1\) reached"):
        app.start_child("jobs")


def test_start_child_whose_init_fails_raises_start_error(start_tree):
    app = start_tree(Supervisor("root", children=[
        Supervisor("jobs", strategy="simple_one_for_one", template=child("e", Echo))]))
    with pytest.raises(StartError, match=r"^child 'jobs/e-1' failed to start "
                                         r"\(initialization_error\): RuntimeError: init asked"):
        app.start_child("jobs", kwargs={"fail_init": True})
    assert app.which_children("jobs") == []


def test_start_child_with_a_spec_then_restart_and_delete(start_tree):
    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    assert app.start_child("", child("b", Calc, kwargs={"base": 1})) == "b"
    assert [i.id for i in app.which_children()] == ["a", "b"]
    assert app.call("b", "get") == 1
    with pytest.raises(ConfigError, match=r"duplicate child id 'b'"):
        app.start_child("", child("b", Echo))
    with pytest.raises(WorkerError, match=r"^'b' is running"):
        app.delete_child("", "b")
    with pytest.raises(WorkerError, match=r"^'b' is running"):
        app.restart_child("", "b")
    app.terminate_child("", "b")
    assert {i.id: (i.state, i.pid) for i in app.which_children()}["b"] == ("stopped", None)
    pid = app.restart_child("", "b")
    assert app.call("b", "get") == 1
    assert {i.id: i.pid for i in app.which_children()}["b"] == pid
    app.terminate_child("", "b")
    app.delete_child("", "b")
    assert [i.id for i in app.which_children()] == ["a"]
    with pytest.raises(NoSuchChild, match=r"^the root has no child 'b'"):
        app.terminate_child("", "b")


def test_start_child_without_a_spec_on_one_for_one_is_a_config_error(start_tree):
    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    with pytest.raises(ConfigError, match=r"start_child needs a spec"):
        app.start_child("")


def test_dynamic_supervisor_child(start_tree):
    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    app.start_child("", Supervisor("sub", children=[child("x", Echo)]))
    assert app.call("sub/x", "ping") == "pong"
    assert app.count_children() == {"specs": 2, "active": 2, "supervisors": 1, "workers": 1}


# ------------------------------------------------------------------ significant children
def test_any_significant_child_exit_shuts_the_root_down(start_tree, events):
    app = start_tree(Supervisor("root", auto_shutdown="any_significant", children=[
        child("plain", Echo),
        child("main", Echo, restart="transient", significant=True),
    ]))
    app.call("main", "exit", "normal")
    assert app.wait(timeout=10) == "auto_shutdown"
    assert [m["path"] for m in events.named("exited")] == ["main", "plain"]


def test_all_significant_waits_for_the_last_one(start_tree, events):
    app = start_tree(Supervisor("root", auto_shutdown="all_significant", children=[
        child("s1", Echo, restart="transient", significant=True),
        child("s2", Echo, restart="temporary", significant=True),
    ]))
    app.call("s1", "exit", "normal")
    events.wait_count("exited", 1, "s1")
    assert app.wait(timeout=0.2) is None
    pid = {i.id: i.pid for i in app.which_children()}["s2"]
    os.kill(pid, signal.SIGKILL)
    assert app.wait(timeout=10) == "auto_shutdown"


def test_terminate_child_of_a_significant_child_does_not_auto_shutdown(start_tree):
    app = start_tree(Supervisor("root", auto_shutdown="any_significant", children=[
        child("main", Echo, restart="transient", significant=True), child("other", Echo)]))
    app.terminate_child("", "main")
    assert app.wait(timeout=0.3) is None
    assert app.call("other", "ping") == "pong"


def test_significant_child_supervisor_exit_shuts_down_its_parent(start_tree):
    app = start_tree(Supervisor("root", auto_shutdown="any_significant", children=[
        Supervisor("sub", restart="transient", significant=True, auto_shutdown="any_significant",
                   children=[child("w", Echo, restart="transient", significant=True)]),
    ]))
    app.call("sub/w", "exit", "normal")
    assert app.wait(timeout=10) == "auto_shutdown"
