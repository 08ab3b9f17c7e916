"""The error decision matrix in action: every category from a real failure, delays from
the schedule (measured on telemetry timestamps), circuits, failover, escalation, abandon,
health and resource limits, caller-side retries and the events that report all of it."""

from __future__ import annotations

import os
import signal
import time

import pytest

from supervisor import (
    CallTimeout,
    CircuitOpen,
    CommandError,
    Supervisor,
    WorkerCrashed,
    child,
    telemetry,
)
from workers.echo import Echo

from .._procs import wait_gone
from ._workers import Calc, Flaky, Moody, Once, Service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

FAST = {"connection_error": {"backoff": [0.1]}}  # keep repeated kills quick


def pid_of(app, path):
    parent, _, cid = path.rpartition("/")
    return {i.id: i.pid for i in app.which_children(parent)}[cid]


def failure(events, path, n=1):
    return events.wait_count("failure", n, path)[n - 1]


def event_times(events, suffix, path):
    with events.cond:
        return [m["time"] for name, m, meta in events.events
                if name[-1] == suffix and meta.get("path") == path]


# ------------------------------------------------------------------ classification
def test_sigkill_is_a_connection_error_restarted_at_once(start_as, events):
    app = start_as(Supervisor("root", children=[child("w", Echo)]))
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    f = failure(events, "w")
    assert (f["category"], f["severity"], f["recovery"], f["action"], f["delay"]) == (
        "connection_error", "major", "backoff_retry", "restart", 0.0)
    events.wait_count("restarted", 1, "w")


def test_a_garbage_frame_is_a_communication_error(start_as, events):
    app = start_as(Supervisor("root", children=[child("w", Echo)]))
    assert app.call("w", "ping") == "pong"
    chan = app._router.channels["w"]
    chan.sock.sendall(b"\x00\x00\x00\x03\xc1\xc1\xc1")  # a frame whose body is not msgpack
    f = failure(events, "w")
    assert (f["category"], f["recovery"]) == ("communication_error", "immediate_retry")
    exited = events.named("exited", "w")[0]
    assert exited["reason"] == "protocol_error"
    events.wait_count("restarted", 1, "w")
    assert app.call("w", "ping") == "pong"


def test_a_timed_out_call_restarts_the_worker_as_a_timeout_error(start_as, events):
    app = start_as(Supervisor("root", children=[child("c", Calc)]))
    before = pid_of(app, "c")
    with pytest.raises(CallTimeout) as info:
        app.call("c", "slow", 30, timeout=0.3)
    assert info.value.category == "timeout_error"
    f = failure(events, "c")
    assert (f["category"], f["recovery"]) == ("timeout_error", "backoff_retry")
    events.wait_count("restarted", 1, "c")
    assert pid_of(app, "c") != before


def test_on_timeout_ignore_keeps_the_worker(start_tree, events):
    app = start_tree(Supervisor("root", children=[child("c", Calc, on_timeout="ignore")]))
    before = pid_of(app, "c")
    with pytest.raises(CallTimeout):
        app.call("c", "slow", 0.6, timeout=0.2)
    assert app.call("c", "get") == 0
    assert pid_of(app, "c") == before
    assert events.named("failure") == []


def test_memory_over_the_limit_is_a_resource_error(start_as, events):
    app = start_as(Supervisor("root", children=[
        child("m", Flaky, kwargs={"marker": "/nonexistent"}, max_memory_mb=150)]))
    # The limit is enforced with SIGTERM: the call may be cut short by it (WorkerCrashed).
    try:
        app.call("m", "balloon", 300)
    except WorkerCrashed:
        pass
    f = failure(events, "m")
    assert (f["category"], f["severity"], f["recovery"]) == (
        "resource_error", "critical", "circuit_break")
    assert events.named("memory_exceeded", "m")[0]["limit_mb"] == 150
    assert events.named("exited", "m")[0]["reason"] == "memory_limit"
    events.wait_count("restarted", 1, "m")


