"""`pool.submit(method, *args, timeout=S)`: the call's own limit once sent. Past it the
future fails with CallTimeout and its worker is replaced (the default on_timeout); the call
ran alone on its worker, so no other call is lost with it."""

from __future__ import annotations

import asyncio

import pytest

from supervisor import Pool, Supervisor
from supervisor.errors import CallTimeout

from ._workers import Py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def test_a_call_past_its_timeout_fails_and_its_worker_is_replaced(start_tree, events):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1)]))
    pool = app.pool("p")
    victim = pool.call("pid")
    slow = pool.submit("sleep", 30, timeout=0.5)
    queued = [pool.submit("echo", n) for n in range(20)]  # behind it: never sent with it
    with pytest.raises(CallTimeout, match=r"call 'sleep' to 'p/p-0' got no reply within 0.5s"):
        slow.result(20)
    assert [f.result(20) for f in queued] == list(range(20))  # run by the replacement
    assert pool.call("pid") != victim
    assert events.named("exited", "p/p-0")


def test_it_runs_alone_so_calls_on_other_workers_are_untouched(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    slow = pool.submit("sleep", 30, timeout=0.5)
    # Submitted while it runs: they all go to the other worker (or to the replacement).
    others = [pool.submit("pid") for _ in range(200)]
    with pytest.raises(CallTimeout):
        slow.result(20)
    pids = {f.result(20) for f in others}
    assert pids  # every one succeeded


def test_a_call_within_its_timeout_returns_and_keeps_its_worker(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1)]))
    pool = app.pool("p")
    before = pool.call("pid")
    assert pool.submit("sleep", 0.01, timeout=30).result(20) == before
    assert [pool.submit("echo", n, timeout=5).result(20) for n in range(5)] == list(range(5))
    assert pool.call("pid") == before


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan"), "1", True])
def test_a_timeout_that_is_not_a_positive_number_is_refused(start_tree, bad):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1)]))
    with pytest.raises(ValueError, match="timeout must be a positive number of seconds"):
        app.pool("p").submit("echo", 1, timeout=bad)


def test_the_asyncio_pool_takes_the_same_timeout(start_tree):
    from supervisor import aio

    async def main() -> None:
        async with await aio.start(Supervisor("root", children=[Pool("p", Py, size=1)])) \
                as app:
            pool = app.pool("p")
            with pytest.raises(CallTimeout):
                await pool.submit("sleep", 30, timeout=0.5)
            assert await pool.submit("echo", 7, timeout=5) == 7

    asyncio.run(main())
