"""The executor facade against concurrent.futures: the same function run locally in a
ThreadPoolExecutor and remotely in the pool must give the same results, in the same
order, with the same errors surfacing at the same places (remote errors arrive as
CommandError carrying the remote type and message)."""

from __future__ import annotations

import time
from concurrent.futures import (
    CancelledError,
    Future,
    ThreadPoolExecutor,
    as_completed,
    wait,
)

import pytest

from supervisor import CommandError, EncodeError, Pool, Supervisor

from ._workers import Py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


def square(x: int) -> int:  # what Py.square does, run locally
    if x < 0:
        raise ValueError(f"negative: {x}")
    return x * x


@pytest.fixture
def pool(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    return app.pool("p")


def outcome(fut: Future):
    exc = fut.exception(10)
    if exc is None:
        return ("ok", fut.result())
    if isinstance(exc, CommandError):  # the remote error, named by its remote type
        return ("raised", exc.remote_type, exc.remote_message)
    return ("raised", type(exc).__name__, str(exc))


def test_submit_matches_a_local_executor(pool):
    xs = [3, -1, 0, 7, -5, 12]
    with ThreadPoolExecutor(2) as local:
        expected = [outcome(local.submit(square, x)) for x in xs]
    futures = [pool.submit("square", x) for x in xs]
    assert all(isinstance(f, Future) for f in futures)
    assert [outcome(f) for f in futures] == expected
    with pytest.raises(CommandError, match=r"^ValueError: negative: -1"):
        futures[1].result()
    assert futures[1].exception().category == "python_error"
    assert pool.submit(Py.square, 5).result(10) == 25  # a worker method names itself


def test_map_matches_a_local_executor_and_raises_on_iteration(pool):
    xs = list(range(-2, 40))
    with ThreadPoolExecutor(2) as local:
        assert list(pool.map("square", xs[2:])) == list(local.map(square, xs[2:]))
        mine, theirs = pool.map("square", [4, 5, -6, 7]), local.map(square, [4, 5, -6, 7])
        assert [next(mine), next(mine)] == [next(theirs), next(theirs)] == [16, 25]
        with pytest.raises(ValueError, match="negative: -6"):
            next(theirs)
        with pytest.raises(CommandError, match=r"^ValueError: negative: -6"):
            next(mine)


@pytest.mark.parametrize("chunksize", [1, 7, 256])
def test_map_keeps_the_order_with_any_chunksize(pool, chunksize):
    xs = list(range(1000))
    assert list(pool.map("echo", xs, chunksize=chunksize)) == xs
    assert list(pool.map("square", [], chunksize=chunksize)) == []
    with pytest.raises(ValueError, match=r"^chunksize must be an int >= 1"):
        pool.map("echo", xs, chunksize=0)


def test_map_timeout_is_counted_from_the_call(pool):
    results = pool.map("sleep", [0.0, 1.0], timeout=0.3)
    assert next(results) > 0
    t0 = time.monotonic()
    with pytest.raises(TimeoutError):
        next(results)
    assert time.monotonic() - t0 < 1.0


def test_futures_work_with_wait_as_completed_and_callbacks(pool):
    seen = []
    futures = [pool.submit("square", x) for x in range(20)]
    futures[0].add_done_callback(lambda f: seen.append(f.result()))
    done, not_done = wait(futures, timeout=10)
    assert not not_done
    assert sorted(f.result() for f in as_completed(futures)) == [x * x for x in range(20)]
    assert seen == [0]


def test_a_queued_call_can_be_cancelled_and_never_runs(pool, gate):
    narrow = pool.options(pipeline=1)
    held = [narrow.submit("gate", *gate.args) for _ in range(2)]  # both workers busy
    pids = {gate.wait_arrived(), gate.wait_arrived()}
    queued = narrow.submit("gate", *gate.args)
    assert queued.cancel() and queued.cancelled()
    with pytest.raises(CancelledError):
        queued.result()
    gate.release(2)
    assert {f.result(10) for f in held} == pids
    assert narrow.submit("square", 3).result(10) == 9  # no third gate call ever arrived


def test_unencodable_arguments_fail_only_their_future(pool):
    futures = [pool.submit("echo", 1), pool.submit("echo", object()), pool.submit("echo", 2)]
    with pytest.raises(EncodeError, match="object"):
        futures[1].result(10)
    assert [futures[0].result(10), futures[2].result(10)] == [1, 2]
    with pytest.raises(CommandError, match=r"^UnknownCommand: Py has no command 'nope'"):
        pool.submit("nope").result(10)


def test_shutdown_waits_for_outstanding_calls_and_the_client_stays_usable(pool):
    with pool.options() as scoped:
        futures = [scoped.submit("sleep", 0.05) for _ in range(4)]
    assert all(f.done() for f in futures)
    futures = [pool.submit("sleep", 0.05) for _ in range(4)]
    pool.shutdown(wait=True)
    assert all(f.done() for f in futures)
    assert pool.submit("square", 2).result(10) == 4


def test_futures_work_with_asyncio_wrap_future(pool):
    import asyncio

    async def main():
        results = await asyncio.gather(*[asyncio.wrap_future(pool.submit("square", n))
                                         for n in range(20)])
        with pytest.raises(CommandError, match="negative: -1"):
            await asyncio.wrap_future(pool.submit("square", -1))
        return results

    assert asyncio.run(main()) == [n * n for n in range(20)]