def test_a_stopped_process_misses_heartbeats_and_is_killed(start_as, events):
    app = start_as(Supervisor("root", children=[
        child("h", Echo, heartbeat=0.1, heartbeat_timeout=0.3)]))
    pid = pid_of(app, "h")
    os.kill(pid, signal.SIGSTOP)
    f = failure(events, "h")
    assert (f["category"], f["recovery"]) == ("health_check_error", "backoff_retry")
    assert events.named("exited", "h")[0]["reason"] == "heartbeat_missed"
    events.wait_count("restarted", 1, "h")
    assert pid_of(app, "h") != pid


def test_heartbeats_are_answered_while_a_long_command_runs(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        child("c", Calc, heartbeat=0.05, heartbeat_timeout=0.5)]))
    assert app.call("c", "slow", 1.0) == 1.0
    assert events.named("failure") == []


def test_health_false_is_a_health_check_error(start_as, events):
    app = start_as(Supervisor("root", children=[child("h", Moody, heartbeat=0.1)]))
    app.call("h", "sicken")
    f = failure(events, "h")
    assert f["category"] == "health_check_error"
    assert events.named("exited", "h")[0]["reason"] == "health_check_failed"
    events.wait_count("restarted", 1, "h")
    assert app.call("h", "pid") > 0


def test_run_raising_is_a_python_error_with_failover(start_as, events):
    start_as(Supervisor("root", max_restarts=50, max_seconds=60, children=[
        child("s", Service, kwargs={"mode": "raise"}, restart="transient")]))
    f = failure(events, "s")
    assert (f["category"], f["recovery"], f["delay"]) == ("python_error", "failover", 0.0)


def test_init_failing_on_restart_is_an_initialization_error(start_as, events, tmp_path):
    marker = tmp_path / "broken"
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("f", Flaky, kwargs={"marker": str(marker)}), child("other", Echo)]))
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    first, second, third = (failure(events, "f", n) for n in (1, 2, 3))
    assert (first["category"], first["action"]) == ("connection_error", "restart")
    assert (second["category"], second["severity"], second["action"], second["delay"]) == (
        "initialization_error", "critical", "restart", 2.0)
    # Attempt 3 of a critical failure is abandoned (before the row's circuit budget of 3):
    # the child, not its supervisor (issue 14).
    assert (third["category"], third["action"]) == ("initialization_error", "abandon")
    events.wait_count("abandoned", 1, "f")
    assert app.call("other", "ping") == "pong"
    assert {i.id: i.state for i in app.which_children()} == {"f": "abandoned",
                                                              "other": "running"}
    started = event_times(events, "start_failed", "f")
    assert 1.7 <= started[1] - started[0] <= 3.0  # the 2 s exponential step, on the clock


# ------------------------------------------------------------------ schedules
def test_restart_delays_follow_the_schedule(start_as, events):
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("w", Echo, errors={"connection_error": {"backoff": [0.4, 0.8]}})]))
    for n in (1, 2, 3):
        os.kill(pid_of(app, "w"), signal.SIGKILL)
        events.wait_count("restarted", n, "w")
    delays = [f["delay"] for f in events.named("failure", "w")]
    assert delays == [0.0, 0.8, 0.8]  # first immediate; then the table; its last repeats
    exits = event_times(events, "exited", "w")
    starts = event_times(events, "started", "w")[1:]
    measured = [s - e for e, s in zip(exits, starts, strict=True)]
    assert measured[0] < 0.3
    for got in measured[1:]:
        assert 0.7 <= got <= 1.3


def test_stable_after_resets_the_failure_count(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("w", Echo, stable_after=0.3)]))
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    events.wait_count("restarted", 1, "w")
    time.sleep(0.5)  # the condition under test is the child having run stable_after seconds
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    assert failure(events, "w", 2)["attempt"] == 1
    assert failure(events, "w", 2)["delay"] == 0.0


