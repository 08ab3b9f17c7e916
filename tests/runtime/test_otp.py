"""OTP supervisor semantics, each rule against real processes and real signals."""

from __future__ import annotations

import os
import signal

import psutil
import pytest

from supervisor import ChildAbandoned, StartError, Supervisor, child
from workers.echo import Echo

from .._procs import wait_gone
from ._workers import Noted, SlowInit, Stubborn

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def pids(app, path=""):
    return {info.id: info.pid for info in app.which_children(path)}


def kill(pid):
    os.kill(pid, signal.SIGKILL)


def started_order(events, since=0):
    return [m["path"] for m in events.named("started")][since:]


# --------------------------------------------------------------------- start / stop order
def test_children_start_in_order_and_stop_in_reverse(start_as, events, tmp_path):
    notes = tmp_path / "notes"
    tree = Supervisor("root", children=[
        child(cid, Noted, kwargs={"notes": str(notes)}) for cid in ("a", "b", "c")
    ])
    app = start_as(tree)
    assert started_order(events) == ["a", "b", "c"]
    app.stop()
    assert notes.read_text().splitlines() == [
        "init a", "init b", "init c",
        "terminate c shutdown", "terminate b shutdown", "terminate a shutdown",
    ]
    assert [m["path"] for m in events.named("exited")] == ["c", "b", "a"]
    assert app.wait(timeout=5) == "normal"


def test_inits_never_overlap_although_the_next_worker_is_forked_ahead(start_tree, tmp_path):
    # Starting is pipelined (the next worker is forked while the one before runs init),
    # but each init returns before the next one begins, as in OTP.
    notes = tmp_path / "notes"
    tree = Supervisor("root", children=[
        child(cid, SlowInit, kwargs={"notes": str(notes), "seconds": 0.2}) for cid in "abc"
    ])
    start_tree(tree)
    assert notes.read_text().splitlines() == [
        "begin a", "end a", "begin b", "end b", "begin c", "end c"]


def test_start_failure_rolls_back_and_names_the_child(start_tree, tmp_path):
    notes = tmp_path / "notes"
    tree = Supervisor("root", children=[
        child("a", Noted, kwargs={"notes": str(notes)}),
        child("b", Noted, kwargs={"notes": str(notes), "fail": True}),
        child("c", Noted, kwargs={"notes": str(notes)}),
    ])
    with pytest.raises(StartError) as info:
        start_tree(tree)
    err = info.value
    assert err.path == "b"
    assert err.category == "initialization_error"
    assert str(err).startswith(
        "child 'b' failed to start (initialization_error): RuntimeError: b refuses to start")
    assert "Traceback" in err.remote_traceback
    # a was started, then stopped through its shutdown; c never started.
    assert notes.read_text().splitlines() == ["init a", "init b", "terminate a shutdown"]


def test_nested_start_failure_names_the_deep_path(start_tree):
    tree = Supervisor("root", children=[
        child("ok", Echo),
        Supervisor("sub", children=[child("bad", Echo, kwargs={"fail_init": True})]),
    ])
    with pytest.raises(StartError, match=r"^child 'sub/bad' failed to start "
                                         r"\(initialization_error\): RuntimeError: init asked"):
        start_tree(tree)


# --------------------------------------------------------------------- strategies
def test_one_for_one_restarts_only_the_failed_child(start_as, events):
    app = start_as(Supervisor("root", children=[child(c, Echo) for c in "abc"]))
    before = pids(app)
    kill(before["b"])
    events.wait_count("restarted", 1, "b")
    after = pids(app)
    assert after["a"] == before["a"] and after["c"] == before["c"]
    assert after["b"] not in (None, before["b"])
    assert app.call("b", "ping") == "pong"


def test_one_for_all_restarts_everyone_in_start_order(start_as, events):
    app = start_as(Supervisor("root", strategy="one_for_all",
                                children=[child(c, Echo) for c in "abc"]))
    before = pids(app)
    events.clear()
    kill(before["b"])
    events.wait_count("started", 3)
    after = pids(app)
    assert all(after[c] != before[c] and after[c] is not None for c in "abc")
    # Bystanders stopped in reverse order, then all started in order.
    assert [m["path"] for m in events.named("exited")] == ["b", "c", "a"]
    assert started_order(events) == ["a", "b", "c"]


