"""The worker's side of the call channels, driven in-process over a socketpair.

`Callers` is what a worker process runs; here it serves one channel in the test's thread,
so the order of frames and of the worker's decisions is the test's to choose.
"""

from __future__ import annotations

import socket

import pytest

from supervisor.runtime.callers import Callers
from supervisor.runtime.meter import CallMeter
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader


class Counter:
    session = None

    def __init__(self) -> None:
        self.count = 0

    def add(self, n: int, *, times: int = 1) -> int:
        self.count += n * times
        return self.count

    def boom(self) -> None:
        raise ValueError("boom")


class Harness:
    def __init__(self) -> None:
        self.worker = Counter()
        self.leaving: str | None = None
        self.callers = Callers(self.worker, {"add": self.worker.add, "boom": self.worker.boom},
                               False, lambda: self.leaving, CallMeter())
        self.worker.session = self.callers.no_session
        self.mine, theirs = socket.socketpair()
        self.mine.settimeout(10)
        self.callers.accept(theirs)
        self.callers._on_wake()  # registers the channel, as the serving loop would
        self.reader = FrameReader(P.CALL_CODEC)

    def caller(self):
        return self.callers._callers()[0]

    def roundtrip(self, *msgs: object) -> list[object]:
        """Send `msgs` in one write, let the worker handle that read, return its answers."""
        self.mine.sendall(P.CALL_CODEC.encode_many(msgs))
        self.callers._on_read(self.caller())
        got: list[object] = []
        while len(got) < sum(isinstance(m, P.Call) for m in msgs):
            got += self.reader.feed(self.mine.recv(65536))
        return got


@pytest.fixture
def harness():
    h = Harness()
    yield h
    h.mine.close()


def test_a_plain_call_is_answered(harness):
    assert harness.roundtrip(P.Call(id=1, method="add", args=(2,))) == [
        P.Reply(id=1, value=2)]
    assert harness.roundtrip(P.Call(id=2, method="add", args=(3,), kwargs={"times": 2})) == [
        P.Reply(id=2, value=8)]
    assert harness.callers.calls == 2
    assert harness.callers.meter.calls == 2


def test_a_plain_call_that_raises_is_a_python_error(harness):
    (fail,) = harness.roundtrip(P.Call(id=1, method="boom", args=()))
    assert (fail.id, fail.category, fail.type, fail.message) == (
        1, "python_error", "ValueError", "boom")
    assert harness.callers.meter.errors == {"python_error": 1}


def test_an_unknown_method_is_answered_with_its_name(harness):
    (fail,) = harness.roundtrip(P.Call(id=1, method="nope", args=()))
    assert fail.type == "UnknownCommand" and "'nope'" in fail.message


@pytest.mark.parametrize("msgs", [1, 2], ids=["alone", "two-in-one-read"])
def test_calls_read_while_leaving_are_not_run(harness, msgs):
    # A leaving worker still reads its channels (`close` does, until each caller closes
    # its side): whatever call it reads then is answered NotRun, never run, whether it
    # came alone in its read (the fast path) or with others.
    harness.leaving = "normal"
    calls = [P.Call(id=i, method="add", args=(1,)) for i in range(1, msgs + 1)]
    answers = harness.roundtrip(*calls)
    assert [type(a) for a in answers] == [P.NotRun] * msgs
    assert [a.id for a in answers] == [c.id for c in calls]
    assert harness.worker.count == 0 and harness.callers.calls == 0
