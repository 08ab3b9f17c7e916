"""One flapping child never takes its siblings down (issue 14): the matrix gives up on the
child (`abandoned`, or its circuit opens), intensity alone makes a supervisor give up, and
every give-up is reported with its real reason.

The three scenarios a new user hit (each stopped the whole tree before): four SIGKILLs of
one worker a few seconds apart, a program exiting with code 3 on every start, an `init`
that fails twice on restart. Each runs with the default rows, a sibling served by a caller
thread throughout; with ``on_exhausted="escalate"`` the supervisor gives up as before.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import threading

import pytest

from supervisor import CallTimeout, ChildAbandoned, Supervisor, WorkerError, child, program
from workers.echo import Echo

from ._workers import Flaky, HangsOnRestart

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

ESCALATE = {"on_exhausted": "escalate"}


def pid_of(app, path):
    parent, _, cid = path.rpartition("/")
    return {i.id: i.pid for i in app.which_children(parent)}[cid]


class Caller:
    """Calls `path` continuously from a thread; every call must answer."""

    def __init__(self, app, path: str) -> None:
        self.app, self.path = app, path
        self.calls = 0
        self.errors: list[BaseException] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.done.is_set():
            try:
                assert self.app.call(self.path, "ping", timeout=10) == "pong"
                self.calls += 1
            except BaseException as exc:  # recorded for the test to show
                self.errors.append(exc)
                return

    def stop(self) -> None:
        self.done.set()
        self.thread.join(15)
        assert not self.thread.is_alive()
        assert self.errors == []
        assert self.calls > 0


@pytest.fixture
def caller():
    callers = []

    def _start(app, path):
        callers.append(Caller(app, path))
        return callers[-1]

    yield _start
    for c in callers:
        c.done.set()
        c.thread.join(15)


def kill_after_start(app, events, path, times):
    """SIGKILL `path` `times` times, each time once it is back."""
    for n in range(times):
        if n:
            events.wait_count("restarted", n, path, timeout=20)
        os.kill(pid_of(app, path), signal.SIGKILL)


def assert_abandoned(app, events, path, category):
    (abandoned,) = events.wait_count("abandoned", 1, path, timeout=20)
    assert abandoned["category"] == category
    assert abandoned["action"] == "abandon"
    info = {i.id: i for i in app.which_children()}[path]
    assert (info.state, info.pid) == ("abandoned", None)
    assert info.reason.startswith(f"{category} on ")
    return abandoned


# ------------------------------------------------------------------ scenario 1: SIGKILLs
def test_four_sigkills_abandon_the_worker_and_its_sibling_serves(start_tree, events, caller):
    app = start_tree(Supervisor("root", max_restarts=5, max_seconds=10, children=[
        child("w", Echo), child("s", Echo)]))
    serving = caller(app, "s")
    kill_after_start(app, events, "w", 4)
    assert_abandoned(app, events, "w", "connection_error")
    fourth = events.named("failure", "w")[3]
    assert (fourth["attempt"], fourth["severity"]) == (4, "critical")
    with pytest.raises(ChildAbandoned, match=r"'w' was abandoned \(connection_error on 4 "
                                             r"consecutive failure\(s\)") as info:
        app.call("w", "ping", timeout=5)
    assert info.value.category == "connection_error"
    assert isinstance(info.value, WorkerError)
    serving.stop()
    assert app.wait(timeout=0.2) is None  # the root never gave up
    assert events.named("gave_up") == [] and events.named("exceeded") == []
    status = app.status()
    (w,) = [c for c in status["children"] if c["id"] == "w"]
    assert w["state"] == "abandoned" and w["reason"].startswith("connection_error on 4")


def test_four_sigkills_with_escalate_stop_the_tree_as_before(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=5, max_seconds=10, children=[
        child("w", Echo, errors={"connection_error": ESCALATE}), child("s", Echo)]))
    kill_after_start(app, events, "w", 4)
    assert app.wait(timeout=20) == "escalated:connection_error"
    assert events.named("failure", "w")[3]["action"] == "escalate"
    (gave_up,) = events.named("gave_up")
    assert gave_up["reason"] == "escalated:connection_error"
    assert events.named("exceeded") == []  # intensity (5 in 10 s) was not exceeded


def test_an_abandoned_child_is_revived_by_restart_child_with_a_fresh_count(start_tree,
                                                                          events):
    app = start_tree(Supervisor("root", max_restarts=20, max_seconds=60, children=[
        child("w", Echo, errors={"connection_error": {"recovery": "abandon"}}),
        child("s", Echo)]))
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    assert_abandoned(app, events, "w", "connection_error")
    pid = app.restart_child("", "w")
    assert app.call("w", "pid") == pid
    assert {i.id: (i.state, i.reason) for i in app.which_children()}["w"] == ("running", None)
    os.kill(pid, signal.SIGKILL)
    events.wait_count("abandoned", 2, "w")
    assert events.named("failure", "w")[1]["attempt"] == 1  # a fresh failure count


# ------------------------------------------------------------------ scenario 2: a program
EXIT_3 = [sys.executable, "-c", "import sys; sys.exit(3)"]


@pytest.mark.timeout(90)
def test_a_program_exiting_3_on_every_start_is_abandoned(start_tree, events, caller):
    app = start_tree(Supervisor("root", max_restarts=5, max_seconds=10, children=[
        child("s", Echo), program("p", EXIT_3)]))
    serving = caller(app, "s")
    assert_abandoned(app, events, "p", "connection_error")
    assert [f["action"] for f in events.named("failure", "p")] == [
        "restart", "restart", "restart", "abandon"]
    serving.stop()
    assert app.wait(timeout=0.2) is None
    assert events.named("gave_up") == []


@pytest.mark.timeout(90)
def test_a_program_exiting_3_with_escalate_stops_the_tree(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=5, max_seconds=10, children=[
        child("s", Echo), program("p", EXIT_3, errors={"connection_error": ESCALATE})]))
    assert app.wait(timeout=30) == "escalated:connection_error"


# ------------------------------------------------------------------ scenario 3: init fails
def test_init_failing_twice_on_restart_is_abandoned_and_start_revives_it(
        start_tree, events, caller, tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(Supervisor("root", children=[
        child("f", Flaky, kwargs={"marker": str(marker)}), child("s", Echo)]))
    serving = caller(app, "s")
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    assert_abandoned(app, events, "f", "initialization_error")
    assert [f["category"] for f in events.named("failure", "f")] == [
        "connection_error", "initialization_error", "initialization_error"]
    serving.stop()
    assert app.wait(timeout=0.2) is None
    marker.unlink()
    pid = app.restart_child("", "f")
    assert app.call("f", "pid") == pid


def test_init_failing_twice_with_escalate_stops_the_tree(start_tree, events, tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(Supervisor("root", children=[
        child("f", Flaky, kwargs={"marker": str(marker)},
              errors={"initialization_error": ESCALATE}), child("s", Echo)]))
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    assert app.wait(timeout=20) == "escalated:initialization_error"


# ------------------------------------------------------------------ classification
def test_a_kill_during_a_restarts_init_is_a_connection_error(start_tree, events, tmp_path):
    path = str(tmp_path / "init.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen()
    listener.settimeout(20)
    app = start_tree(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("h", HangsOnRestart, kwargs={"sock_path": path},
              errors={"connection_error": {"backoff": [0.1]}})]))
    try:
        os.kill(pid_of(app, "h"), signal.SIGKILL)
        conn, _ = listener.accept()  # the restart's init is running now
        with conn:
            os.kill(int(conn.recv(32)), signal.SIGKILL)
        (failed,) = events.wait_count("start_failed", 1, "h")
        assert failed["category"] == "connection_error"
        conn, _ = listener.accept()  # the next restart: let its init return
        with conn:
            conn.recv(32)  # read its pid first: closing on unread data would reset it
        events.wait_count("restarted", 1, "h")
    finally:
        listener.close()
    categories = [f["category"] for f in events.named("failure", "h")]
    assert categories == ["connection_error", "connection_error"]


# ------------------------------------------------------------------ all abandoned
def test_a_nested_supervisor_with_every_child_abandoned_is_restarted_by_its_parent(
        start_tree, events):
    app = start_tree(Supervisor("root", children=[
        Supervisor("mid", children=[child("w", Echo, restart="transient")]),
        child("s", Echo)]))
    mid = pid_of(app, "mid")
    app.call("mid/w", "exit", "a reason no row names")  # system_error: abandoned at once
    events.wait_count("abandoned", 1, "mid/w")
    (gave_up,) = events.wait_count("gave_up", 1)
    assert (gave_up["supervisor"], gave_up["reason"]) == ("mid", "children_abandoned")
    exited = events.wait_count("exited", 1, "mid")[0]
    assert exited["detail"] == "children_abandoned"
    events.wait_count("restarted", 1, "mid")
    assert pid_of(app, "mid") != mid
    assert app.call("mid/w", "ping") == "pong"  # back with its parent's restart
    assert app.wait(timeout=0.2) is None
    assert events.named("exceeded") == []


def test_a_sibling_stopped_by_the_operator_keeps_its_supervisor_up(start_tree, events):
    # "Every child abandoned" is strict: a child an operator stopped is theirs to start.
    app = start_tree(Supervisor("root", children=[
        child("w", Echo, restart="transient"), child("s", Echo)]))
    app.terminate_child("", "s")
    app.call("w", "exit", "a reason no row names")
    events.wait_count("abandoned", 1, "w")
    assert app.wait(timeout=0.2) is None
    assert events.named("gave_up") == []


# ------------------------------------------------------------------ intensity, two levels
ENDLESS = {"connection_error": {"severity": "minor", "max_retries": 100, "backoff": "none"}}


def test_intensity_escalates_exactly_at_the_otp_boundary_through_two_levels(start_tree,
                                                                             events):
    # mid allows 2 restarts in its window, root allows 1 restart of mid.
    app = start_tree(Supervisor("root", max_restarts=1, max_seconds=60, children=[
        Supervisor("mid", max_restarts=2, max_seconds=60, children=[
            child("w", Echo, errors=ENDLESS)]),
        child("s", Echo)]))
    kill_after_start(app, events, "mid/w", 3)  # 2 restarts allowed, the 3rd gives up
    (gave_up,) = events.wait_count("gave_up", 1)
    assert (gave_up["supervisor"], gave_up["reason"]) == ("mid", "reached_max_restart_intensity")
    assert events.wait_count("exceeded", 1)[0]["supervisor"] == "mid"
    assert len(events.named("restarted", "mid/w")) == 2
    events.wait_count("restarted", 1, "mid")  # the root's one allowed restart
    assert app.wait(timeout=0.2) is None
    events.clear()
    kill_after_start(app, events, "mid/w", 3)
    assert app.wait(timeout=20) == "reached_max_restart_intensity"
    reasons = [(g["supervisor"], g["reason"]) for g in events.named("gave_up")]
    assert reasons == [("mid", "reached_max_restart_intensity"),
                       ("", "reached_max_restart_intensity")]


# ------------------------------------------------------------------ requests while restarting
def test_which_and_count_children_wait_for_a_restarting_supervisor(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        Supervisor("mid", errors={"connection_error": {"backoff": [3.0]}},
                   children=[child("w", Echo)]),
        child("s", Echo)]))
    os.kill(pid_of(app, "mid"), signal.SIGKILL)
    events.wait_count("restarted", 1, "mid")
    os.kill(pid_of(app, "mid"), signal.SIGKILL)  # attempt 2: back after 3 s
    events.wait_count("restart_scheduled", 1, "mid")
    with pytest.raises(CallTimeout, match="did not come back"):
        app.which_children("mid", timeout=0.5)
    assert [i.id for i in app.which_children("mid", timeout=20)] == ["w"]
    os.kill(pid_of(app, "mid"), signal.SIGKILL)  # attempt 3: back after 3 s again
    events.wait_count("restart_scheduled", 2, "mid")
    assert app.count_children("mid", timeout=20) == {
        "specs": 1, "active": 1, "supervisors": 0, "workers": 1}