def test_rest_for_one_restarts_the_failed_child_and_those_after_it(start_as, events):
    app = start_as(Supervisor("root", strategy="rest_for_one",
                                children=[child(c, Echo) for c in "abcd"]))
    before = pids(app)
    events.clear()
    kill(before["b"])
    events.wait_count("started", 3)
    after = pids(app)
    assert after["a"] == before["a"]
    assert all(after[c] != before[c] for c in "bcd")
    assert started_order(events) == ["b", "c", "d"]


# --------------------------------------------------------------------- restart types
def test_transient_child_exiting_normally_is_not_restarted(start_as, events):
    app = start_as(Supervisor("root", children=[
        child("t", Echo, restart="transient"), child("other", Echo)]))
    assert app.call("t", "exit", "normal") == "normal"
    events.wait_count("exited", 1, "t")
    info = {i.id: i for i in app.which_children()}["t"]
    assert (info.state, info.pid) == ("stopped", None)
    assert events.named("restarted", "t") == []


def test_transient_child_that_crashes_is_restarted(start_as, events):
    app = start_as(Supervisor("root", children=[child("t", Echo, restart="transient")]))
    kill(pids(app)["t"])
    events.wait_count("restarted", 1, "t")
    assert app.call("t", "ping") == "pong"


def test_transient_child_stopping_abnormally_is_restarted(start_as, events):
    # A reason that names no category is a system_error; its default row abandons, so
    # this child overrides the row to get restarts.
    app = start_as(Supervisor("root", children=[child(
        "t", Echo, restart="transient",
        errors={"system_error": {"severity": "minor", "recovery": "backoff_retry",
                                 "max_retries": 2}})]))
    app.call("t", "exit", "gave up on the world")
    exited = events.wait_count("exited", 1, "t")
    assert exited[0]["reason"] == "gave up on the world"
    events.wait_count("restarted", 1, "t")


def test_unclassified_abnormal_exit_is_abandoned_by_the_default_matrix(start_as, events):
    # The child is abandoned, not its supervisor (issue 14): the sibling keeps serving;
    # calls to the child fail fast, naming the category that abandoned it.
    app = start_as(Supervisor("root", children=[child("t", Echo, restart="transient"),
                                                child("s", Echo)]))
    app.call("t", "exit", "gave up on the world")
    (abandoned,) = events.wait_count("abandoned", 1, "t")
    assert (abandoned["category"], abandoned["action"]) == ("system_error", "abandon")
    (failure,) = events.named("failure", "t")
    assert (failure["category"], failure["recovery"], failure["action"]) == (
        "system_error", "abandon", "abandon")
    assert app.call("s", "ping") == "pong"
    with pytest.raises(ChildAbandoned) as info:
        app.call("t", "ping", timeout=5)
    assert info.value.category == "system_error"
    assert app.wait(timeout=0.5) is None
    assert events.named("gave_up") == []


def test_temporary_child_is_never_restarted_and_is_removed(start_as, events):
    app = start_as(Supervisor("root", children=[
        child("tmp", Echo, restart="temporary"), child("keep", Echo)]))
    kill(pids(app)["tmp"])
    events.wait_count("exited", 1, "tmp")
    assert [i.id for i in app.which_children()] == ["keep"]
    assert app.count_children() == {"specs": 1, "active": 1, "supervisors": 0, "workers": 1}


def test_temporary_bystander_of_one_for_all_is_not_restarted(start_as, events):
    app = start_as(Supervisor("root", strategy="one_for_all", children=[
        child("a", Echo), child("tmp", Echo, restart="temporary"), child("c", Echo)]))
    before = pids(app)
    events.clear()
    kill(before["a"])
    events.wait_count("started", 2)
    assert [i.id for i in app.which_children()] == ["a", "c"]
    assert pids(app)["c"] != before["c"]


def test_permanent_child_exiting_normally_is_restarted(start_as, events):
    app = start_as(Supervisor("root", children=[child("p", Echo)]))
    app.call("p", "exit", "normal")
    events.wait_count("restarted", 1, "p")


# --------------------------------------------------------------------- intensity
def test_exactly_max_restarts_keeps_the_supervisor_up_and_one_more_escalates(
        start_as, events):
    app = start_as(Supervisor("root", max_restarts=2, max_seconds=60,
                                children=[child("w", Echo)]))
    for n in (1, 2):
        kill(pids(app)["w"])
        events.wait_count("restarted", n, "w")
    assert app.call("w", "ping") == "pong"
    kill(pids(app)["w"])
    assert app.wait(timeout=10) == "reached_max_restart_intensity"
    assert len(events.named("gave_up")) == 1


