"""The call path: direct channels, errors that reach the caller, threads, timeouts."""

from __future__ import annotations

import os
import select
import signal
import threading
import time

import pytest

from supervisor import (
    CallTimeout,
    CommandError,
    EncodeError,
    NoSuchChild,
    Supervisor,
    WorkerCrashed,
    child,
)
from workers.echo import Echo

from ._workers import Calc, Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def app(start_tree):
    return start_tree(Supervisor("root", children=[
        child("calc", Calc, kwargs={"base": 10}),
        child("echo", Echo),
        Supervisor("sub", children=[child("deep", Echo, kwargs={"prefix": ">"})]),
    ]))


def test_call_returns_the_result_with_args_and_kwargs(app):
    assert app.call("calc", "add", 1) == 11
    assert app.call("calc", "add", 1, b=5) == 16
    assert app.call("sub/deep", "echo", "x") == ">x"
    assert app.call("echo", "echo", {"nested": [1, 2, {"a": b"bytes"}]}) == {
        "nested": [1, 2, {"a": b"bytes"}]}


def test_proxy_and_options(app):
    calc = app.worker("calc")
    assert calc.add(2, b=3) == 15
    with pytest.raises(CallTimeout):
        calc.options(timeout=0.2).slow(5)
    with pytest.raises(TypeError, match=r"^unknown call options \['bogus'\]"):
        calc.options(bogus=1)


def test_a_command_that_raises_is_a_command_error_and_the_worker_keeps_serving(app):
    pid = app.call("echo", "pid")
    with pytest.raises(CommandError) as info:
        app.call("echo", "fail", "bad input")
    err = info.value
    assert str(err).startswith("ValueError: bad input")
    assert err.remote_type == "ValueError"
    assert "raise ValueError(message)" in err.remote_traceback
    assert (err.category, err.severity, err.recovery) == ("python_error", "major", "failover")
    assert err.path == "echo"
    assert app.call("echo", "pid") == pid


def test_unknown_method_is_a_command_error(app):
    with pytest.raises(CommandError, match=r"^UnknownCommand: Calc has no command 'nope' "
                                           r"\(commands: add, busy, get, slow, unencodable\)"):
        app.call("calc", "nope")
    for hook in ("init", "terminate", "_private"):
        with pytest.raises(CommandError, match="has no command"):
            app.call("calc", hook)


def test_unencodable_argument_fails_in_the_caller(app):
    with pytest.raises(EncodeError, match="object"):
        app.call("echo", "echo", object())
    assert app.call("echo", "ping") == "pong"


def test_unencodable_result_is_an_encode_error(app):
    with pytest.raises(EncodeError, match=r"cannot encode the result of 'unencodable'.*object"):
        app.call("calc", "unencodable")
    assert app.call("calc", "get") == 10


def test_unknown_paths(app):
    with pytest.raises(NoSuchChild, match=r"^no child 'missing'"):
        app.call("missing", "ping")
    with pytest.raises(NoSuchChild, match=r"^'sub' is a supervisor; calls go to workers"):
        app.call("sub", "ping")
    with pytest.raises(NoSuchChild, match=r"^no child 'echo/x': 'echo' is a worker"):
        app.call("echo/x", "ping")
    with pytest.raises(NoSuchChild):
        app.which_children("nowhere")


def test_calls_from_many_threads_are_never_mixed(app):
    results: dict[int, list] = {}
    errors = []

    def caller(n: int) -> None:
        try:
            results[n] = [app.call("echo", "echo", [n, i]) for i in range(200)]
        except Exception as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=caller, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert errors == []
    assert results == {n: [[n, i] for i in range(200)] for n in range(8)}


def arrived(tmp_path):
    """A FIFO the worker writes to when a call reached it; returns (path, wait)."""
    fifo = str(tmp_path / "arrived")
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    def wait(timeout: float = 10.0) -> None:
        try:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, "the call never reached the worker"
        finally:
            os.close(fd)

    return fifo, wait


def test_call_in_flight_when_the_worker_dies_raises_worker_crashed_at_once(
        app, events, tmp_path):
    pid = {i.id: i.pid for i in app.which_children()}["calc"]
    fifo, wait_arrived = arrived(tmp_path)
    outcome = {}

    def slow_call() -> None:
        try:
            app.call("calc", "busy", fifo, 30)
        except WorkerCrashed as exc:
            outcome["error"] = exc
            outcome["at"] = time.monotonic()

    t = threading.Thread(target=slow_call)
    t.start()
    wait_arrived()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    t.join(10)
    assert isinstance(outcome.get("error"), WorkerCrashed)
    assert outcome["error"].category == "connection_error"
    assert outcome["at"] - killed_at < 2.0
    events.wait_count("restarted", 1, "calc")
    assert app.call("calc", "get") == 10


def test_timed_out_call_raises_and_the_late_reply_is_discarded(start_tree):
    app = start_tree(Supervisor("root", children=[child("calc", Calc, on_timeout="ignore")]))
    with pytest.raises(CallTimeout) as info:
        app.call("calc", "slow", 0.5, timeout=0.1)
    assert info.value.category == "timeout_error"
    # The late reply to the timed-out call must not be taken for this one.
    assert app.call("calc", "add", 1) == 1


def test_cast_does_not_wait(app):
    app.cast("echo", "echo", "fire and forget")
    assert app.call("echo", "calls") == 1


def test_service_worker_serves_calls_while_run_loops(start_tree, events):
    app = start_tree(Supervisor("root", children=[child("svc", Service)]))
    assert app.call("svc", "pid") > 0
    app.stop()
    assert [m["reason"] for m in events.named("exited", "svc")] == ["shutdown"]


def test_service_worker_returning_is_a_normal_exit(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        child("svc", Service, kwargs={"mode": "return"}, restart="transient"),
        child("other", Echo),
    ]))
    exited = events.wait_count("exited", 1, "svc")
    assert exited[0]["reason"] == "normal"
    assert {i.id: i.state for i in app.which_children()}["svc"] == "stopped"


def test_service_worker_raising_is_restarted(start_tree, events):
    start_tree(Supervisor("root", max_restarts=100, max_seconds=60, children=[
        child("svc", Service, kwargs={"mode": "raise"}, restart="transient")]))
    exited = events.wait_count("exited", 1, "svc")
    assert exited[0]["category"] == "python_error"
    assert exited[0]["detail"] == "RuntimeError: service loop failed"
    events.wait_count("restarted", 1, "svc")
