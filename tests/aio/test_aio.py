"""The asyncio client on its own loop: the App's methods, cancellation and timeouts,
backpressure, a pool under 10,000 concurrent calls, connect, and nothing left behind.

Every test runs its coroutine with `run` (asyncio.run, and again under uvloop when it is
installed); `async with supervisor.aio.start(...)` stops the tree even when the test
fails inside the block.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time

import pytest

import supervisor.aio
from supervisor import (
    CallTimeout,
    CommandError,
    NoSuchChild,
    Pool,
    PoolExhausted,
    SessionLost,
    Supervisor,
    WorkerCrashed,
    child,
)
from supervisor.aio.channel import _HIGH_WATER
from workers.echo import Echo

from .._procs import wait_gone
from .._service import running
from ..pool._workers import Py
from ..runtime._workers import Calc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

try:
    import uvloop
except ImportError:  # optional: the tests run on asyncio's own loop without it
    uvloop = None

LOOPS = ["asyncio"] + (["uvloop"] if uvloop is not None else [])


@pytest.fixture(params=LOOPS)
def run(request):
    """run(coro) on a fresh event loop of the kind under test."""

    def _run(coro):
        if request.param == "uvloop":
            with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                return runner.run(coro)
        return asyncio.run(coro)

    # A loop's first thread hop may leave a pipe of the loop library's own for the rest
    # of the process (uvloop does): made here, before a test counts descriptors.
    _run(_hop())
    return _run


async def _hop():
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    await asyncio.to_thread(loop.call_soon_threadsafe, done.set_result, None)
    await done


TREE = Supervisor("root", children=[
    child("calc", Calc, kwargs={"base": 10}),
    child("echo", Echo),
    Supervisor("jobs", strategy="simple_one_for_one",
               template=child("job", Echo, restart="transient")),
])


def open_fds() -> set[int]:
    return set(map(int, os.listdir("/proc/self/fd")))


# ------------------------------------------------------------------ the App
def test_calls_requests_and_proxies(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            assert await app.call("calc", "add", 1, b=5) == 16
            assert await app.worker("calc").add(2) == 12
            assert await app.worker("echo").options(timeout=5).echo("x") == "x"
            with pytest.raises(CommandError, match=r"^ValueError: bad"):
                await app.call("echo", "fail", "bad")
            with pytest.raises(NoSuchChild):
                await app.call("nope", "ping")
            with pytest.raises(TypeError, match=r"^path: expected a str"):
                await app.call(3, "ping")
            await app.cast("echo", "echo", "fire and forget")
            assert await app.call("echo", "calls") == 2  # x and the cast
            assert [i.id for i in await app.which_children()] == ["calc", "echo", "jobs"]
            assert (await app.count_children())["workers"] == 2
            job = await app.start_child("jobs", args=["> "])
            assert job == "job-1"
            assert await app.call(f"jobs/{job}", "echo", "hi") == "> hi"
            await app.terminate_child("", "echo")
            with pytest.raises(WorkerCrashed):
                await app.call("echo", "ping")  # stopped: not waited for
            pid = await app.restart_child("", "echo")
            assert await app.call("echo", "pid") == pid
            status = await app.status()
            assert [c["id"] for c in status["children"]] == ["calc", "echo", "jobs"]
            assert status["children"][2]["children"][0]["path"] == "jobs/job-1"
            await app.terminate_child("", "calc")
            await app.delete_child("", "calc")
            assert [i.id for i in await app.which_children()] == ["echo", "jobs"]
            root = app.pid
        assert wait_gone([root], 10) == []

    run(main())


def test_a_killed_worker_is_replaced_and_calls_reach_the_new_process(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            pid = await app.call("echo", "pid")
            task = asyncio.create_task(app.call("echo", "sleep", 30))
            await asyncio.sleep(0)  # let it be sent
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WorkerCrashed, match=r"died while the call was in flight"):
                await asyncio.wait_for(task, 10)
            # retry=True: a call that cannot reach the worker waits for its replacement.
            assert await app.call("echo", "pid", timeout=10) != pid

    run(main())


def test_start_error_leaves_nothing_behind(run):
    bad = Supervisor("root", children=[child("w", Echo, kwargs={"fail_init": True})])

    async def main():
        with pytest.raises(supervisor.StartError, match=r"'w'"):
            await supervisor.aio.start(bad)

    before = open_fds()
    run(main())
    assert open_fds() <= before


def test_an_app_belongs_to_its_loop(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            other = asyncio.new_event_loop()
            try:
                with pytest.raises(RuntimeError, match="another event loop"):
                    other.run_until_complete(app.call("echo", "ping"))
            finally:
                other.close()

    # The other loop runs in this thread while ours is running: do it from a thread.
    async def from_thread():
        async with supervisor.aio.start(TREE) as app:
            def elsewhere():
                return asyncio.run(app.call("echo", "ping"))

            with pytest.raises(RuntimeError, match="another event loop"):
                await asyncio.to_thread(elsewhere)

    run(from_thread())


# ------------------------------------------------------------------ cancellation
def test_cancelling_a_call_not_sent_yet_takes_it_back(run):
    async def main():
        # One call in flight per channel: the second waits for room, never sent.
        async with supervisor.aio.start(TREE, calls_in_flight=1) as app:
            await app.call("echo", "ping")
            first = asyncio.create_task(app.call("echo", "sleep", 0.5))
            second = asyncio.create_task(app.call("echo", "echo", "never"))
            await asyncio.sleep(0.1)
            assert not second.done()
            second.cancel()
            with pytest.raises(asyncio.CancelledError):
                await second
            assert await first == 0.5
            assert await app.call("echo", "calls") == 0  # "never" never reached it

    run(main())


def test_cancelling_a_call_in_flight_drops_its_reply_and_keeps_the_worker(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            pid = await app.call("echo", "pid")
            task = asyncio.create_task(app.call("echo", "sleep", 0.3))
            await asyncio.sleep(0.05)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            # The next call gets its own reply, not the late one; same process.
            assert await app.call("echo", "echo", "mine") == "mine"
            assert await app.call("echo", "pid") == pid
            chan = app._router.channels["echo"]
            assert not chan.replies and not chan.abandoned  # the late reply came, dropped

    run(main())


def test_asyncio_timeout_cancels_without_restarting_the_worker(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            pid = await app.call("echo", "pid")
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.1):
                    await app.call("echo", "sleep", 0.5)
            assert await app.call("echo", "echo", 1) == 1
            assert await app.call("echo", "pid") == pid

    run(main())


def test_the_calls_own_timeout_is_call_timeout_and_restarts_the_worker(run):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            pid = await app.call("echo", "pid")
            with pytest.raises(CallTimeout) as info:
                await app.call("echo", "sleep", 5, timeout=0.2)
            assert info.value.category == "timeout_error"
            assert await app.call("echo", "pid", timeout=10) != pid  # replaced

    run(main())


def test_a_nearer_deadline_behind_a_farther_one_fires_first(run):
    tree = Supervisor("root", children=[child("calc", Calc, on_timeout="ignore")])

    async def main():
        async with supervisor.aio.start(tree) as app:
            await app.call("calc", "get")
            first = asyncio.create_task(app.call("calc", "slow", 1.0, timeout=30))
            await asyncio.sleep(0)
            with pytest.raises(CallTimeout):
                await app.call("calc", "slow", 0, timeout=0.2)  # queued behind `first`
            assert not first.done()  # its own deadline is far: it is still waited for
            assert await first == 1.0
            assert await app.call("calc", "add", 1) == 1  # the late reply was dropped

    run(main())


# ------------------------------------------------------------------ backpressure
def test_calls_in_flight_per_channel_are_bounded(run):
    async def main():
        async with supervisor.aio.start(TREE, calls_in_flight=4) as app:
            await app.call("echo", "ping")
            chan = app._router.channels["echo"]
            seen = []
            write = chan._write

            def counting_write(cid, frame):  # every frame, as it is handed to the channel
                write(cid, frame)
                seen.append(len(chan.replies) + len(chan.abandoned))

            chan._write = counting_write
            results = await asyncio.gather(*(app.call("echo", "echo", i)
                                             for i in range(200)))
            assert results == list(range(200))
            assert len(seen) == 200 and max(seen) == 4

    run(main())


def test_casts_wait_while_the_outbox_is_over_its_mark(run, tmp_path):
    async def main():
        async with supervisor.aio.start(TREE) as app:
            await app.call("echo", "ping")
            chan = app._router.channels["echo"]
            busy = asyncio.create_task(app.call("echo", "sleep", 1.0))
            blob = b"x" * 65536
            sent = 0
            # The worker sleeps: the socket buffer fills, then the outbox; a cast waits
            # once the outbox is over its mark, so memory stays bounded.
            while True:
                cast = asyncio.create_task(app.cast("echo", "echo", blob))
                await asyncio.sleep(0)
                if not cast.done():
                    break
                sent += 1
                assert sent < 1000, "casts never waited"
            assert chan.outbox_bytes <= _HIGH_WATER + 2 * len(blob)
            await asyncio.wait_for(cast, 20)  # drains once the worker reads again
            await busy
            assert await app.call("echo", "calls") == sent + 1

    run(main())


# ------------------------------------------------------------------ pools
POOL_TREE = Supervisor("root", children=[Pool("p", Py, size=2)])


def test_ten_thousand_concurrent_calls_to_a_pool(run):
    async def main():
        async with supervisor.aio.start(POOL_TREE) as app:
            pool = app.pool("p")
            results = await asyncio.gather(*(pool.call("square", i) for i in range(10_000)))
            assert results == [i * i for i in range(10_000)]
            futures = [pool.submit("add", i, 1) for i in range(1000)]
            assert await asyncio.gather(*futures) == list(range(1, 1001))
            assert [x async for x in pool.map("square", range(500), chunksize=16)] == [
                i * i for i in range(500)]

    run(main())


def test_pool_errors_sessions_and_session_lost(run):
    async def main():
        async with supervisor.aio.start(POOL_TREE) as app:
            pool = app.pool("p")
            with pytest.raises(CommandError):
                await pool.call("add", "a", 1)
            first = await pool.call("add_to_session", "k", 1, session="s")
            second = await pool.call("add_to_session", "k", 2, session="s")
            assert second == {"pid": first["pid"], "state": {"k": [1, 2]}}
            pid = first["pid"]
            os.kill(pid, signal.SIGKILL)
            assert wait_gone([pid], 10) == []
            with pytest.raises(SessionLost):
                await pool.call("add_to_session", "k", 1, session="s")
            assert await pool.end_session("s") is False
            assert (await pool.call("add_to_session", "k", 5, session="s"))["state"] == {
                "k": [5]}
            items = pool.map("die_if", [0, 0, 7])
            assert await items.__anext__() == 0
            assert await items.__anext__() == 0
            with pytest.raises(WorkerCrashed):
                await items.__anext__()

    run(main())


def test_pool_exhausted_and_cancelling_a_queued_submit(run, tmp_path):
    async def main():
        tree = Supervisor("root", children=[Pool("p", Py, size=1, checkout_timeout=0.2)])
        async with supervisor.aio.start(tree) as app:
            pool = app.pool("p")
            busy = asyncio.create_task(pool.call("sleep", 1.0, session="a"))
            await asyncio.sleep(0.1)
            with pytest.raises(PoolExhausted):
                await pool.call("pid", session="b")
            queued = pool.submit("square", 3)
            queued.cancel()
            await busy
            assert await pool.submit("square", 4) == 16
            assert queued.cancelled()

    run(main())


# ------------------------------------------------------------------ connect
def test_connect_calls_a_service_and_leaves_it_running(run, tmp_path):
    tree = """
    [tree]
    id = "svc"
    [[tree.children]]
    id = "calc"
    worker = "tests.runtime._workers:Calc"
    kwargs = { base = 40 }
    """
    with running(tmp_path) as start:
        svc = start(tree)
        svc.wait_line("is up")

        async def main():
            async with supervisor.aio.connect(svc.socket) as app:
                assert await app.call("calc", "add", 2) == 42
                assert [i.id for i in await app.which_children()] == ["calc"]
            assert await app.wait(0) == "disconnected"
            async with supervisor.aio.connect(svc.socket) as again:
                await again.stop(timeout=20)
                assert await again.wait(0) == "normal"

        run(main())
        assert svc.finish() == 0


# ------------------------------------------------------------------ nothing left behind
def test_no_task_thread_hop_or_fd_left_after_the_app_closes(run):
    before = open_fds()

    async def main():
        async with supervisor.aio.start(POOL_TREE) as app:
            await asyncio.gather(*(app.call("p/p-0", "square", i) for i in range(100)))
            await app.pool("p").call("square", 2)
            t = asyncio.create_task(app.call("p/p-1", "sleep", 0.2))
            await asyncio.sleep(0.05)
            t.cancel()
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(WorkerCrashed):
            await app.call("p/p-0", "square", 1)  # the tree is gone: fails, opens nothing

    run(main())
    assert open_fds() <= before


def test_recycling_with_max_calls_loses_no_concurrent_call(run):
    tree = Supervisor("root", max_restarts=100, children=[child("w", Echo, max_calls=50)])

    async def main():
        async with supervisor.aio.start(tree) as app:
            for _ in range(3):
                results = await asyncio.gather(*(app.call("w", "echo", i)
                                                 for i in range(300)))
                assert results == list(range(300))

    run(main())


def test_session_calls_wait_on_the_loop_not_in_threads(run):
    tree = Supervisor("root", children=[Pool("p", Py, size=2, checkout_timeout=30)])

    async def main():
        async with supervisor.aio.start(tree) as app:
            pool = app.pool("p")
            # Both workers' links open (opening one asks the tree: the one wait that
            # is not on the loop).
            await asyncio.gather(*(pool.submit("sleep", 0.05) for _ in range(4)))

            async def session(k):
                out = None
                for i in range(10):
                    out = await pool.call("add_to_session", "n", i, session=f"s{k}",
                                          timeout=30)
                return out["state"]["n"]

            states = await asyncio.gather(*(session(k) for k in range(20)))
            assert states == [list(range(10))] * 20
            # Checked out and awaited on the loop: no executor thread was started.
            assert not [t for t in threading.enumerate() if t.name.startswith("asyncio_")]

    run(main())


def test_cancelling_checked_out_calls_frees_their_workers(run):
    tree = Supervisor("root", children=[Pool("p", Py, size=1, checkout_timeout=10)])

    async def main():
        async with supervisor.aio.start(tree) as app:
            pool = app.pool("p")
            pid = await pool.call("pid", session="a")
            running = asyncio.create_task(pool.call("sleep", 0.3, session="a"))
            queued = asyncio.create_task(pool.call("pid", session="b"))  # waits its turn
            await asyncio.sleep(0.1)
            queued.cancel()
            running.cancel()
            for task in (queued, running):
                with pytest.raises(asyncio.CancelledError):
                    await task
            # Both gave their places back: the one worker serves the next caller at once,
            # and the reply of the cancelled sleep is dropped, not taken for this one.
            assert await pool.call("echo", "mine", session="b") == "mine"
            assert await pool.call("pid", session="a") == pid

    run(main())


def test_a_start_cancelled_midway_leaves_no_process(run):
    tree = Supervisor("root", children=[child("w", Calc), child("x", Echo)])

    async def main():
        started = time.monotonic()
        async with supervisor.aio.start(tree):
            pass
        boot = time.monotonic() - started
        # Cancelled before the root exists, while it boots, around its Ready: each start
        # either completes (and is stopped) or is cancelled and leaves nothing.
        for fraction in (0.0, 0.2, 0.5, 0.8, 0.95, 1.1):
            try:
                async with asyncio.timeout(boot * fraction):
                    app = await supervisor.aio.start(tree)
            except TimeoutError:
                continue
            await app.stop()
        assert asyncio.all_tasks() == {asyncio.current_task()}

    before = open_fds()
    run(main())  # the suite's guard fails the test if any process is left
    assert open_fds() <= before