def test_critical_on_a_late_attempt_is_abandoned(start_as, events):
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("w", Echo, errors=FAST)]))
    for n in (1, 2, 3):
        os.kill(pid_of(app, "w"), signal.SIGKILL)
        events.wait_count("restarted", n, "w")
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    # Its only child abandoned, the supervisor has nothing left to run (issue 14).
    assert app.wait(timeout=10) == "children_abandoned"
    fourth = failure(events, "w", 4)
    assert (fourth["severity"], fourth["action"]) == ("critical", "abandon")
    assert events.named("exceeded") == []


@pytest.mark.parametrize("on_exhausted, action, reason", [
    (None, "abandon", "children_abandoned"),
    ("escalate", "escalate", "escalated:connection_error")])
def test_used_up_retries_abandon_the_child_unless_the_row_escalates(
        start_as, events, on_exhausted, action, reason):
    row = {"severity": "minor", "max_retries": 1, "backoff": "none"}
    if on_exhausted:
        row["on_exhausted"] = on_exhausted
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60, children=[
        child("w", Echo, errors={"connection_error": row})]))
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    events.wait_count("restarted", 1, "w")
    os.kill(pid_of(app, "w"), signal.SIGKILL)
    assert app.wait(timeout=10) == reason
    assert failure(events, "w", 2)["action"] == action
    (gave_up,) = events.named("gave_up")
    assert gave_up["reason"] == reason
    assert events.named("exceeded") == []  # intensity was not exceeded


def test_a_failure_that_takes_every_child_down_is_critical(start_as, events):
    app = start_as(Supervisor("root", max_restarts=10, max_seconds=60,
                                children=[child("a", Echo), child("b", Echo)]))
    pids = [pid_of(app, "a"), pid_of(app, "b")]
    os.kill(app.pid, signal.SIGSTOP)  # the supervisor sees both exits in one pass
    try:
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        assert wait_gone(pids, timeout=5) == []  # both dead before the supervisor resumes
    finally:
        os.kill(app.pid, signal.SIGCONT)
    events.wait_count("failure", 2)
    assert events.named("failure")[0]["severity"] == "critical"


# ------------------------------------------------------------------ circuits and failover
CIRCUIT = {"initialization_error": {"severity": "minor", "max_retries": 1, "backoff": "none"}}


def circuit_tree(marker, **extra):
    return Supervisor("root", max_restarts=20, max_seconds=60, children=[
        child("f", Flaky, kwargs={"marker": str(marker)}, errors=CIRCUIT, circuit_timeout=0.5,
              stable_after=0.5, **extra),
        child("backup", Echo, kwargs={"prefix": "backup:"}),
    ])


def test_circuit_opens_after_the_budget_then_half_opens_and_closes(start_as, events,
                                                                    tmp_path):
    marker = tmp_path / "broken"
    app = start_as(circuit_tree(marker))
    backup = pid_of(app, "backup")
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    opened = events.wait_count("circuit_opened", 1, "f")[0]
    info = {i.id: i for i in app.which_children()}
    assert (info["f"].state, info["f"].circuit, info["f"].pid) == ("circuit_open", "open", None)
    assert info["f"].retry_at == pytest.approx(opened["retry_at"])
    assert pid_of(app, "backup") == backup  # siblings untouched
    with pytest.raises(CircuitOpen, match=r"circuit of 'f' is open after 2 failures; "
                                          r"next trial at") as err:
        app.call("f", "pid")
    assert err.value.retry_at == pytest.approx(opened["retry_at"])
    marker.unlink()
    events.wait_count("circuit_closed", 1, "f", timeout=10)
    assert app.call("f", "pid") == pid_of(app, "f")
    order = [n[-1] for n, _, m in events.events if m.get("path") == "f" and n[-1] in (
        "failure", "circuit_opened", "circuit_half_open", "started", "circuit_closed")]
    assert order == ["started", "failure", "failure", "circuit_opened", "circuit_half_open",
                     "started", "circuit_closed"]
    status = app.status()
    assert status["recovery"]["initiated"] == 2
    assert {c["id"]: c["circuit"] for c in status["children"]} == {
        "f": "closed", "backup": "closed"}


