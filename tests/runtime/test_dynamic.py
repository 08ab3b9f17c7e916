"""Dynamic children (OTP's start_child & co.) and significant children with auto_shutdown."""

from __future__ import annotations

import os
import signal

import pytest

from supervisor import (
    ConfigError,
    EncodeError,
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
def test_any_significant_child_exit_shuts_the_root_down(start_as, events):
    app = start_as(Supervisor("root", auto_shutdown="any_significant", children=[
        child("plain", Echo),
        child("main", Echo, restart="transient", significant=True),
    ]))
    app.call("main", "exit", "normal")
    assert app.wait(timeout=10) == "auto_shutdown"
    assert [m["path"] for m in events.named("exited")] == ["main", "plain"]


def test_all_significant_waits_for_the_last_one(start_as, events):
    app = start_as(Supervisor("root", auto_shutdown="all_significant", children=[
        child("s1", Echo, restart="transient", significant=True),
        child("s2", Echo, restart="temporary", significant=True),
    ]))
    app.call("s1", "exit", "normal")
    events.wait_count("exited", 1, "s1")
    assert app.wait(timeout=0.2) is None
    pid = {i.id: i.pid for i in app.which_children()}["s2"]
    os.kill(pid, signal.SIGKILL)
    assert app.wait(timeout=10) == "auto_shutdown"


def test_terminate_child_of_a_significant_child_does_not_auto_shutdown(start_as):
    app = start_as(Supervisor("root", auto_shutdown="any_significant", children=[
        child("main", Echo, restart="transient", significant=True), child("other", Echo)]))
    app.terminate_child("", "main")
    assert app.wait(timeout=0.3) is None
    assert app.call("other", "ping") == "pong"


def test_significant_child_supervisor_exit_shuts_down_its_parent(start_as):
    app = start_as(Supervisor("root", auto_shutdown="any_significant", children=[
        Supervisor("sub", restart="transient", significant=True, auto_shutdown="any_significant",
                   children=[child("w", Echo, restart="transient", significant=True)]),
    ]))
    app.call("sub/w", "exit", "normal")
    assert app.wait(timeout=10) == "auto_shutdown"


# ------------------------------------------------------------------ dynamic = static (issue 11)
def ids_states(app, path):
    return [(i.id, i.state) for i in app.which_children(path)]


def pid_in(app, path, child_id):
    return {i.id: i.pid for i in app.which_children(path)}[child_id]


@pytest.mark.parametrize("restart, how, restarted", [
    ("permanent", "kill", True),
    ("permanent", "normal", True),
    ("transient", "kill", True),
    ("transient", "normal", False),
    ("temporary", "kill", False),
    ("temporary", "normal", False),
])
def test_simple_one_for_one_children_follow_their_restart_type(start_tree, events, restart,
                                                               how, restarted):
    """OTP's simple_one_for_one cases: a crash of a dynamic child is handled like a static
    one's (it once crashed the supervisor); a child that is not restarted is removed."""
    app = start_tree(Supervisor("root", children=[
        Supervisor("jobs", strategy="simple_one_for_one",
                   template=child("job", Echo, restart=restart))]))
    jobs = pid_in(app, "", "jobs")
    a, b = app.start_child("jobs"), app.start_child("jobs")
    before = pid_in(app, "jobs", a)
    if how == "kill":
        os.kill(before, signal.SIGKILL)
    else:
        assert app.call(f"jobs/{a}", "exit", "normal") == "normal"
    events.wait_count("exited", 1, f"jobs/{a}")
    if restarted:
        events.wait_count("restarted", 1, f"jobs/{a}")
        assert ids_states(app, "jobs") == [(a, "running"), (b, "running")]
        assert pid_in(app, "jobs", a) not in (None, before)
        assert app.call(f"jobs/{a}", "ping") == "pong"
    else:
        assert ids_states(app, "jobs") == [(b, "running")]
        assert events.named("restarted", f"jobs/{a}") == []
    assert app.count_children("jobs")["specs"] == 1
    assert pid_in(app, "", "jobs") == jobs  # the supervisor itself never went down
    assert app.wait(timeout=0) is None


def test_simple_one_for_one_escalates_to_its_parent(start_tree, events):
    """OTP's simple_one_for_one_escalation: past its intensity the supervisor gives up;
    its parent restarts it, empty (its children were made at run time)."""
    app = start_tree(Supervisor("root", max_restarts=5, max_seconds=60, children=[
        Supervisor("jobs", strategy="simple_one_for_one", max_restarts=1, max_seconds=60,
                   template=child("job", Echo)),
        child("x", Echo)]))
    before = {i.id: i.pid for i in app.which_children()}
    a = app.start_child("jobs")
    app.start_child("jobs")
    os.kill(pid_in(app, "jobs", a), signal.SIGKILL)
    events.wait_count("restarted", 1, f"jobs/{a}")
    os.kill(pid_in(app, "jobs", a), signal.SIGKILL)
    events.wait_count("restarted", 1, "jobs")
    (gave_up,) = events.named("gave_up")
    assert (gave_up["supervisor"], gave_up["reason"]) == ("jobs", "reached_max_restart_intensity")
    after = {i.id: i.pid for i in app.which_children()}
    assert after["jobs"] != before["jobs"] and after["x"] == before["x"]
    assert app.which_children("jobs") == []
    assert app.start_child("jobs") == "job-1"  # a new process numbers afresh
    assert app.wait(timeout=0) is None


SLOW_SECOND_RESTART = {"connection_error": {"backoff": [30.0]}}


def test_restarting_children_count_toward_max_children(start_tree, events):
    """Elixir's "restarting children counted in max_children" and OTP's
    count_restarting_children: a child waiting on its restart holds its place."""
    app = start_tree(Supervisor("root", children=[
        Supervisor("jobs", strategy="simple_one_for_one", max_children=2, max_restarts=10,
                   max_seconds=60, template=child("job", Echo, errors=SLOW_SECOND_RESTART))]))
    a, b = app.start_child("jobs"), app.start_child("jobs")
    os.kill(pid_in(app, "jobs", a), signal.SIGKILL)
    events.wait_count("restarted", 1, f"jobs/{a}")
    os.kill(pid_in(app, "jobs", a), signal.SIGKILL)
    events.wait_count("restart_scheduled", 1, f"jobs/{a}")
    assert ids_states(app, "jobs") == [(a, "restarting"), (b, "running")]
    assert app.count_children("jobs") == {"specs": 1, "active": 1, "supervisors": 0,
                                          "workers": 2}
    with pytest.raises(PoolExhausted, match=r"^max_children \(2\) reached"):
        app.start_child("jobs")
    app.terminate_child("jobs", a)  # terminating a restarting child cancels its restart
    assert ids_states(app, "jobs") == [(b, "running")]
    assert app.start_child("jobs") == "job-3"


def test_restart_and_delete_of_a_restarting_child_are_refused(start_as, events):
    """OTP: restart_child / delete_child of a restarting child is {error, restarting}."""
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("w", Echo, errors=SLOW_SECOND_RESTART), child("x", Echo)]))
    os.kill(pid_in(app, "", "w"), signal.SIGKILL)
    events.wait_count("restarted", 1, "w")
    os.kill(pid_in(app, "", "w"), signal.SIGKILL)
    events.wait_count("restart_scheduled", 1, "w")
    for operation in (app.restart_child, app.delete_child):
        with pytest.raises(WorkerError, match=r"^'w' is restarting; terminate_child it "
                                              r"first") as info:
            operation("", "w")
        assert (info.value.path, info.value.context) == ("w", {"state": "restarting"})
    assert ids_states(app, "") == [("w", "restarting"), ("x", "running")]
    app.terminate_child("", "w")
    assert ids_states(app, "") == [("w", "stopped"), ("x", "running")]
    assert app.restart_child("", "w") == pid_in(app, "", "w")
    assert len(events.named("restarted", "w")) == 1  # restart_child is no restart


