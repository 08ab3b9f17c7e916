"""Bad input at every edge: each is a clear, classified error, and the tree keeps running.

Wrong argument types (to commands and to the App's own methods), values msgspec cannot
encode (arguments and results), unknown methods and paths, garbage on a worker's stdout
and stderr, a worker whose own children outlive it, file descriptors running out in the
caller, in a supervisor and in a worker, and a retry budget large enough to be a burden.
Malformed TOML has its corpus in tests/config/test_malformed.py (also run through the CLI
in tests/cli/test_cli.py).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

import supervisor
from supervisor import (
    CommandError,
    ConfigError,
    EncodeError,
    NoSuchChild,
    StartError,
    Supervisor,
    WorkerCrashed,
    WorkerError,
    child,
)

from .._procs import wait_gone
from ._workers import Edgy, Forker, Target
from .conftest import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def app(start_tree):
    return start_tree(Supervisor("root", children=[
        child("w", Edgy),
        Supervisor("sup", children=[child("x", Target)]),
        Supervisor("jobs", strategy="simple_one_for_one",
                   template=child("job", Target, restart="temporary")),
    ]))


def still_serving(app, pid: int) -> None:
    """The tree is up and `w` is the same process, answering."""
    assert app.wait(timeout=0) is None
    assert app.call("w", "pid") == pid


# ------------------------------------------------------------------ commands
@pytest.mark.parametrize("args, kwargs, message", [
    (("x", 1), {}, r'can only concatenate str \(not "int"\) to str'),
    ((), {}, r"missing 1 required positional argument: 'a'"),
    ((1, 2, 3), {}, r"takes from 2 to 3 positional arguments but 4 were given"),
    ((1,), {"c": 2}, r"got an unexpected keyword argument 'c'"),
    (([1], {"k": 1}), {}, r'can only concatenate list \(not "dict"\) to list'),
])
def test_wrong_argument_types_are_command_errors(app, events, args, kwargs, message):
    """A command called with arguments of the wrong type or number raises TypeError in the
    worker: the caller gets CommandError(TypeError) and the worker keeps serving."""
    pid = app.call("w", "pid")
    with pytest.raises(CommandError) as info:
        app.call("w", "add", *args, **kwargs)
    err = info.value
    assert (err.remote_type, err.category, err.path) == ("TypeError", "python_error", "w")
    assert re.search(message, str(err))
    still_serving(app, pid)
    assert events.named("exited", "w") == []


@pytest.mark.parametrize("value, named", [
    (object(), "object"),
    (2**64, "int"),
    (-(2**63) - 1, "int"),
    (lambda: None, "function"),
    ((i for i in range(3)), "generator"),
    ({1: {2: [{"deep": object()}]}}, "object"),
])
def test_unencodable_arguments_fail_in_the_caller(app, events, value, named):
    """An argument msgspec cannot encode is an EncodeError (also a TypeError) raised in the
    caller, naming the type; nothing was sent, the worker keeps serving."""
    pid = app.call("w", "pid")
    with pytest.raises(EncodeError, match=named) as info:
        app.call("w", "add", value)
    assert isinstance(info.value, TypeError)
    assert info.value.category == "communication_error"
    with pytest.raises(EncodeError, match=named):
        app.call("w", "add", 1, b=value)
    still_serving(app, pid)
    assert events.named("exited", "w") == []


def test_a_cyclic_argument_is_an_encode_error(app):
    loop: list = []
    loop.append(loop)
    pid = app.call("w", "pid")
    with pytest.raises(EncodeError, match="while encoding a Call message"):
        app.call("w", "add", loop)
    still_serving(app, pid)


@pytest.mark.parametrize("kind, named", [
    ("object", "object"), ("huge_int", "int"), ("cycle", "Reply"), ("generator", "generator"),
])
def test_unencodable_results_are_encode_errors(app, events, kind, named):
    """A result msgspec cannot encode comes back as EncodeError naming the type; the
    worker keeps serving (the channel is fine: the error frame replaced the reply)."""
    pid = app.call("w", "pid")
    with pytest.raises(EncodeError, match=rf"^cannot encode the result of 'unencodable'.*{named}"):
        app.call("w", "unencodable", kind)
    still_serving(app, pid)
    assert events.named("exited", "w") == []


@pytest.mark.parametrize("method", ["", "nope", "_private", "__class__", "__init__", "init",
                                    "terminate", "health", "run", "stop", "log", "\x00",
                                    "é" * 1000])
def test_unknown_methods_are_command_errors(app, method):
    pid = app.call("w", "pid")
    with pytest.raises(CommandError, match=r"^UnknownCommand: Edgy has no command "):
        app.call("w", method)
    still_serving(app, pid)


@pytest.mark.parametrize("path, message", [
    ("", r"^the root is a supervisor; calls go to workers"),
    ("missing", r"^no child 'missing'"),
    ("sup", r"^'sup' is a supervisor; calls go to workers"),
    ("w/x", r"^no child 'w/x': 'w' is a worker"),
    ("sup/missing", r"^no child 'sup/missing'"),
    ("//", r"^no child '//'"),
    ("/w", r"^no child '/w'"),
    ("x" * 5000, r"^no child 'xxx"),
    ("\x00", "^no child " + re.escape(repr("\x00"))),
])
def test_unknown_paths_are_no_such_child(app, path, message):
    pid = app.call("w", "pid")
    with pytest.raises(NoSuchChild, match=message):
        app.call(path, "ping")
    still_serving(app, pid)


@pytest.mark.parametrize("request_", [
    lambda app: app.which_children("nowhere"),
    lambda app: app.which_children("w"),
    lambda app: app.count_children("sup/x"),
    lambda app: app.terminate_child("", "nope"),
    lambda app: app.restart_child("sup", "nope"),
    lambda app: app.delete_child("sup", "nope"),
    lambda app: app.start_child("nowhere"),
    lambda app: app.start_child("w"),
], ids=["which-nowhere", "which-worker", "count-worker", "terminate", "restart", "delete",
        "start-nowhere", "start-worker"])
def test_requests_for_unknown_children_are_no_such_child(app, request_):
    pid = app.call("w", "pid")
    with pytest.raises(NoSuchChild):
        request_(app)
    still_serving(app, pid)


def test_start_child_without_a_spec_on_a_static_supervisor_is_a_config_error(app):
    with pytest.raises(ConfigError, match="start_child needs a spec for a one_for_one"):
        app.start_child("sup")
    assert app.call("sup/x", "ping") == "pong"


APP_TYPE_BUG = (
    "supervisor/app.py App._request (and Router._open / CallChannel.send): arguments are "
    "encoded without checking their types (msgspec's encoder does not validate), so the "
    "receiver's decoder rejects the frame: {where}")
ROOT_DIES = APP_TYPE_BUG.format(where=(
    "the root's _on_parent() takes it for garbage from its parent, logs 'bad frame from "
    "parent: ... Expected `str`, got `int`' and shuts the whole tree down; the caller gets "
    "WorkerCrashed('the root supervisor exited'). Fix: validate at the API (TypeError naming "
    "the argument) or decode the encoded request locally before sending it."))
WORKER_DIES = APP_TYPE_BUG.format(where=(
    "a Call whose method is not a str makes the worker exit with protocol_error (a restart) "
    "and the caller gets WorkerCrashed instead of a TypeError."))


@pytest.mark.parametrize("request_", [
    pytest.param(lambda app: app.call(5, "ping"), id="call-path-int"),
    pytest.param(lambda app: app.which_children(None), id="which-None"),
    pytest.param(lambda app: app.terminate_child("jobs", 5), id="terminate-id-int"),
    pytest.param(lambda app: app.start_child("jobs", kwargs=[1]), id="start-kwargs-list"),
    pytest.param(lambda app: app.call("w", 5), id="call-method-int"),
    pytest.param(lambda app: app.call("w", "add", 1, b=object()), id="call-kwarg-object"),
])
def test_wrong_argument_types_to_the_app_are_caller_errors(app, events, request_):
    """A wrong argument type to an App method is the caller's error, raised in the caller
    (a TypeError, or NoSuchChild for a path that cannot exist): it never reaches a
    supervisor or worker as a frame they cannot decode, and the tree keeps running."""
    pid = app.call("w", "pid")
    with pytest.raises((TypeError, LookupError)):
        request_(app)
    still_serving(app, pid)
    assert events.named("exited") == []


# ------------------------------------------------------------------ output
CHATTY_TREE = """
[tree]
id = "chatty"