def test_max_restarts_zero_escalates_on_the_first_failure(start_as):
    app = start_as(Supervisor("root", max_restarts=0, children=[child("w", Echo)]))
    kill(pids(app)["w"])
    assert app.wait(timeout=10) == "reached_max_restart_intensity"


@pytest.mark.parametrize("strategy, restarted", [
    ("one_for_one", {"sub"}),
    ("one_for_all", {"sub", "x"}),
])
def test_escalation_from_a_nested_supervisor_restarts_the_subtree(
        start_as, events, strategy, restarted):
    tree = Supervisor("root", strategy=strategy, max_restarts=5, max_seconds=60, children=[
        Supervisor("sub", max_restarts=0, children=[child("w", Echo)]),
        child("x", Echo),
    ])
    app = start_as(tree)
    top, inner = pids(app), pids(app, "sub")
    kill(inner["w"])
    events.wait_count("restarted", 1, "sub")
    events.wait_count("started", 2, "sub/w")
    now_top = pids(app)
    assert {c for c in ("sub", "x") if now_top[c] != top[c]} == restarted
    assert pids(app, "sub")["w"] != inner["w"]
    assert app.call("sub/w", "ping") == "pong"
    assert app.wait(timeout=0.1) is None  # the root did not give up


def test_transient_child_supervisor_that_gives_up_is_not_restarted(start_as, events):
    tree = Supervisor("root", children=[
        Supervisor("sub", restart="transient", max_restarts=0, children=[child("w", Echo)]),
        child("x", Echo),
    ])
    app = start_as(tree)
    kill(pids(app, "sub")["w"])
    events.wait_count("exited", 1, "sub")
    info = {i.id: i for i in app.which_children()}
    assert info["sub"].state == "stopped" and info["x"].state == "running"


# --------------------------------------------------------------------- shutdown specs
def test_shutdown_timeout_falls_back_to_sigkill(start_as, events):
    app = start_as(Supervisor("root", children=[child("s", Stubborn, shutdown=0.4)]))
    app.terminate_child("", "s")
    exited = events.wait_count("exited", 1, "s")
    assert exited[0]["detail"] == "killed by SIGKILL"
    assert {i.id: i.state for i in app.which_children()} == {"s": "stopped"}


def test_brutal_kill_skips_terminate(start_as, events, tmp_path):
    notes = tmp_path / "notes"
    app = start_as(Supervisor("root", children=[
        child("n", Noted, kwargs={"notes": str(notes)}, shutdown="brutal_kill")]))
    app.terminate_child("", "n")
    assert notes.read_text().splitlines() == ["init n"]


def test_terminate_child_runs_terminate_and_is_not_restarted(start_as, events, tmp_path):
    notes = tmp_path / "notes"
    app = start_as(Supervisor("root", children=[
        child("n", Noted, kwargs={"notes": str(notes)})]))
    app.terminate_child("", "n")
    assert notes.read_text().splitlines() == ["init n", "terminate n shutdown"]
    assert events.named("restarted") == []
    assert app.restart_child("", "n") > 0
    assert app.call("n", "pid") == pids(app)["n"]


# --------------------------------------------------------------------- no orphans
def test_root_sigkill_leaves_no_descendant(start_tree):
    tree = Supervisor("root", children=[
        child("a", Echo), Supervisor("sub", children=[child("b", Echo), child("c", Echo)])])
    app = start_tree(tree)
    root = psutil.Process(app.pid)
    family = root.children(recursive=True)
    assert len(family) == 4
    kill(app.pid)
    assert wait_gone([p.pid for p in family], timeout=1.0) == []
    assert app.wait(timeout=5) is not None


def test_stop_leaves_no_zombie_and_no_extra_fds(start_tree):
    me = psutil.Process()
    baseline = me.num_fds()
    app = start_tree(Supervisor("root", children=[child("a", Echo), child("b", Echo)]))
    for _ in range(3):
        app.call("a", "ping")
        app.call("b", "ping")
    family = psutil.Process(app.pid).children(recursive=True) + [psutil.Process(app.pid)]
    app.stop()
    assert all(not p.is_running() for p in family)
    assert me.children() == []
    assert me.num_fds() <= baseline + 1  # +1: loguru / pytest may lazily open one


def test_orphans_of_a_dead_worker_are_killed(start_as, events):
    from ._workers import Spawner

    app = start_as(Supervisor("root", children=[child("s", Spawner)]))
    grandchild = psutil.Process(app.call("s", "spawn"))
    kill(app.call("s", "pid"))
    events.wait_count("restarted", 1, "s")
    assert wait_gone([grandchild.pid], timeout=5.0) == []
