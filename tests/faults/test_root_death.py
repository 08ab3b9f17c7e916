"""The root supervisor SIGKILLed under load: the whole tree goes with it, at once, and every
caller gets a classified error instead of hanging."""

from __future__ import annotations

import os
import signal
import threading
import time

import psutil
import pytest

from supervisor import Pool, Supervisor, WorkerCrashed, WorkerError, child

from .._procs import wait_gone
from ._workers import Target
from .conftest import walk

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CALL_TIMEOUT = 10.0  # long on purpose: a caller must learn of the death, not time out


def tree():
    return Supervisor("root", children=[
        Supervisor("front", children=[
            child("a", Target),
            Supervisor("back", children=[child("b", Target), child("c", Target)]),
        ]),
        Pool("py", Target, size=2),
        child("e", Target, heartbeat=0.2),
    ])


def test_sigkill_of_the_root_under_load_takes_every_descendant_within_a_second(start_tree):
    """Callers busy on every worker (and the pool) when the root is SIGKILLed: every
    descendant is gone within 1 s, every caller gets a classified WorkerError (the
    in-flight ones WorkerCrashed) well before its timeout, no caller hangs, and the App
    reports the root's end."""
    app = start_tree(tree())
    pool = app.pool("py")
    nodes = walk(app)
    descendants = {node["pid"] for node in nodes.values()}
    # psutil's view as well: anything the root started that which_children does not list.
    descendants |= {p.pid for p in psutil.Process(app.pid).children(recursive=True)}
    workers = [path for path, node in nodes.items()
               if node["kind"] == "worker" and not path.startswith("py/")]
    assert len(workers) == 4

    running = threading.Barrier(len(workers) + 2 + 1)
    results: dict[str, list] = {}

    def caller(name: str, call) -> None:
        outcomes = results.setdefault(name, [])
        running.wait(10)
        n = 0
        while True:
            token = f"{name}-{n}"
            try:
                value = call(token)
            except WorkerError as exc:
                outcomes.append((type(exc), exc.category))
                return
            if value != token:  # a reply to another call: recorded, asserted below
                outcomes.append(("mixed", value))
                return
            n += 1

    threads = [threading.Thread(target=caller, args=(path, lambda tok, p=path: app.call(
        p, "echo", tok, timeout=CALL_TIMEOUT))) for path in workers]
    threads += [threading.Thread(target=caller, args=(f"pool-{n}", lambda tok: pool.call(
        "echo", tok, timeout=CALL_TIMEOUT))) for n in range(2)]
    for t in threads:
        t.start()
    running.wait(10)  # every caller is calling now
    os.kill(app.pid, signal.SIGKILL)
    killed_at = time.monotonic()

    assert wait_gone(descendants | {app.pid}, 1.0) == []
    for t in threads:
        t.join(CALL_TIMEOUT)
    assert [t.name for t in threads if t.is_alive()] == []
    assert sorted(results) == sorted(workers + ["pool-0", "pool-1"])
    for name, outcomes in results.items():
        kind, category = outcomes[-1]
        assert issubclass(kind, WorkerCrashed), (name, outcomes[-1])
        assert category == "connection_error"
    # Each caller learnt of the death in far less than its timeout.
    assert time.monotonic() - killed_at < CALL_TIMEOUT / 2
    assert app.wait(timeout=5) not in (None, "normal")
    with pytest.raises(WorkerCrashed, match="^the tree is not running"):
        app.call("front/a", "ping")
    app.stop()  # a no-op once the root is gone


def test_a_caller_waiting_for_a_restart_learns_of_the_root_death(start_tree, events,
                                                                 monkeypatch):
    """A call that waits for a restarting child (it never reached a worker) is woken by
    the root's death and fails with WorkerCrashed, not after its whole timeout."""
    app = start_tree(Supervisor("root", children=[
        child("slow", Target, errors={"connection_error": {"backoff": [30.0]}},
              stable_after=60.0)]))
    # Two kills: the second restart waits 30 s on the row's table (the first is immediate).
    for n in (1, 2):
        pid = app.call("slow", "pid")
        os.kill(pid, signal.SIGKILL)
        events.wait_count("failure", n, "slow")
    assert events.named("failure", "slow")[1]["delay"] == 30.0
    outcome = {}
    parked = threading.Event()
    await_start = app._link.await_start

    def await_start_noted(*args):
        parked.set()  # the call found the child restarting and waits for its start event
        return await_start(*args)

    monkeypatch.setattr(app._link, "await_start", await_start_noted)

    def waiter() -> None:
        started = time.monotonic()
        try:
            app.call("slow", "ping", timeout=20)
        except WorkerError as exc:
            outcome["error"] = exc
        outcome["took"] = time.monotonic() - started

    t = threading.Thread(target=waiter)
    t.start()
    assert parked.wait(10)
    os.kill(app.pid, signal.SIGKILL)
    t.join(25)
    assert not t.is_alive()
    assert isinstance(outcome["error"], WorkerCrashed)
    assert outcome["took"] < 5