[[tree.children]]
id = "chatter"
worker = "tests.faults._workers:Chatter"
"""


def test_garbage_on_stdout_and_stderr_is_logged_and_the_tree_keeps_running(service):
    """Invalid UTF-8 (replaced), a 1 MiB line (logged in 64 KiB pieces), a flood of CRLF
    lines and a line continued across writes, on both streams; then a worker dying in
    the middle of a line: everything reaches the log, tagged, and the tree keeps serving."""
    svc = service(CHATTY_TREE)
    with supervisor.connect(svc.socket) as app:
        pid = app.call("chatter", "pid")
        for fd, marker in ((1, "END-OF-STDOUT"), (2, "END-OF-STDERR")):
            start = len(svc.lines)
            assert app.call("chatter", "garbage", fd, marker, timeout=30) > 1024 * 1024
            end = svc.wait_line(f"[chatter] no newline here, {marker}", start=start)
            mine = [line.split("[chatter] ", 1)[1] for line in svc.lines[start:end]
                    if "[chatter] " in line]
            assert "\ufffd\ufffd\ufffd( invalid utf-8 \ufffd\ufffd\ufffd" in mine
            pieces = [text for text in mine if text.startswith("LLLL")]
            assert [len(p) for p in pieces] == [64 * 1024] * 16
            assert "line 0" in mine and "line 19999" in mine
            assert not any(text.endswith("\r") for text in mine)
        assert app.call("chatter", "pid") == pid
        start = len(svc.lines)
        with pytest.raises(WorkerCrashed):
            app.call("chatter", "die_mid_line", "last words, no newline")
        svc.wait_line("[chatter] last words, no newline", start=start)
        svc.wait_line("child.restarted chatter", start=start)
        assert app.call("chatter", "ping") == "pong"


# ------------------------------------------------------------------ orphans
@pytest.mark.parametrize("how", ["self-kill", "sigkill", "tree-stop"])
def test_a_worker_s_own_children_do_not_outlive_it(start_tree, events, how):
    """A worker starts a subprocess, a bare fork that ignores SIGTERM and a double-forked
    daemon in its own session, then dies (or the tree stops): its supervisor, a
    subreaper, kills every one of them; none survives as an orphan."""
    app = start_tree(Supervisor("root", children=[
        Supervisor("mid", children=[child("f", Forker), child("other", Target)])]))
    worker = app.call("mid/f", "pid")
    pids = app.call("mid/f", "spawn")
    assert len(pids) == 3 and all(psutil.pid_exists(p) for p in pids)
    if how == "self-kill":
        with pytest.raises(WorkerCrashed):
            app.call("mid/f", "die")
    elif how == "sigkill":
        os.kill(worker, signal.SIGKILL)
    else:
        app.stop()
    assert wait_gone(pids + [worker], 2.0) == []
    if how != "tree-stop":
        events.wait_count("restarted", 1, "mid/f")
        assert app.call("mid/f", "pid") != worker
        assert app.call("mid/other", "ping") == "pong"


# ------------------------------------------------------------------ descriptors
CALLER_SCRIPT = textwrap.dedent("""
    import json, os, resource
    import supervisor
    from supervisor import Supervisor, WorkerError, child
    from tests.faults._workers import Target

    app = supervisor.start(Supervisor("root", children=[Supervisor(
        "jobs", strategy="simple_one_for_one",
        template=child("job", Target, restart="temporary"))]))
    out = {}
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 6, hard))
        started = []
        for n in range(64):
            job = app.start_child("jobs")
            started.append(job)
            try:
                app.call(f"jobs/{job}", "ping", timeout=10)
            except WorkerError as exc:
                out["error"] = [type(exc).__name__, exc.category, str(exc)]
                break
        out["calls"] = len(started) - 1
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        out["after"] = [app.call(f"jobs/{job}", "ping", timeout=10) for job in started]
    finally:
        app.stop()
    print(json.dumps(out))