def test_a_failed_half_open_trial_opens_the_circuit_again(start_tree, events, tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(circuit_tree(marker))
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    events.wait_count("circuit_opened", 2, "f", timeout=10)
    assert events.named("circuit_half_open", "f")
    assert {i.id: i.state for i in app.which_children()}["f"] == "circuit_open"


def test_restart_child_of_an_open_circuit_closes_it_and_cancels_the_trial(start_tree, events,
                                                                           tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(circuit_tree(marker))
    marker.touch()
    os.kill(pid_of(app, "f"), signal.SIGKILL)
    events.wait_count("circuit_opened", 1, "f")
    marker.unlink()
    pid = app.restart_child("", "f")  # the operator's way back
    info = {i.id: i for i in app.which_children()}["f"]
    assert (info.state, info.pid, info.circuit, info.retry_at) == ("running", pid, "closed",
                                                                   None)
    assert app.call("f", "pid") == pid


def test_calls_go_to_the_fallback_while_the_circuit_is_open(start_tree, events, tmp_path):
    marker = tmp_path / "broken"
    app = start_tree(Supervisor("root", max_restarts=20, max_seconds=60, children=[
        child("primary", Flaky, kwargs={"marker": str(marker)}, errors=CIRCUIT,
              circuit_timeout=30, fallback="backup"),
        child("backup", Calc, kwargs={"base": 7}),
    ]))
    marker.touch()
    os.kill(pid_of(app, "primary"), signal.SIGKILL)
    events.wait_count("circuit_opened", 1, "primary")
    assert app.call("primary", "get") == 7  # Calc.get on the backup
    with pytest.raises(CircuitOpen):
        app.call("primary", "get", retry=False)


def test_calls_go_to_the_fallback_during_a_backoff_delay(start_as, events):
    app = start_as(Supervisor("root", max_restarts=20, max_seconds=60, children=[
        child("primary", Calc, kwargs={"base": 1}, fallback="backup",
              errors={"connection_error": {"backoff": [5.0]}}),
        child("backup", Calc, kwargs={"base": 2}),
    ]))
    for n in (1, 2):
        os.kill(pid_of(app, "primary"), signal.SIGKILL)
        if n == 1:
            events.wait_count("restarted", 1, "primary")
    events.wait_count("restart_scheduled", 1, "primary")
    assert app.call("primary", "get") == 2


# ------------------------------------------------------------------ caller-side retries
def test_idempotent_method_is_resent_after_a_crash(start_as, events, tmp_path):
    app = start_as(Supervisor("root", children=[child("o", Once)]))
    first = pid_of(app, "o")
    result = app.call("o", "once", str(tmp_path / "m"))
    assert result.startswith("ok from ") and int(result.split()[-1]) != first


def test_non_idempotent_call_in_flight_raises_worker_crashed_once(start_tree, tmp_path):
    app = start_tree(Supervisor("root", children=[child("o", Once)]))
    marker = str(tmp_path / "m")
    with pytest.raises(WorkerCrashed) as info:
        app.call("o", "once_plain", marker)
    assert info.value.attempt == 1
    assert app.call("o", "once_plain", marker).startswith("ok from")


def test_idempotent_true_on_the_call_opts_in(start_tree, tmp_path):
    app = start_tree(Supervisor("root", children=[child("o", Once)]))
    assert app.call("o", "once_plain", str(tmp_path / "m"), idempotent=True).startswith("ok")


def test_retry_false_disables_resending(start_tree, tmp_path):
    app = start_tree(Supervisor("root", children=[child("o", Once)]))
    with pytest.raises(WorkerCrashed):
        app.call("o", "once", str(tmp_path / "m"), retry=False)


def test_max_calls_recycles_without_counting_toward_intensity(start_as, events):
    app = start_as(Supervisor("root", max_restarts=0, children=[
        child("r", Calc, max_calls=3)]))
    pids = {app.call("r", "add", 0) or pid_of(app, "r") for _ in range(9)}
    assert app.wait(timeout=0.2) is None  # max_restarts=0 and still up
    assert len(events.named("exited", "r")) >= 2
    assert all(e["reason"] == "normal" for e in events.named("exited", "r"))
    assert events.named("failure") == []
    assert len(pids) >= 1


# ------------------------------------------------------------------ telemetry
def test_events_of_a_nested_tree_arrive_in_order_with_metadata(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        Supervisor("sub", children=[child("w", Echo)])]))
    events.clear()
    pid = pid_of(app, "sub/w")
    os.kill(pid, signal.SIGKILL)
    events.wait_count("complete", 1, "sub/w")
    names = [n[1:] for n, _, m in events.events if m.get("path") == "sub/w"]
    assert names == [("child", "exited"), ("child", "failure"), ("child", "started"),
                     ("child", "restarted"), ("recovery", "complete")]
    exited = events.named("exited", "sub/w")[0]
    assert (exited["pid"], exited["supervisor"], exited["id"], exited["reason"],
            exited["category"]) == (pid, "sub", "w", "killed", "connection_error")


