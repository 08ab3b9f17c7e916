"""Children on a Ray cluster under the same supervision tree (backend="ray").

One local Ray instance for the module (see conftest). Each test proves its own claim about
the bridge: the actor's death is noticed and classified, our strategy (not Ray's) restarts
it, and stopping the tree leaves no actor alive.
"""

from __future__ import annotations

import os
import select
import signal
import threading

import pytest

from supervisor import (
    CallTimeout,
    CircuitOpen,
    CommandError,
    EncodeError,
    Pool,
    StartError,
    Supervisor,
    WorkerCrashed,
    child,
)

from ._workers import Counter, FailingInit, FailsWhenMarked, Slow
from .conftest import NO_RAY, NO_RAY_REASON

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120),
              pytest.mark.skipif(NO_RAY, reason=NO_RAY_REASON)]

NAMESPACE = "otp-supervisor"


def actor_of(app, path: str) -> str:
    """The actor's name: the child path and its bridge's pid."""
    parent, _, cid = path.rpartition("/")
    pid = {i.id: i.pid for i in app.which_children(parent)}[cid]
    assert pid is not None, f"{path} is not running"
    return f"{path}@{pid}"


def pids(app, parent: str = "") -> dict[str, int | None]:
    return {i.id: i.pid for i in app.which_children(parent)}


def tree(cluster, *children, **options) -> Supervisor:
    return Supervisor("root", children=children, ray_address=cluster.address, **options)


def test_a_tree_mixes_local_and_ray_children(ray_cluster, start_tree):
    app = start_tree(tree(ray_cluster, child("local", Counter, kwargs={"start": 1}),
                          child("remote", Counter, backend="ray", kwargs={"start": 10})))
    assert app.call("local", "incr") == 2
    assert app.call("remote", "incr", 5) == 15
    assert app.worker("remote").incr() == 16
    bridge = pids(app)["remote"]
    actor_pid = app.call("remote", "pid")
    assert actor_pid != bridge  # the worker runs in the actor, not in the bridge
    assert ray_cluster.ctl("ready", name=actor_of(app, "remote"))[2] == actor_pid
    assert {i.id: i.state for i in app.which_children()} == {
        "local": "running", "remote": "running"}


def test_pipelined_calls_from_many_threads_are_matched_by_id(ray_cluster, start_tree):
    app = start_tree(tree(ray_cluster, child("remote", Counter, backend="ray")))
    results: dict[int, list] = {}
    errors = []

    def caller(n: int) -> None:
        try:
            results[n] = [app.call("remote", "incr", 0) + n * 1000 + i for i in range(50)]
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []
    assert results == {n: [n * 1000 + i for i in range(50)] for n in range(4)}


@pytest.mark.parametrize("strategy, restarted", [
    ("one_for_all", {"a", "remote", "b"}),
    ("rest_for_one", {"remote", "b"}),
])
def test_ray_kill_restarts_by_our_strategy(ray_cluster, start_tree, events, strategy,
                                           restarted):
    app = start_tree(tree(ray_cluster, child("a", Counter),
                          child("remote", Counter, backend="ray"), child("b", Counter),
                          strategy=strategy))
    before = pids(app)
    name = actor_of(app, "remote")
    ray_cluster.ctl("kill", name=name)
    exited = events.wait_count("exited", 1, "remote", timeout=30)
    assert exited[0]["category"] == "connection_error"
    assert "killed by `ray.kill`" in exited[0]["detail"]
    for path in restarted:
        events.wait_count("restarted", 1, path, timeout=60)
    after = pids(app)
    assert {cid for cid in before if after[cid] != before[cid]} == restarted
    assert app.call("remote", "incr") == 1  # a fresh actor: its state began again
    assert ray_cluster.ctl("wait_dead", name=name)


def test_sigkill_of_the_actor_process_is_a_connection_error_and_restarts_it(
        ray_cluster, start_tree, events):
    app = start_tree(tree(ray_cluster, child("remote", Counter, backend="ray")))
    actor_pid = app.call("remote", "pid")
    os.kill(actor_pid, signal.SIGKILL)  # the node is this machine
    exited = events.wait_count("exited", 1, "remote", timeout=30)
    assert exited[0]["category"] == "connection_error"
    assert exited[0]["detail"].startswith("ActorDiedError: ")
    events.wait_count("restarted", 1, "remote", timeout=60)
    assert app.call("remote", "restarts_seen") == 1
    assert app.call("remote", "pid") != actor_pid