def test_a_dynamic_transient_child_of_one_for_one_is_kept_stopped_as_in_otp(start_tree,
                                                                            events):
    """Only simple_one_for_one forgets its children; a child added with a spec keeps it."""
    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    app.start_child("", child("t", Echo, restart="transient"))
    app.call("t", "exit", "normal")
    events.wait_count("exited", 1, "t")
    assert ids_states(app, "") == [("a", "running"), ("t", "stopped")]
    app.delete_child("", "t")
    assert ids_states(app, "") == [("a", "running")]


# ------------------------------------------------------------------ bad requests
def test_start_child_with_what_is_not_a_spec_is_refused_and_the_tree_stays_up(start_tree):
    app = start_tree(Supervisor("root", children=[
        child("a", Echo),
        Supervisor("jobs", strategy="simple_one_for_one", template=child("e", Echo))]))
    root = app.pid
    bad = [
        (("", {}), {}, "spec", r"expected a child\(\.\.\.\), program\(\.\.\.\), "
                               r"Supervisor\(\.\.\.\) or Pool\(\.\.\.\) spec, got dict"),
        (("", 42), {}, "spec", r"got int 42"),
        (("", lambda: None), {}, "spec", r"cannot send the spec"),
        (("jobs", child("x", Echo)), {}, "spec", r"makes its children from its template"),
        (("", child("b", Echo)), {"args": [1]}, "args", r"only a simple_one_for_one"),
    ]
    for args, kwargs, field, pattern in bad:
        with pytest.raises(ConfigError, match=pattern) as info:
            app.start_child(*args, **kwargs)
        assert info.value.field == field
    for kwargs, pattern in (({"args": 5}, r"got `int` - at `\$\.args`"),
                            ({"args": "ab"}, r"got `str` - at `\$\.args`"),
                            ({"kwargs": [1]}, r"got `array` - at `\$\.kwargs`")):
        with pytest.raises(EncodeError, match=r"^invalid argument: .*" + pattern):
            app.start_child("jobs", **kwargs)
    assert app.pid == root and app.wait(timeout=0) is None
    assert [i.id for i in app.which_children()] == ["a", "jobs"]
    assert app.call("a", "ping") == "pong"


def test_start_child_of_a_significant_child_into_a_never_supervisor_is_refused(start_tree):
    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    with pytest.raises(ConfigError, match=r"^significant: a significant child needs "
                                          r"auto_shutdown=") as info:
        app.start_child("", child("s", Echo, restart="transient", significant=True))
    assert info.value.field == "significant"
    assert [i.id for i in app.which_children()] == ["a"]


def test_a_dynamic_significant_child_shuts_its_supervisor_down(start_tree):
    app = start_tree(Supervisor("root", auto_shutdown="any_significant",
                                children=[child("a", Echo)]))
    app.start_child("", child("s", Echo, restart="transient", significant=True))
    app.call("s", "exit", "normal")
    assert app.wait(timeout=10) == "auto_shutdown"