def test_call_errors_are_events_in_the_callers_process(start_tree, events):
    app = start_tree(Supervisor("root", children=[child("w", Echo)]))
    with pytest.raises(CommandError):
        app.call("w", "fail", "boom")
    (meta,) = [m for n, _, m in events.events if n == ("supervisor", "call", "error")]
    assert (meta["path"], meta["method"], meta["error"], meta["category"]) == (
        "w", "fail", "CommandError", "python_error")


def test_standalone_circuit_breaker_reports_state_changes(events):
    breaker = telemetry.circuit_breaker("db", failure_threshold=2, timeout=60)
    breaker.record_failure()
    breaker.record_failure()
    changes = [(m["name"], m["old"], m["new"]) for n, _, m in events.events
               if n == ("supervisor", "circuit_breaker", "state_change")]
    assert changes == [("db", "closed", "open")]


COMMON_KEYS = {"path", "id", "pid", "supervisor", "reason", "category", "restarts"}


def test_policy_events_carry_the_common_metadata_keys(events):
    """The README promises every event's metadata the common keys: the standalone
    breaker's and retry's events too (a policy object has no place in the tree)."""
    from strategies.retry import retry

    breaker = telemetry.circuit_breaker("db", failure_threshold=1, timeout=60)
    breaker.record_failure()
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) < 2:
            raise ConnectionResetError("peer reset")
        return "ok"

    assert retry(flaky, max_attempts=2, backoff="none", sleep=lambda s: None,
                 on_retry=telemetry.retry_reporter("fetch")) == "ok"
    got = {n[1]: m for n, _, m in events.events if n[1] in ("circuit_breaker", "retry")}
    for meta in got.values():
        assert COMMON_KEYS <= set(meta)
    common = {k: got["circuit_breaker"][k] for k in COMMON_KEYS}
    assert common == {"path": "", "id": "db", "pid": os.getpid(), "supervisor": None,
                      "reason": "open", "category": None, "restarts": None}
    common = {k: got["retry"][k] for k in COMMON_KEYS}
    assert common == {"path": "", "id": "fetch", "pid": os.getpid(), "supervisor": None,
                      "reason": "ConnectionResetError", "category": "connection_error",
                      "restarts": None}
    assert (got["retry"]["name"], got["retry"]["attempt"]) == ("fetch", 1)


def test_format_for_logging_names_every_fact(start_tree):
    app = start_tree(Supervisor("root", children=[child("w", Echo)]))
    with pytest.raises(CommandError) as info:
        app.call("w", "fail", "boom", session="s-1")
    text = info.value.format_for_logging()
    for line in ("Category: python_error", "Severity: major", "Recovery: failover",
                 "Worker: w", "Session: s-1", "Attempt: 1"):
        assert line in text
