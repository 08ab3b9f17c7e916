"""Pool dispatch: least-loaded, fair FIFO queueing, PoolExhausted timing, overflow,
recycling without losing a call."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from supervisor import NoSuchChild, Pool, PoolExhausted, Supervisor, WorkerCrashed, child

from ._workers import Ordered, Py
from .conftest import wait_queued

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_busy_worker_sends_the_next_caller_to_its_sibling(start_tree, gate, ex):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    held = ex.submit(pool.call, "gate", *gate.args)
    busy_pid = gate.wait_arrived()
    free_pid = pool.call("pid")
    assert free_pid != busy_pid
    gate.release()
    assert held.result(10) == busy_pid
    assert [w["id"] for w in pool.workers()] == ["p-0", "p-1"]


def test_workers_reports_the_pid_of_every_running_worker(start_tree):
    # Also of a worker this client has not called yet (no channel open to it).
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    expected = {info.id: info.pid for info in app.which_children("p")}
    assert {w["id"]: w["pid"] for w in pool.workers()} == expected
    assert all(isinstance(pid, int) for pid in expected.values())
    assert pool.call("pid") in expected.values()


def test_queued_callers_are_served_in_arrival_order(start_tree, gate, ex):
    app = start_tree(Supervisor("root", children=[Pool("p", Ordered, size=1)]))
    pool = app.pool("p")
    held = ex.submit(pool.call, "gate", *gate.args)
    gate.wait_arrived()
    queued = []
    for n in range(6):
        queued.append(ex.submit(pool.call, "mark", n))
        wait_queued(pool, n + 1)  # n+1 queued before the next one arrives
    gate.release()
    held.result(10)
    assert [f.result(10) for f in queued] == list(range(6))
    assert pool.call("served") == [0, 1, 2, 3, 4, 5]


def test_a_caller_queued_past_checkout_timeout_gets_pool_exhausted(start_tree, gate, ex,
                                                                   events):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=1, checkout_timeout=0.5)]))
    pool = app.pool("p")
    held = ex.submit(pool.call, "gate", *gate.args)
    gate.wait_arrived()
    t0 = time.monotonic()
    with pytest.raises(PoolExhausted) as info:
        pool.call("pid")
    waited = time.monotonic() - t0
    gate.release()
    held.result(10)
    assert 0.5 <= waited < 2.0  # not before the timeout, and not much later
    err = info.value
    assert str(err).startswith("pool 'p': no worker became free within 0.5s (size 1, ")
    assert (err.category, err.recovery) == ("resource_error", "circuit_break")
    assert events.named("error")[-1]["error"] == "PoolExhausted"
    assert pool.call("pid") > 0  # and the pool serves again once free


def test_overflow_workers_start_under_load_and_retire_when_idle(start_tree, gate, ex,
                                                                events):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=1, max_overflow=1)]))
    pool = app.pool("p")
    pool.retire_after = 0.3
    held = ex.submit(pool.call, "gate", *gate.args)
    base_pid = gate.wait_arrived()
    extra_pid = pool.call("pid")  # every worker busy: an overflow worker serves it
    assert extra_pid != base_pid
    assert events.wait_count("overflow_started", 1)[0]["id"] == "p-1"
    assert [c.id for c in app.which_children("p")] == ["p-0", "p-1"]
    gate.release()
    assert held.result(10) == base_pid
    events.wait_count("overflow_retired", 1)
    assert [c.id for c in app.which_children("p")] == ["p-0"]
    assert [w["id"] for w in pool.workers()] == ["p-0"]
    assert pool.call("pid") == base_pid


def test_no_more_overflow_than_max_overflow(start_tree, gate, ex, events):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=1, max_overflow=1, checkout_timeout=0.3)]))
    pool = app.pool("p")
    held = [ex.submit(pool.call, "gate", *gate.args) for _ in range(2)]
    pids = {gate.wait_arrived(), gate.wait_arrived()}
    with pytest.raises(PoolExhausted):
        pool.call("pid")
    gate.release(2)
    assert {f.result(10) for f in held} == pids
    assert len(events.named("overflow_started")) == 1


@pytest.mark.parametrize("how", ["call", "submit"])
def test_recycling_with_max_calls_loses_no_call(start_tree, how):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2, max_calls=5)]))
    pool = app.pool("p")
    if how == "call":
        with ThreadPoolExecutor(4) as threads:
            results = list(threads.map(lambda n: pool.call("echo", n), range(100)))
    else:
        results = [f.result(30) for f in [pool.submit("echo", n) for n in range(100)]]
    assert results == list(range(100))
    restarts = sum(c.restarts for c in app.which_children("p"))
    assert restarts >= 100 // 5 - 2  # the workers really were recycled along the way


def test_a_worker_over_its_memory_limit_is_replaced_without_failing_queued_calls(
        start_tree, gate, ex, events):
    """Over its limit the worker is SIGTERMed at once: the call it was running fails as
    with any crash (WorkerCrashed); the calls queued behind it go to its replacement."""
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1, max_memory_mb=100)]))
    pool = app.pool("p")
    victim = pool.call("pid")
    held = ex.submit(pool.call, "balloon_gate", 200, *gate.args)
    queued = [ex.submit(pool.call, "echo", n) for n in range(5)]
    with pytest.raises(WorkerCrashed):
        held.result(10)
    assert [f.result(10) for f in queued] == list(range(5))
    assert pool.call("pid") != victim
    assert events.named("memory_exceeded", "p/p-0")


def test_a_path_that_is_not_a_pool(start_tree):
    app = start_tree(Supervisor("root", children=[
        Supervisor("sub", children=[child("w", Py)]), child("w", Py)]))
    with pytest.raises(NoSuchChild, match=r"^'sub' is a supervisor, not a Pool"):
        app.pool("sub").call("pid")
    with pytest.raises(NoSuchChild):
        app.pool("w").call("pid")


def test_calls_from_many_threads_are_never_mixed(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p").options(max_in_flight=4)
    results: dict[int, list] = {}

    def caller(n: int) -> None:
        results[n] = [pool.call("echo", [n, i]) for i in range(200)]

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {n: [[n, i] for i in range(200)] for n in range(6)}
