"""`pool.map` with chunksize > 1: a chunk is one `_batch` command in the worker and one
reply. Results come back in order, an item's error surfaces at that item with the results
before it, the items after a failing one in the same chunk are not run (as in a
ProcessPoolExecutor chunk), a crash fails the whole chunk and nothing else, and every item
counts as a call (max_calls)."""

from __future__ import annotations

import collections
import os
import signal
import threading

import pytest

from supervisor import (
    CallTimeout,
    CommandError,
    EncodeError,
    Pool,
    Supervisor,
    WorkerCrashed,
    WorkerError,
)

from ._workers import Ordered, Py

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def pool(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    return app.pool("p")


def test_several_iterables_are_zipped_like_map(pool):
    xs, ys = list(range(100)), list(range(1000, 1090))  # the shortest one ends it
    assert list(pool.map("add", xs, ys, chunksize=16)) == list(map(int.__add__, xs, ys))
    assert list(pool.map(Py.add, [1], [2], chunksize=4)) == [3]


def test_an_item_error_surfaces_at_the_item_and_the_rest_of_its_chunk_does_not_run(
        start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Ordered, size=1)]))
    pool = app.pool("p")
    results = pool.map("mark", [1, 2, -3, 4, 5, 6], chunksize=2)
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(CommandError, match=r"^ValueError: negative: -3") as info:
        next(results)
    assert info.value.category == "python_error"
    assert info.value.remote_type == "ValueError"
    with pytest.raises(StopIteration):  # an iterator that raised is finished, as a generator
        next(results)
    # -3 ran and failed; 4 shared its chunk and never ran; later chunks ran all the same.
    assert pool.call("served") == [1, 2, -3, 5, 6]


def test_an_unencodable_result_fails_its_item_after_the_results_before_it(pool):
    results = pool.map("unencodable_at", range(8), [5] * 8, chunksize=8)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(EncodeError, match="cannot encode the result of 'unencodable_at'"):
        next(results)


def test_a_worker_crash_fails_its_chunk_only_and_the_pool_serves_on(start_tree):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1)]))
    pool = app.pool("p")
    pid = pool.call("pid")
    with pytest.raises(WorkerCrashed) as info:
        list(pool.map("die_if", [0, 0, 1, 0], chunksize=4))
    assert info.value.category == "connection_error"
    assert list(pool.map("echo", range(50), chunksize=8)) == list(range(50))
    assert pool.call("pid") != pid


def test_unknown_commands_and_malformed_batches_are_classified(pool):
    with pytest.raises(CommandError, match="has no command 'nope'") as info:
        list(pool.map("nope", range(3), chunksize=3))
    assert info.value.remote_type == "UnknownCommand"
    with pytest.raises(WorkerError, match=r"^ProtocolError: _batch takes") as info:
        pool.call("_batch", "echo")
    assert info.value.category == "communication_error"
    assert list(pool.map("echo", range(3), chunksize=3)) == [0, 1, 2]  # still serving


def test_every_item_of_a_chunk_counts_toward_max_calls(start_tree):
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=1, max_calls=10)]))
    pool = app.pool("p")
    pids = list(pool.map("pid_idem", range(60), chunksize=5))
    assert len(pids) == 60
    # Recycled after every 10 items (2 chunks): counted per frame it would never recycle.
    assert len(set(pids)) >= 3


def test_chunked_maps_under_repeated_worker_kills_give_whole_results_or_worker_crashed(
        start_tree, events):
    # A killer SIGKILLs a pool worker each time one has started serving; maps keep running.
    # Every map returns exactly its own items or raises WorkerCrashed: no mixed chunk, no
    # hang, and the pool serves whole afterwards.
    app = start_tree(Supervisor("root", children=[
        Pool("p", Py, size=2, max_restarts=100, max_seconds=1,
             errors={"connection_error": {"backoff": [0.0], "severity": "minor"}})]))
    pool = app.pool("p")
    kills = 8
    killed: list[int] = []
    stop = threading.Event()

    def killer() -> None:
        for n in range(kills):
            if stop.is_set():
                return
            events.wait_count("started", 3 + n, timeout=20)  # p-0, p-1, p, then replacements
            pid = app.which_children("p")[n % 2].pid
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcomes = collections.Counter()
    try:
        round_ = 0
        while thread.is_alive() or outcomes["ok"] < 3:  # the kills end; maps go on
            items = [f"r{round_}-{i}" for i in range(2000)]
            try:
                assert list(pool.map("echo", items, chunksize=64, timeout=30)) == items
                outcomes["ok"] += 1
            except WorkerCrashed as exc:
                assert exc.category == "connection_error"
                outcomes["crashed"] += 1
            round_ += 1
    finally:
        stop.set()
        thread.join(30)
    assert not thread.is_alive()
    assert outcomes["ok"] >= 3
    # The last kill may have come just now: the pool serves whole once its worker is back.
    events.wait_count("started", 3 + len(killed), timeout=20)
    assert list(pool.map("echo", range(500), chunksize=50)) == list(range(500))


def test_call_timeout_applies_per_item_not_per_chunk(start_tree):
    # Each item is well within call_timeout; a chunk of them is not. The pool must not
    # take the busy worker for a stuck one (that would fail the map and restart it).
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=1, call_timeout=0.5)]))
    pool = app.pool("p")
    pid = pool.call("pid")
    assert list(pool.map("sleep", [0.15] * 8, chunksize=8)) == [pid] * 8
    # ... while a chunk whose single item hangs past call_timeout still times out.
    with pytest.raises(CallTimeout):
        list(pool.map("sleep", [0.01, 5.0], chunksize=2))
