"""A worker's death fails only the calls in flight on it; the pool keeps serving."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures import FIRST_COMPLETED, wait

import pytest

from supervisor import CallTimeout, Pool, PoolExhausted, Supervisor, WorkerCrashed

from .._procs import wait_gone
from ._workers import Py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_killed_worker_fails_only_its_calls_and_the_pool_serves_on(start_tree, gate,
                                                                     ex, events):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    calls = [ex.submit(pool.call, "gate", *gate.args) for _ in range(2)]
    victim, survivor = gate.wait_arrived(), gate.wait_arrived()
    t0 = time.monotonic()
    os.kill(victim, signal.SIGKILL)
    done, held = wait(calls, timeout=10, return_when=FIRST_COMPLETED)
    assert time.monotonic() - t0 < 2.0  # fails fast, while the other call is held
    with pytest.raises(WorkerCrashed, match=rf"^worker 'p/p-\d' \(pid {victim}\) died "
                                            r"while the call was in flight"):
        done.pop().result()
    # The survivor is busy: this goes to the victim's slot once its replacement is up.
    assert pool.call("pid") not in (victim, survivor)
    gate.release()
    assert held.pop().result(10) == survivor
    events.wait_count("restarted", 1)
    pids = {f.result(10) for f in [pool.submit("sleep", 0.01) for _ in range(8)]}
    assert victim not in pids and survivor in pids and len(pids) == 2


def test_async_calls_in_flight_fail_unless_idempotent(start_tree, gate, events):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1)]))
    pool = app.pool("p")
    held = pool.submit("gate", *gate.args)  # written at once: the worker was idle
    victim = gate.wait_arrived()
    idem = pool.map("pid_idem", [0])  # map writes at once, behind the held call
    plain = pool.map("square", [3])
    queued = pool.submit("square", 4)  # the worker is busy: this one waits in the client
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerCrashed, match=rf"^worker 'p/p-0' \(pid {victim}\) died"):
        held.result(10)
    with pytest.raises(WorkerCrashed):
        next(plain)  # may have run: never re-sent
    replacement = next(idem)  # idempotent: re-sent to the replacement
    assert replacement != victim
    assert queued.result(10) == 16  # never left the client: served by the replacement
    assert pool.call("pid") == replacement


def test_a_call_sent_to_a_dead_worker_is_dispatched_again(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    pids = {w["id"]: pool.call("pid") for w in pool.workers()[:1]}
    victim = pids["p-0"]
    os.kill(victim, signal.SIGKILL)
    assert wait_gone([victim], 10) == []
    # p-0's channel is dead but not yet noticed: the call never left, so it goes elsewhere.
    assert pool.call("pid") != victim
    assert pool.submit("pid").result(10) != victim


def test_the_pool_survives_repeated_crashes(start_tree, events):
    # Three deaths: the pool supervisor's own intensity (3 in 5 s) is not exceeded.
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=2, errors={"connection_error": {"backoff": [0.0]}})]))
    pool = app.pool("p")
    for _ in range(3):
        with pytest.raises(WorkerCrashed):
            pool.call("die", retry=False)
    assert sorted(pool.submit("square", n).result(10) for n in range(10)) == [
        n * n for n in range(10)]
    assert {c.state for c in app.which_children("p")} == {"running"}


@pytest.mark.parametrize("max_restarts, gives_up", [(1, True), (8, False)])
def test_the_pool_supervisors_own_intensity_is_set_on_the_pool(start_tree, events,
                                                               max_restarts, gives_up):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=2, max_restarts=max_restarts, max_seconds=60,
             # minor: repeated crashes of one worker never reach "critical" (abandon)
             errors={"connection_error": {"backoff": [0.0], "severity": "minor"}})]))
    pool = app.pool("p")
    for crash in range(1, 5):
        with pytest.raises(WorkerCrashed):
            pool.call("die", retry=False)
        events.wait_count("restarted", crash)  # the worker's, or (given up) the pool's
    assert sorted(pool.submit("square", n).result(10) for n in range(6)) == [
        n * n for n in range(6)]
    restarts = [c.restarts for c in app.which_children("") if c.id == "p"][0]
    # More than max_restarts worker restarts in the window: the pool gave up and its
    # parent restarted it (a fresh pool); under the limit it carried on.
    assert (restarts >= 1) is gives_up


def test_a_timed_out_call_replaces_its_worker_and_the_pool_serves_on(start_tree, events):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    slow_pid = pool.call("pid")
    t0 = time.monotonic()
    with pytest.raises(CallTimeout, match=r"^call 'sleep' to 'p/p-0' got no answer within "
                                          r"0\.3s"):
        pool.call("sleep", 30, timeout=0.3)
    assert time.monotonic() - t0 < 2.0
    assert pool.call("square", 3) == 9  # the sibling serves meanwhile
    events.wait_count("restarted", 1, "p/p-0")  # its state was unknown: replaced
    assert slow_pid not in {pool.submit("pid").result(10) for _ in range(8)} | {
        pool.call("pid")}


def test_a_stopped_worker_is_skipped_until_it_runs_again(start_tree):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=1, checkout_timeout=0.3)]))
    pool = app.pool("p")
    pid = pool.call("pid")
    app.terminate_child("p", "p-0")  # stopped: not restarted until asked
    with pytest.raises(WorkerCrashed, match=r"the call did not run \(retry=False\)"):
        pool.call("pid", retry=False)
    with pytest.raises(PoolExhausted):  # with retry, it waits for a worker, in vain
        pool.call("pid")
    app.restart_child("p", "p-0")
    assert pool.call("pid") != pid