def test_an_actor_whose_init_raises_fails_the_start(ray_cluster, start_tree):
    with pytest.raises(StartError) as info:
        start_tree(tree(ray_cluster, child("local", Counter),
                        Supervisor("models", children=[
                            child("bad", FailingInit, backend="ray")])))
    message = str(info.value)
    assert message.startswith("child 'models/bad' failed to start (initialization_error): "
                              "RuntimeError: no model file at /models/x")
    assert 'raise RuntimeError("no model file at /models/x")' in message  # remote traceback
    assert ray_cluster.ctl("names") == []  # nothing left on the cluster


def test_an_unschedulable_actor_fails_the_start_as_a_resource_error(ray_cluster, start_tree):
    with pytest.raises(StartError, match=r"^child 'big' failed to start \(resource_error\): "
                                         r"ActorNotReady: the actor was not ready within 2 s"):
        start_tree(tree(ray_cluster, child(
            "big", Counter, backend="ray",
            ray_options={"num_cpus": 64, "start_timeout": 2.0})))
    assert ray_cluster.ctl("names") == []


def test_intensity_counts_restarts_of_both_kinds_and_escalates(ray_cluster, start_tree,
                                                                events):
    app = start_tree(tree(ray_cluster, child("local", Counter),
                          child("remote", Counter, backend="ray"),
                          max_restarts=1, max_seconds=60))
    ray_cluster.ctl("kill", name=actor_of(app, "remote"))
    events.wait_count("restarted", 1, "remote", timeout=60)
    names = ray_cluster.ctl("names")
    os.kill(pids(app)["local"], signal.SIGKILL)  # the second restart in the window
    assert app.wait(timeout=60) == "reached_max_restart_intensity"
    for name in names:
        assert ray_cluster.ctl("wait_dead", name=name)


@pytest.fixture(params=["local", "ray"])
def backend_app(request, ray_cluster, start_tree):
    """The same tree with its worker on either backend: calls behave the same. (The
    cluster is requested for both so it is up before any test's process check starts.)"""
    options = {}
    address = None
    if request.param == "ray":
        options = {"backend": "ray"}
        address = ray_cluster.address
    return start_tree(Supervisor("root", ray_address=address, children=[
        child("w", Slow, kwargs={"start": 10}, call_timeout=60.0, **options)]))


def test_command_error_carries_the_remote_traceback(backend_app):
    with pytest.raises(CommandError) as info:
        backend_app.call("w", "boom", "bad input")
    err = info.value
    assert str(err).startswith("ValueError: bad input")
    assert err.remote_type == "ValueError"
    assert "raise ValueError(message)" in err.remote_traceback
    assert (err.category, err.path) == ("python_error", "w")
    assert backend_app.call("w", "incr") == 11  # and it keeps serving


def test_unknown_command_and_encoding_errors(backend_app):
    with pytest.raises(CommandError, match=r"^UnknownCommand: Slow has no command 'nope'"):
        backend_app.call("w", "nope")
    with pytest.raises(EncodeError, match="object"):
        backend_app.call("w", "incr", object())
    with pytest.raises(EncodeError, match=r"cannot encode the result of 'unencodable'"):
        backend_app.call("w", "unencodable")
    assert backend_app.call("w", "incr") == 11


def test_a_timed_out_call_raises_and_the_worker_is_replaced(backend_app, events):
    with pytest.raises(CallTimeout) as info:
        backend_app.call("w", "sleep", 30, timeout=0.5)
    assert info.value.category == "timeout_error"
    events.wait_count("restarted", 1, "w", timeout=60)
    assert backend_app.call("w", "incr") == 11


def _kill_mid_call(app, fifo: str, call, join_timeout: float) -> None:
    """Run `call` in a thread; once the worker has opened `fifo` (the call reached it),
    SIGKILL the worker's process; wait for the thread."""
    worker_pid = app.call("w", "pid")  # the actor's process, for Ray
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    t = threading.Thread(target=call)
    t.start()
    try:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, "the call never reached the worker"
    finally:
        os.close(fd)
    os.kill(worker_pid, signal.SIGKILL)
    t.join(join_timeout)


def test_a_call_in_flight_when_the_worker_dies_raises_worker_crashed(
        backend_app, events, tmp_path):
    fifo = str(tmp_path / "arrived")
    outcome = {}

    def slow_call() -> None:
        try:
            backend_app.call("w", "busy", fifo, 30)
        except WorkerCrashed as exc:
            outcome["error"] = exc

    _kill_mid_call(backend_app, fifo, slow_call, 30)
    assert isinstance(outcome.get("error"), WorkerCrashed)
    assert outcome["error"].category == "connection_error"
    events.wait_count("restarted", 1, "w", timeout=60)
    assert backend_app.call("w", "incr") == 11


