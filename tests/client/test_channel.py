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


def test_the_reader_leaving_with_its_reply_hands_the_role_to_a_sleeper(pair, monkeypatch):
    # The first caller reads; the second sleeps. The first's reply comes alone and it
    # leaves: the second must be rung to read its own reply, not left to nap. The nap is
    # made longer than the test's wait, so a missed hand-over hangs the test.
    from supervisor.client import channel as channel_module

    monkeypatch.setattr(channel_module, "_WAIT_SLICE", 120.0)
    chan, worker = pair
    first, box1 = _in_thread(lambda: chan.call("echo", (1,), None, None, None))
    (call1,) = worker.read_calls(1)
    second, box2 = _in_thread(lambda: chan.call("echo", (2,), None, None, None))
    (call2,) = worker.read_calls(1)
    _until(lambda: call2.id in chan.sleepers)
    worker.send(P.Reply(id=call1.id, value=1))
    first.join(10)
    assert box1 == {"value": P.Reply(id=call1.id, value=1)}
    worker.send(P.Reply(id=call2.id, value=2))
    second.join(10)
    assert box2 == {"value": P.Reply(id=call2.id, value=2)}


def _until(predicate, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.001)


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


def test_many_threads_get_their_own_replies_whatever_the_order(pair, monkeypatch):
    # A worker that answers in shuffled batches: every reply must reach its own caller,
    # every caller must get its turn to read, and nobody may be left asleep. A sleeper's
    # nap is made longer than the test's wait, so a caller left asleep without the
    # reader's role (nobody rang it) hangs the test instead of waking a second later.
    import random

    from supervisor.client import channel as channel_module

    monkeypatch.setattr(channel_module, "_WAIT_SLICE", 120.0)
    chan, worker = pair
    threads, per_thread = 8, 150
    rng = random.Random(17)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                data = worker.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            calls = worker.reader.feed(data)
            rng.shuffle(calls)
            while calls:
                cut = rng.randint(1, len(calls))
                worker.send(*(P.Reply(id=c.id, value=c.args[0]) for c in calls[:cut]))
                calls = calls[cut:]

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    errors: list[str] = []

    def caller(k: int) -> None:
        for i in range(per_thread):
            value = (k, i)
            reply = chan.call("echo", (list(value),), None, None, None)
            if reply.value != list(value):
                errors.append(f"thread {k} call {i} got {reply.value!r}")

    workers = [threading.Thread(target=caller, args=(k,)) for k in range(threads)]
    for t in workers:
        t.start()
    for t in workers:
        t.join(30)
    stop.set()
    assert not any(t.is_alive() for t in workers), "a caller never got its reply"
    assert errors == []
    assert not chan.reading and not chan.waiting and not chan.results and not chan.sleepers
