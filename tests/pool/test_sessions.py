"""Sessions: affinity to one worker process, SessionLost after its death (never silently
moved), the reassign opt-in, end_session."""

from __future__ import annotations

import os
import signal

import pytest

from supervisor import Pool, SessionLost, Supervisor

from .._procs import wait_gone
from ._workers import Py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def pool(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=3)]))
    return app.pool("p")


def kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)
    assert wait_gone([pid], 10) == []


def test_a_session_sticks_to_one_worker_and_keeps_its_state(pool):
    pool.call("pid")  # warm every path; sessions must not just follow the first worker
    seen = [pool.call("add_to_session", "k", n, session="s") for n in range(50)]
    assert len({r["pid"] for r in seen}) == 1
    assert seen[-1]["state"] == {"k": list(range(50))}
    other = pool.execute_in_session("t", "add_to_session", ["k", -1])
    assert other["state"] == {"k": [-1]}  # sessions do not share state
    again = pool.execute_in_session("s", "add_to_session", ("k", 50))
    assert again["pid"] == seen[0]["pid"] and again["state"]["k"][-1] == 50


def test_sessions_spread_over_busy_workers(pool, gate, ex):
    held = [ex.submit(pool.call, "gate", *gate.args, session=f"s{n}") for n in range(2)]
    pids = {gate.wait_arrived(), gate.wait_arrived()}
    third = pool.call("add_to_session", "k", 1, session="s2")["pid"]
    gate.release(2)
    assert {f.result(10) for f in held} == pids
    assert len(pids | {third}) == 3


def test_the_next_call_after_the_workers_death_raises_session_lost(pool, events):
    pid = pool.call("add_to_session", "k", 1, session="s")["pid"]
    kill(pid)
    for _ in range(2):  # and again: it stays lost until end_session
        with pytest.raises(SessionLost) as info:
            pool.call("add_to_session", "k", 2, session="s")
        err = info.value
        assert str(err).startswith(f"session 's' is lost: its worker 'p/p-0' (pid {pid}) ")
        assert (err.category, err.attempt) == ("session_error", 1)  # never retried
        assert err.context["session_id"] == "s"
    assert events.named("error")[-1]["error"] == "SessionLost"
    # Other callers are not affected, and the id can be reused once ended.
    assert pool.call("pid") != pid
    assert pool.end_session("s") is False
    fresh = pool.call("add_to_session", "k", 3, session="s")
    assert fresh["state"] == {"k": [3]} and fresh["pid"] != pid


def test_on_lost_reassign_moves_the_session_with_empty_state(pool):
    movable = pool.options(on_lost="reassign")
    first = movable.call("add_to_session", "k", 1, session="s")
    assert movable.call("add_to_session", "k", 2, session="s")["state"] == {"k": [1, 2]}
    kill(first["pid"])
    moved = movable.execute_in_session("s", "add_to_session", ["k", 3])
    assert moved["pid"] != first["pid"]
    assert moved["state"] == {"k": [3]}
    assert movable.call("add_to_session", "k", 4, session="s")["pid"] == moved["pid"]
    with pytest.raises(ValueError, match="^on_lost must be one of"):
        pool.options(on_lost="ignore")


def test_end_session_drops_the_state_and_the_affinity(pool):
    pool.call("add_to_session", "k", 1, session="s")
    pool.call("add_to_session", "k", 2, session="s")
    assert pool.end_session("s") is True
    assert pool.end_session("s") is False  # already ended
    assert pool.end_session("never-used") is False
    assert pool.call("add_to_session", "k", 3, session="s")["state"] == {"k": [3]}


def test_a_recycled_worker_loses_its_sessions(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1, max_calls=3)]))
    pool = app.pool("p")
    pid = pool.call("add_to_session", "k", 1, session="s")["pid"]
    pool.call("add_to_session", "k", 2, session="s")
    pool.call("add_to_session", "k", 3, session="s")  # its third call: it leaves after it
    with pytest.raises(SessionLost, match=rf"^session 's' is lost: its worker 'p/p-0' "
                                          rf"\(pid {pid}\) (is leaving|died)"):
        pool.call("add_to_session", "k", 4, session="s")
