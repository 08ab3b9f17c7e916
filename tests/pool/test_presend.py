"""A queued caller's frame is written for it by whoever frees the slot (a "presend").
Until that write is done, the caller must not read a dead link as "the call was lost":
a worker recycled by max_calls closes its channel on purpose, and a frame that never left
never ran (it goes to the replacement). These tests drive `PoolState` and `PoolIO` by hand
over a socketpair whose far end plays the worker, so each step happens in a fixed order.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest

from supervisor.errors import WorkerCrashed
from supervisor.pool.io import PoolIO
from supervisor.pool.link import NOT_SENT, Link
from supervisor.pool.state import Effects, PoolState, Waiter
from supervisor.wire import messages as P
from supervisor.wire.policy import CallPolicy


class _Root:
    """What PoolIO asks of the tree here: nothing is opened, nothing restarts."""

    def generation_of(self, path: str) -> int:
        return 1

    def report_timeout(self, path: str) -> None:
        raise AssertionError("no call times out here")


class _HookedCondition(threading.Condition):
    """The link's condition, calling `on_wait` the first time a caller waits on it."""

    def __init__(self, lock: threading.Lock, on_wait) -> None:
        super().__init__(lock)
        self.on_wait = on_wait

    def wait(self, timeout: float | None = None) -> bool:
        hook, self.on_wait = self.on_wait, None
        if hook is not None:
            hook()
        return super().wait(timeout)


@pytest.fixture
def pool():
    state = PoolState("p", lambda path: 1)
    io = PoolIO(state, _Root())
    slot = state.new_slot("p-0", overflow=False)
    state.add_slot(slot)
    mine, worker = socket.socketpair()
    link = Link(slot, mine, CallPolicy(pid=4242), 1, state.lock)
    slot.link = link
    yield state, io, slot, link, worker
    worker.close()
    link.close_fds()


def _queue_behind_a_busy_caller(state: PoolState, io: PoolIO, slot) -> tuple[Waiter, Effects]:
    """A first caller holds the only slot; a second one queues; the first checks in. The
    second is handed the slot with its frame to be written for it: those effects are
    returned, not carried out."""
    frame = P.CALL_CODEC.encode(P.Call(id=2, method="echo", args=(7,)))
    with state.lock:
        first = state.checkout(None, 1, "fail", 1, b"")
    assert first[0] is slot
    waiter = io.checkout_nowait(None, 1, "fail", 2, frame)
    assert type(waiter) is Waiter
    fx = Effects()
    with state.lock:
        state.checkin(slot, fx)
    assert waiter.slot is slot and waiter.sent is not None and fx.presend
    return waiter, fx


def _read_the_worker_gone(io: PoolIO, link: Link, worker: socket.socket) -> None:
    worker.close()  # the worker left: EOF on our side
    io.on_ready(link)
    assert link.closed == "the worker closed the channel"


def test_a_frame_that_never_left_comes_back_not_sent(pool):
    """The race of the max_calls recycle: the slot's link died before the frame written
    for the queued caller went out. The caller waits for that write, which fails; the
    call is NOT_SENT (dispatched again), never WorkerCrashed."""
    state, io, slot, link, worker = pool
    waiter, fx = _queue_behind_a_busy_caller(state, io, slot)
    _read_the_worker_gone(io, link, worker)
    _, entry = waiter.sent
    # The write for it happens only once the caller waits: the order the race produced.
    writer = threading.Thread(target=io.run, args=(fx,))
    link.cond = _HookedCondition(state.lock, writer.start)
    try:
        reply = io.await_reply(link, entry, 2, time.monotonic() + 30)
    finally:
        if writer.ident is not None:
            writer.join(30)
    assert reply is NOT_SENT


def test_a_frame_that_left_before_the_link_died_is_in_flight(pool):
    """The other order: the frame went out, then the worker died without answering. The
    call may have run: WorkerCrashed, as for any call in flight."""
    state, io, slot, link, worker = pool
    waiter, fx = _queue_behind_a_busy_caller(state, io, slot)
    io.run(fx)  # written for it while the worker lived
    assert worker.recv(65536)  # the worker read it ...
    _read_the_worker_gone(io, link, worker)  # ... and died
    _, entry = waiter.sent
    with pytest.raises(WorkerCrashed, match="died while the call was in flight"):
        io.await_reply(link, entry, 2, time.monotonic() + 30)


class _Owner:
    count = 0

    def done(self, n: int = 1) -> None:
        self.count -= n


def test_async_calls_not_yet_written_when_the_worker_leaves_go_back_to_the_queue(pool):
    """The same race for `submit`: calls registered on a link, their frame not yet written,
    when a reader sees the leaving worker close the channel. They never left: the failed
    write puts them back in the queue; they are never failed as in flight."""
    from concurrent.futures import Future

    from supervisor.pool.link import Job

    state, io, slot, link, worker = pool
    future: Future = Future()
    future.set_running_or_notify_cancel()
    job = Job("echo", (1,), None, future, -1, _Owner(), 128)
    job.started = True
    frame = P.CALL_CODEC.encode(P.Call(id=7, method="echo", args=(1,)))
    with state.lock:
        slot.load += 1
        assert state.sent(link, [(7, job)])
    _read_the_worker_gone(io, link, worker)
    slot.down_gen = 1  # its replacement has not started yet: nothing is sent meanwhile
    assert not future.done()  # left to its writer
    io._write(link, [(7, job)], frame)  # the socket is gone: the write fails
    assert not future.done() and list(state.pending) == [job] and slot.load == 0
