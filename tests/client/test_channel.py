"""The caller's channel to one worker: the lone caller's path and its hand-over.

A fake worker on the other end of a socketpair decides what arrives and when, so each
order the channel must handle is driven on purpose rather than hoped for.
"""

from __future__ import annotations

import socket
import threading

import pytest

from supervisor.client.channel import CallChannel, NotSent
from supervisor.errors import WorkerCrashed
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader
from supervisor.wire.policy import CallPolicy


class FakeWorker:
    """The worker's end: reads Calls, answers when and how the test says."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(P.CALL_CODEC)
        self.pending: list[P.Call] = []

    def read_calls(self, count: int) -> list[P.Call]:
        while len(self.pending) < count:
            data = self.sock.recv(65536)
            assert data, "the caller closed the channel"
            self.pending += self.reader.feed(data)
        calls, self.pending = self.pending[:count], self.pending[count:]
        return calls

    def send(self, *msgs: object) -> None:
        self.sock.sendall(P.CALL_CODEC.encode_many(msgs))


@pytest.fixture
def pair():
    mine, theirs = socket.socketpair()
    chan = CallChannel(mine, "w", CallPolicy(pid=1))
    yield chan, FakeWorker(theirs)
    chan.close()
    theirs.close()


def _in_thread(fn):
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # the test reads it
            box["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, box


def test_a_lone_caller_reads_its_own_reply(pair):
    chan, worker = pair
    thread, box = _in_thread(lambda: chan.call("echo", (7,), None, None, None))
    (call,) = worker.read_calls(1)
    assert (call.method, call.args) == ("echo", (7,))
    worker.send(P.Reply(id=call.id, value=7))
    thread.join(10)
    assert box == {"value": P.Reply(id=call.id, value=7)}
    assert not chan.reading and not chan.waiting and not chan.results


def test_replies_in_the_other_order_reach_their_own_callers(pair):
    # The first caller holds the reader's role; the second waits. The second's reply comes
    # first: the reader files it, hands the role back and waits; each gets its own.
    chan, worker = pair
    first, box1 = _in_thread(lambda: chan.call("echo", (1,), None, None, None))
    (call1,) = worker.read_calls(1)
    second, box2 = _in_thread(lambda: chan.call("echo", (2,), None, None, None))
    (call2,) = worker.read_calls(1)
    worker.send(P.Reply(id=call2.id, value=2))
    second.join(10)
    assert box2 == {"value": P.Reply(id=call2.id, value=2)}
    assert first.is_alive()  # its reply has not come yet
    worker.send(P.Reply(id=call1.id, value=1))
    first.join(10)
    assert box1 == {"value": P.Reply(id=call1.id, value=1)}
    assert not chan.reading and not chan.waiting and not chan.results


def test_two_replies_in_one_read_wake_the_other_caller(pair):
    chan, worker = pair
    first, box1 = _in_thread(lambda: chan.call("echo", (1,), None, None, None))
    (call1,) = worker.read_calls(1)
    second, box2 = _in_thread(lambda: chan.call("echo", (2,), None, None, None))
    (call2,) = worker.read_calls(1)
    worker.send(P.Reply(id=call1.id, value=1), P.Reply(id=call2.id, value=2))
    first.join(10)
    second.join(10)
    assert box1 == {"value": P.Reply(id=call1.id, value=1)}
    assert box2 == {"value": P.Reply(id=call2.id, value=2)}


def test_a_closing_notice_then_not_run_reaches_the_lone_caller(pair):
    chan, worker = pair
    thread, box = _in_thread(lambda: chan.call("echo", (1,), None, None, None))
    (call,) = worker.read_calls(1)
    worker.send(P.Closing(reason="recycled"))
    worker.send(P.NotRun(id=call.id, message="leaving"))
    thread.join(10)
    assert box == {"value": P.NotRun(id=call.id, message="leaving")}
    assert chan.draining == "recycled"
    with pytest.raises(NotSent):
        chan.call("echo", (2,), None, None, None)


def test_the_worker_dying_fails_the_lone_caller_and_the_waiting_one(pair):
    chan, worker = pair
    first, box1 = _in_thread(lambda: chan.call("echo", (1,), None, None, None))
    second, box2 = _in_thread(lambda: chan.call("echo", (2,), None, None, None))
    worker.read_calls(2)
    worker.sock.close()
    first.join(10)
    second.join(10)
    assert isinstance(box1.get("error"), WorkerCrashed)
    assert isinstance(box2.get("error"), WorkerCrashed)


def test_a_call_past_its_deadline_times_out_and_hands_the_role_back(pair):
    import time

    chan, worker = pair
    with pytest.raises(TimeoutError):
        chan.call("sleep", (1,), None, None, time.monotonic() + 0.05)
    (late,) = worker.read_calls(1)
    assert not chan.reading and not chan.waiting
    # The late reply is dropped; the next call still gets its own.
    thread, box = _in_thread(lambda: chan.call("echo", (3,), None, None, None))
    (call,) = worker.read_calls(1)
    worker.send(P.Reply(id=late.id, value="late"), P.Reply(id=call.id, value=3))
    thread.join(10)
    assert box == {"value": P.Reply(id=call.id, value=3)}
