"""The structural guard of a supervisor process: a handler that raises never ends it.

These run a `SupervisorProcess` in the test's own process without starting it (nothing
is forked): its request dispatch and its loop are driven by hand, with a handler made to
raise, which no real request can do any more.
"""

from __future__ import annotations

import socket

import pytest
from loguru import logger

from supervisor import Supervisor
from supervisor.tree import requests as _requests
from supervisor.tree.loop import Loop
from supervisor.tree.process import SupervisorProcess
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader, recv_some

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bug_reports():
    """Every ERROR line loguru writes meanwhile, with its traceback."""
    lines: list[str] = []
    sink = logger.add(lines.append, level="ERROR", format="{message}\n{exception}")
    yield lines
    logger.remove(sink)


@pytest.fixture
def sup():
    process = SupervisorProcess(Supervisor("root"), "", None, root=True)
    yield process
    process.loop.selector.close()


def read_answer(sock: socket.socket):
    sock.settimeout(5)
    reader = FrameReader(P.CONTROL_CODEC)
    while True:
        msgs, _, eof = recv_some(sock, reader)
        if msgs:
            return msgs
        assert not eof, "no answer before EOF"


def test_a_request_handler_that_raises_is_an_error_answer_and_one_bug_report(
        sup, bug_reports, monkeypatch):
    def broken(sup, msg):
        raise RuntimeError("a bug in the handler")

    monkeypatch.setitem(_requests._LOCAL, P.CountChildren, broken)
    mine, theirs = socket.socketpair()
    with mine, theirs:
        sup.request(P.CountChildren(id=7, path=""), mine, None)
        (answer,) = read_answer(theirs)
        # The next request is served as if nothing had happened.
        sup.request(P.WhichChildren(id=8, path=""), mine, None)
        (after,) = read_answer(theirs)
    assert isinstance(answer, P.ErrorResponse)
    assert (answer.id, answer.kind) == (7, "WorkerError")
    assert answer.message == ("supervisor 'the root' failed to handle CountChildren: "
                              "RuntimeError: a bug in the handler")
    assert (answer.fields["category"], answer.fields["remote_type"],
            answer.fields["remote_message"]) == ("system_error", "RuntimeError",
                                                 "a bug in the handler")
    assert after == P.Response(id=8, value=[])
    (report,) = bug_reports
    assert report.startswith("supervisor 'root': bug: the request CountChildren raised "
                             "RuntimeError: a bug in the handler; the supervisor keeps running")
    assert "Traceback" in report and "in broken" in report


def test_the_answer_rebuilds_as_a_classified_worker_error():
    from supervisor.errors import WorkerError, error_from_wire

    err = error_from_wire("WorkerError", "supervisor 'jobs' failed to handle ...",
                          category="system_error", path="jobs", remote_type="KeyError",
                          remote_message="'x'")
    assert type(err) is WorkerError
    assert (err.category, err.severity, err.path) == ("system_error", "critical", "jobs")
    assert err.context == {"remote_type": "KeyError", "remote_message": "'x'"}


def test_an_event_handler_that_raises_is_reported_and_the_loop_goes_on(sup, bug_reports):
    ran = []

    def broken_timer():
        raise KeyError("no such slot")

    sup.loop.call_soon(broken_timer)
    sup.loop.call_later(0.01, lambda: ran.append("later"))
    sup.loop.call_later(0.02, sup.loop.stop)
    sup.loop.run()
    assert ran == ["later"]
    (report,) = bug_reports
    assert report.startswith("supervisor 'root': bug: the event handler "
                             "test_an_event_handler_that_raises_is_reported_and_the_loop_goes"
                             "_on.<locals>.broken_timer raised KeyError: 'no such slot'")
    assert "Traceback" in report


def test_a_loop_without_an_error_hook_lets_exceptions_through():
    loop = Loop()
    try:
        loop.call_soon(lambda: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            loop.run_once()
    finally:
        loop.selector.close()


def test_fd_callbacks_are_guarded_too():
    seen = []
    loop = Loop(on_error=lambda exc, cb: seen.append(type(exc).__name__))
    r, w = socket.socketpair()
    try:
        def on_readable():
            r.recv(16)
            raise ValueError("bad")

        loop.add_reader(r, on_readable)
        w.send(b"x")
        loop.run_once(max_wait=5)
        assert seen == ["ValueError"]
    finally:
        loop.selector.close()
        r.close()
        w.close()
