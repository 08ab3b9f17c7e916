"""The pool's per-batch fast paths keep every future's semantics.

Under `submit` load a reader settles the plain replies of a batch, and a writer marks a
batch's futures running, under one acquisition of the futures' creation lock, without the
Condition a waiter would make. A future somebody waits on, or with a callback, a failure,
a pickled reply and a map unit take the ordinary way (outside the pool's lock), and
calls count as done for ``shutdown(wait=True)`` either way.
"""

from __future__ import annotations

import gc
import threading
from concurrent.futures import CancelledError
from concurrent.futures._base import FINISHED, PENDING, RUNNING

import pytest

from supervisor import EncodeError, Pool, Supervisor
from supervisor.pool.link import Job
from supervisor.pool.results import MapResults, PoolFuture, Tracker, settle_filed, start_all
from supervisor.wire import messages as P

from ._workers import Py


def _job(sink, owner, index=-1):
    return Job("echo", (1,), None, sink, index, owner, 128)


def test_a_job_is_kept_out_of_the_cyclic_gc_and_compared_by_identity():
    owner = Tracker(threading.Lock())
    job, twin = _job(None, owner), _job(None, owner)
    assert not gc.is_tracked(job)
    assert job != twin and job == job
    assert (job.attempt, job.started, job.sending, job.timeout) == (1, False, False, None)


def test_settle_filed_settles_only_unwatched_running_futures_and_counts_them():
    lock = threading.Lock()
    owner = Tracker(lock)
    quiet, watched, failed, pickled = (PoolFuture() for _ in range(4))
    for fut in (quiet, watched, failed, pickled):
        fut.set_running_or_notify_cancel()
    calls = []
    watched.add_done_callback(calls.append)  # makes its Condition: someone is watching
    table = MapResults(1)
    done = [(_job(quiet, owner), P.Reply(id=1, value=7), "p/p-0"),
            (_job(watched, owner), P.Reply(id=2, value=8), "p/p-0"),
            (_job(failed, owner), P.Fail(2, "python_error", "ValueError", "no"), "p/p-0"),
            (_job(pickled, owner), P.Reply(id=4, value=b"x", pickled=True), "p/p-0"),
            (_job(table, owner, index=0), P.Reply(id=5, value=9), "p/p-0")]
    owner.count = len(done)
    with lock:
        rest = settle_filed([job for job, _, _ in done], [msg for _, msg, _ in done], "p/p-0")
    assert quiet.done() and quiet.result() == 7
    assert [item[0].sink for item in rest] == [watched, failed, pickled, table]
    assert [item[1] for item in rest] == [msg for _, msg, _ in done[1:]]
    assert not calls and watched._state == RUNNING  # left for settle_all, outside the lock
    assert owner.count == len(done) - 1  # only the one settled here is counted done


def test_start_all_marks_fresh_futures_running_and_leaves_the_rest_in_order():
    owner = Tracker(threading.Lock())
    fresh, cancelled, waited = PoolFuture(), PoolFuture(), PoolFuture()
    assert cancelled.cancel()
    waited.add_done_callback(lambda f: None)
    table = MapResults(1)
    jobs = [_job(fresh, owner), _job(cancelled, owner), _job(table, owner, 0),
            _job(waited, owner)]
    assert start_all(jobs) == [jobs[1], jobs[2], jobs[3]]
    assert fresh._state == RUNNING and jobs[0].started
    assert waited._state == PENDING and not jobs[3].started
    assert start_all([jobs[0]]) is None  # already started: nothing to do


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_batch_settled_in_bulk_wakes_waiters_runs_callbacks_outside_the_lock(
        start_tree, gate):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p")
    state_lock = pool._state.lock
    held = [pool.submit("gate", *gate.args) for _ in range(2)]  # both workers busy
    gate.wait_arrived()
    gate.wait_arrived()
    # Queued (or pipelined behind the gates): they go out and come back as batches.
    futures = [pool.submit("echo", i) for i in range(300)]
    seen, again, lock_free = [], [], []

    def callback(fut):
        # Runs on the pool's reader thread: never under the pool's lock (a callback may
        # call back into the pool), so taking it here must succeed.
        got = state_lock.acquire(timeout=5)
        lock_free.append(got)
        if got:
            state_lock.release()
        seen.append(fut.result())
        again.append(pool.submit("echo", "again"))

    futures[150].add_done_callback(callback)
    waited = []
    waiter = threading.Thread(target=lambda: waited.append(futures[200].result(30)))
    waiter.start()
    bad = pool.submit("echo", object())  # fails alone, in a batch with good ones
    late = [pool.submit("echo", i) for i in range(300, 310)]
    gate.release(2)
    assert [f.result(30) for f in futures + late] == list(range(310))
    waiter.join(30)
    assert waited == [200]
    assert seen == [150] and lock_free == [True]
    assert again[0].result(30) == "again"
    with pytest.raises(EncodeError):
        bad.result(30)
    assert all(f.done() for f in held)
    pool.shutdown(wait=True)  # every call, settled in bulk or not, was counted done
    assert pool._tracker.count == 0


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_a_call_cancelled_while_queued_is_never_sent_from_a_batch(start_tree, gate):
    app = start_tree(Supervisor("root", children=[Pool("p", Py, size=2)]))
    pool = app.pool("p").options(pipeline=1)
    held = [pool.submit("gate", *gate.args) for _ in range(2)]
    gate.wait_arrived()
    gate.wait_arrived()
    queued = [pool.submit("echo", i) for i in range(6)]
    for fut in queued[1::2]:
        assert fut.cancel()
    gate.release(2)
    assert [queued[i].result(30) for i in (0, 2, 4)] == [0, 2, 4]
    for fut in queued[1::2]:
        with pytest.raises(CancelledError):
            fut.result(0)
    assert all(f.result(30) for f in held)
    pool.shutdown(wait=True)
    assert pool._tracker.count == 0
    assert queued[0]._state == FINISHED