""")


def test_the_caller_running_out_of_descriptors_is_a_resource_error():
    """In a subprocess whose RLIMIT_NOFILE is lowered after the tree started, opening one
    more channel fails with WorkerError(resource_error), at once; raised again, every
    worker answers, the one that could not be reached included."""
    result = subprocess.run([sys.executable, "-c", CALLER_SCRIPT], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    out = json.loads(result.stdout.splitlines()[-1])
    kind, category, message = out["error"]
    assert (kind, category) == ("WorkerError", "resource_error")
    assert re.search(r"^cannot open a channel to 'jobs/job-\d+': \[Errno 24\] Too many open "
                     r"files", message)
    assert out["calls"] >= 1
    assert out["after"] == ["pong"] * (out["calls"] + 1)


def pid_of(app, path: str) -> int:
    parent, _, cid = path.rpartition("/")
    return {i.id: i.pid for i in app.which_children(parent)}[cid]


def fd_numbers(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def no_free_fd_below(pid: int) -> int:
    """The lowest fd number not in use in `pid`: as RLIMIT_NOFILE, no new fd fits."""
    used = fd_numbers(pid)
    return next(n for n in range(len(used) + 1) if n not in used)


def starts_under_a_limit(app, path: str, spares: range) -> list[tuple[int, str, set]]:
    """start_child under supervisor `path` with its RLIMIT_NOFILE set to leave `spare`
    descriptors free, for each spare: (spare, job id or "StartError", fds it left behind)."""
    sup = psutil.Process(pid_of(app, path))
    # A first request imports the request handlers in that supervisor (a file to open):
    # done here, so that what runs out below is the start's descriptors only (the lazy
    # import has its own test, test_a_supervisor_at_its_limit_answers_its_first_request).
    app.which_children(path)
    limit = sup.rlimit(psutil.RLIMIT_NOFILE)
    outcomes = []
    try:
        for spare in spares:
            before = fd_numbers(sup.pid)
            sup.rlimit(psutil.RLIMIT_NOFILE, (no_free_fd_below(sup.pid) + spare, limit[1]))
            try:
                job = app.start_child(path)
            except StartError as exc:
                assert exc.category == "resource_error"
                assert re.search(r"failed to start \(resource_error\): OSError: cannot start "
                                 r"the process: \[Errno 24\] Too many open files", str(exc))
                outcomes.append((spare, "StartError", fd_numbers(sup.pid) - before))
                continue
            assert app.call(f"{path}/{job}", "ping") == "pong"
            outcomes.append((spare, job, set()))
    finally:
        sup.rlimit(psutil.RLIMIT_NOFILE, limit)
    assert sup.is_running() and sup.pid == pid_of(app, path)
    return outcomes


def test_a_supervisor_that_cannot_fork_answers_start_errors_and_survives(app, events):
    """The simple_one_for_one supervisor's RLIMIT_NOFILE is lowered step by step (0 to 9
    free descriptors): each start_child either works or fails with
    StartError(resource_error) naming EMFILE. The supervisor survives (same pid), the
    children it could start serve, and once the limit is raised again start_child works."""
    outcomes = starts_under_a_limit(app, "jobs", range(10))
    assert outcomes[0][1] == "StartError"
    started = [job for _, job, _ in outcomes if job != "StartError"]
    assert started
    for job in started:
        assert app.call(f"jobs/{job}", "ping") == "pong"
    job = app.start_child("jobs")
    assert app.call(f"jobs/{job}", "ping") == "pong"
    assert all(m["category"] == "resource_error" for m in events.named("start_failed"))
    assert events.named("exited", "jobs") == []


def test_a_start_that_runs_out_of_descriptors_leaks_none(app):
    """Whatever step of a start runs out of descriptors (output pipes, control
    socketpair, pidfd), the failed start leaves no descriptor behind in the supervisor."""
    outcomes = starts_under_a_limit(app, "jobs", range(8))
    leaks = {spare: fds for spare, _, fds in outcomes if fds}
    assert leaks == {}


def test_a_supervisor_at_its_limit_answers_its_first_request(app):
    """A nested supervisor with no descriptor left still answers requests (the first one
    included): which_children needs no new descriptor."""
    sup = psutil.Process(pid_of(app, "jobs"))
    limit = sup.rlimit(psutil.RLIMIT_NOFILE)
    sup.rlimit(psutil.RLIMIT_NOFILE, (no_free_fd_below(sup.pid), limit[1]))
    try:
        assert app.which_children("jobs") == []
    finally:
        if sup.is_running():
            sup.rlimit(psutil.RLIMIT_NOFILE, limit)
    assert sup.is_running()


SUPERVISOR_FD_BUG = (
    "supervisor/wire/framing.py recv_some() reports an SCM_RIGHTS fd the kernel could not "
    "install (EMFILE: MSG_CTRUNC with fewer fds than room) as 'more than 16 file "
    "descriptors arrived in one read' (ProtocolError); SupervisorProcess._on_parent() then "
    "takes its parent for hostile and shuts down, and shutdown itself crashes "
    "(tree.slot._wait() opens a new selector: OSError EMFILE), so the process dies with a "
    "traceback (exit 70; the root: the whole tree). Fix: tell EMFILE truncation from a "
    "peer's excess fds (fewer fds than room = not installed), answer that OpenChannel with "
    "a resource_error ErrorResponse and carry on; and stop children without allocating fds "
    "(selectors.PollSelector needs none).")


@pytest.mark.parametrize("target", [
    pytest.param("", id="root"),
    pytest.param("sup", id="nested"),
])
def test_a_supervisor_out_of_descriptors_refuses_a_channel_and_survives(app, events, target,
                                                                       raw_channel):
    """A supervisor with no descriptor left when a call channel passes through it (the fd
    rides in SCM_RIGHTS) refuses that channel with WorkerError(resource_error) and keeps
    running; raised again, the channel opens."""
    pid = app.pid if target == "" else pid_of(app, target)
    proc = psutil.Process(pid)
    limit = proc.rlimit(psutil.RLIMIT_NOFILE)
    proc.rlimit(psutil.RLIMIT_NOFILE, (no_free_fd_below(pid), limit[1]))
    try:
        with pytest.raises(WorkerError) as info:
            raw_channel(app, "sup/x", timeout=5)
        assert info.value.category == "resource_error"
        assert proc.is_running()
    finally:
        if proc.is_running():
            proc.rlimit(psutil.RLIMIT_NOFILE, limit)
    assert app.wait(timeout=0) is None
    assert app.call("sup/x", "ping") == "pong"
    assert events.named("exited") == []


def test_a_worker_out_of_descriptors_refuses_a_channel_and_keeps_serving(app, events,
                                                                        raw_channel):
    """A worker with no descriptor left refuses one more channel with
    WorkerError(resource_error) and keeps serving the callers it has."""
    pid = app.call("sup/x", "pid")  # the App's shared channel to it is open now
    proc = psutil.Process(pid)
    limit = proc.rlimit(psutil.RLIMIT_NOFILE)
    proc.rlimit(psutil.RLIMIT_NOFILE, (no_free_fd_below(pid), limit[1]))
    try:
        with pytest.raises(WorkerError) as info:
            raw_channel(app, "sup/x", timeout=5)
        assert info.value.category == "resource_error"
        assert type(info.value).__module__ == "supervisor.errors"
    finally:
        if proc.is_running():
            proc.rlimit(psutil.RLIMIT_NOFILE, limit)
    assert app.call("sup/x", "pid") == pid
    assert events.named("exited", "sup/x") == []


# ------------------------------------------------------------------ the matrix as input
def test_a_huge_retry_budget_does_not_slow_starts(start_tree):
    """"Retry (almost) forever" is a legitimate row: max_retries=1_000_000 must not make a
    tree of four workers slow to start (normally ~0.1 s; the bound is generous)."""
    forever = {"connection_error": {"max_retries": 1_000_000}}
    started = time.monotonic()
    app = start_tree(Supervisor("root", errors=forever, children=[
        child(f"w{n}", Target) for n in range(4)]))
    took = time.monotonic() - started
    assert app.call("w0", "ping") == "pong"
    assert took < 2.0, f"4 workers took {took:.1f}s to start"