def test_an_idempotent_call_in_flight_is_re_sent_to_the_replacement(backend_app, events,
                                                                     tmp_path):
    fifo, marker = str(tmp_path / "arrived"), str(tmp_path / "marker")
    outcome = {}

    def call() -> None:
        outcome["value"] = backend_app.call("w", "slow_once", fifo, marker, timeout=60)

    _kill_mid_call(backend_app, fifo, call, 60)
    assert outcome.get("value") == "again"  # re-sent, answered by the replacement
    events.wait_count("restarted", 1, "w", timeout=60)


def test_stopping_the_tree_leaves_no_actor_alive(ray_cluster, start_tree):
    app = start_tree(tree(ray_cluster, child("r1", Counter, backend="ray"),
                          Supervisor("sub", children=[child("r2", Counter, backend="ray")])))
    names = [actor_of(app, "r1"), actor_of(app, "sub/r2")]
    assert set(names) <= set(ray_cluster.ctl("names"))
    app.stop(timeout=30)
    for name in names:
        assert ray_cluster.ctl("wait_dead", name=name)
    assert not set(names) & set(ray_cluster.ctl("names"))


def test_a_pool_of_ray_workers_serves_pipelined_calls_and_reports_nodes(ray_cluster,
                                                                        start_tree):
    app = start_tree(tree(ray_cluster, Pool("models", Counter, size=2, backend="ray",
                                            ray_options={"num_cpus": 0.5})))
    pool = app.pool("models")
    futures = [pool.submit("incr", 1) for _ in range(40)]
    assert sorted(f.result(timeout=60) for f in futures)[-1] <= 40
    assert sum(pool.map("incr", [0, 0])) >= 2
    status = app.status()
    workers = status["children"][0]["children"]
    assert [(w["path"], w["node"]["ip"]) for w in workers] == [
        ("models/models-0", "127.0.0.1"), ("models/models-1", "127.0.0.1")]


def test_a_ray_worker_that_stops_itself_exits_with_its_reason(ray_cluster, start_tree,
                                                              events):
    app = start_tree(tree(ray_cluster, child("remote", Slow, backend="ray",
                                             restart="transient"),
                          child("local", Counter)))
    name = actor_of(app, "remote")
    app.call("remote", "quit", "normal")
    exited = events.wait_count("exited", 1, "remote", timeout=30)
    assert (exited[0]["reason"], exited[0]["category"]) == ("normal", None)
    assert {i.id: i.state for i in app.which_children()}["remote"] == "stopped"
    assert ray_cluster.ctl("wait_dead", name=name)


def test_an_unreachable_cluster_fails_the_start_within_the_start_timeout(start_tree):
    # Nothing listens on port 1: ray.init alone would keep retrying for minutes.
    with pytest.raises(StartError, match=r"^child 'remote' failed to start "
                                         r"\(connection_error\): RayJoinTimeout: could not "
                                         r"join the Ray cluster at 127\.0\.0\.1:1 within 3 s"):
        start_tree(Supervisor("root", ray_address="127.0.0.1:1", children=[
            child("remote", Counter, backend="ray", ray_options={"start_timeout": 3})]))


def test_a_bridge_killed_outright_takes_its_actor_with_it(ray_cluster, start_tree, events):
    app = start_tree(tree(ray_cluster, child("remote", Counter, backend="ray")))
    name = actor_of(app, "remote")
    os.kill(pids(app)["remote"], signal.SIGKILL)  # no chance to ray.kill: Ray ends it
    assert ray_cluster.ctl("wait_dead", name=name, timeout=20)
    exited = events.wait_count("exited", 1, "remote", timeout=30)
    assert (exited[0]["reason"], exited[0]["category"]) == ("killed", "connection_error")
    events.wait_count("restarted", 1, "remote", timeout=60)
    assert app.call("remote", "incr") == 1


def test_a_ray_child_whose_restarts_fail_opens_its_circuit_then_closes_it(
        ray_cluster, start_tree, events, tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(tree(ray_cluster, child(
        "f", FailsWhenMarked, backend="ray", kwargs={"marker": str(marker)},
        stable_after=0.5, circuit_timeout=1.0,
        errors={"initialization_error": {"max_retries": 1, "backoff": "none"}}),
        child("local", Counter), max_restarts=10, max_seconds=60))
    local = pids(app)["local"]
    marker.touch()
    ray_cluster.ctl("kill", name=actor_of(app, "f"))
    events.wait_count("circuit_opened", 1, "f", timeout=60)
    with pytest.raises(CircuitOpen, match=r"circuit of 'f' is open"):
        app.call("f", "incr", retry=False)
    assert pids(app)["local"] == local  # siblings untouched
    marker.unlink()
    events.wait_count("circuit_closed", 1, "f", timeout=60)
    assert app.call("f", "incr") == 1
