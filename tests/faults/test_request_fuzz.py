"""Random requests to supervisors: none may crash one (issue 11).

Two doors, both fuzzed with Hypothesis (bounded example counts, no example database):

- the public API: `start_child`, `terminate_child`, `restart_child`, `delete_child`,
  `which_children`, `count_children` with random paths, ids, specs, args and kwargs, well
  typed or not. Each call returns or raises a `SupervisorError` that is a refusal (not
  the structural guard's answer to a bug); the tree stays up (same root, still answering).
- a service's control socket: frames built from `supervisor.wire.messages`'s request Structs
  with random field values. A well-typed request is answered (a Response or an
  ErrorResponse with its id, never the guard's answer to a bug); an ill-typed one does not
  decode, so that client is dropped (the documented answer to a bad frame). The service
  survives every one and logs no bug report.

Requests that stop or change the tree on purpose when well formed (Stop, Shutdown, a
ReportFailure with a real category, a SignalChild with a real signal) are left out: any
same-uid client may send them.
"""

from __future__ import annotations

import pickle
import socket

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import supervisor
from strategies.matrix import ErrorCategory
from supervisor import Supervisor, SupervisorError, child
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader, recv_some, send_frame

from ._workers import Target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FUZZ = settings(max_examples=300, deadline=None, database=None, derandomize=False,
                suppress_health_check=list(HealthCheck))

PATHS = ["", "a", "jobs", "sub", "sub/b", "jobs/job-1", "nope", "a/x", "sub/nope"]
IDS = ["a", "b", "jobs", "sub", "job-1", "job-2", "c1", "dsub", "nope", ""]
CATEGORIES = [str(c) for c in ErrorCategory]

ill_typed = st.one_of(st.none(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.binary(max_size=4),
                      st.lists(st.integers(-2**63, 2**63 - 1), max_size=2), st.booleans())
paths = st.one_of(st.sampled_from(PATHS), st.text(max_size=10))
child_ids = st.one_of(st.sampled_from(IDS), st.text(max_size=8))
values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.floats()
    | st.text(max_size=6) | st.binary(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner,
                                                                 max_size=3),
    max_leaves=6)
arg_lists = st.lists(values, max_size=3)
kwarg_maps = st.none() | st.dictionaries(st.text(max_size=6), values, max_size=3)


def specs():
    return st.sampled_from([
        child("c1", Target),
        child("c2", Target, restart="transient"),
        child("c3", Target, restart="temporary", shutdown="brutal_kill"),
        child("a", Target),
        child("s", Target, restart="transient", significant=True),
        Supervisor("dsub", children=[child("x", Target)]),
        Supervisor("dsimple", strategy="simple_one_for_one", template=child("t", Target)),
    ])


# ------------------------------------------------------------------ the public API
def api_calls():
    """(name, args, kwargs) of one App call, well typed or not."""
    path = st.one_of(paths, paths, paths, ill_typed)  # mostly well typed: deeper paths
    cid = st.one_of(child_ids, child_ids, ill_typed)
    spec = st.one_of(st.none(), specs(), ill_typed, st.dictionaries(st.text(max_size=3),
                                                                    values, max_size=2),
                     st.builds(object))
    args = st.one_of(arg_lists, arg_lists, ill_typed, st.text(max_size=3))
    kwargs = st.one_of(kwarg_maps, ill_typed,
                       st.dictionaries(st.integers(), st.integers(), min_size=1, max_size=2))
    return st.one_of(
        st.tuples(st.just("start_child"), st.tuples(path), st.fixed_dictionaries(
            {"args": args, "kwargs": kwargs})),
        st.tuples(st.just("start_child"), st.tuples(path, spec), st.just({})),
        *(st.tuples(st.just(name), st.tuples(path, cid), st.just({}))
          for name in ("terminate_child", "restart_child", "delete_child")),
        *(st.tuples(st.just(name), st.tuples(path), st.just({}))
          for name in ("which_children", "count_children")),
    )


API_TREE = Supervisor("root", max_restarts=1000, max_seconds=1, children=[
    child("a", Target),
    Supervisor("jobs", strategy="simple_one_for_one", max_children=4,
               template=child("job", Target, restart="transient")),
    Supervisor("sub", children=[child("b", Target)]),
])


def test_random_requests_through_the_public_api_never_crash_a_supervisor(start_tree):
    app = start_tree(API_TREE)
    root = app.pid
    tally = {"ok": 0, "error": 0}

    @FUZZ
    @given(st.lists(api_calls(), min_size=1, max_size=4))
    def run(calls):
        for name, args, kwargs in calls:
            try:
                getattr(app, name)(*args, **kwargs)
                tally["ok"] += 1
            except SupervisorError as exc:
                # A refusal, never the guard's answer to a bug in a handler.
                assert "failed to handle" not in str(exc), (name, args, kwargs)
                tally["error"] += 1
            assert app.wait(timeout=0) is None, (name, args, kwargs)

    run()
    assert tally["error"] > tally["ok"] > 0
    assert app.pid == root and app.wait(timeout=0) is None
    assert {i.id for i in app.which_children()} <= {"a", "jobs", "sub", "c1", "c2", "c3",
                                                    "dsub", "dsimple"}
    print(f"\npublic API: {tally}")


# ------------------------------------------------------------------ the control socket
SERVICE_TREE = """
[tree]
id = "fuzzed-requests"
max_restarts = 1000
max_seconds = 1

[[tree.children]]
id = "a"
worker = "tests.faults._workers:Target"

[[tree.children]]
id = "jobs"
type = "supervisor"
strategy = "simple_one_for_one"
max_children = 4

  [tree.children.template]
  id = "job"
  worker = "tests.faults._workers:Target"
  restart = "transient"

[[tree.children]]
id = "sub"
type = "supervisor"

  [[tree.children.children]]
  id = "b"
  worker = "tests.faults._workers:Target"
"""

PICKLED = [pickle.dumps(x) for x in (
    child("c1", Target), child("a", Target), {"id": "x"}, 42, "spec", [1, 2],
    child("s", Target, restart="transient", significant=True))]
spec_blobs = st.one_of(
    st.none(), st.sampled_from(PICKLED), st.binary(max_size=48),
    st.sampled_from(PICKLED).flatmap(lambda b: st.integers(0, len(b) - 1).map(
        lambda n: b[:n])))  # cut short


def control_requests():
    """A request Struct with random, well-typed field values (id 0: set when sent)."""
    return st.one_of(
        st.builds(P.WhichChildren, id=st.just(0), path=paths),
        st.builds(P.CountChildren, id=st.just(0), path=paths),
        st.builds(P.GetStatus, id=st.just(0), path=paths),
        st.builds(P.OpenChannel, id=st.just(0), path=paths),  # its fd missing
        st.builds(P.StartChild, id=st.just(0), path=paths, spec=spec_blobs, args=arg_lists,
                  kwargs=kwarg_maps),
        st.builds(P.TerminateChild, id=st.just(0), path=paths, child_id=child_ids),
        st.builds(P.RestartChild, id=st.just(0), path=paths, child_id=child_ids),
        st.builds(P.DeleteChild, id=st.just(0), path=paths, child_id=child_ids),
        st.builds(P.ReportFailure, id=st.just(0), path=paths, child_id=child_ids,
                  category=st.text(max_size=12).filter(lambda c: c not in CATEGORIES),
                  reason=st.text(max_size=8)),
        # No signal has a number this high: refused, never sent to a child.
        st.builds(P.SignalChild, id=st.just(0), path=paths, child_id=child_ids,
                  signal=st.integers(min_value=100, max_value=2**31)),
        # A replacement is a rolling restart's step: the child keeps running (a new pid).
        st.builds(P.ReplaceChild, id=st.just(0), path=paths, child_id=child_ids),
        st.builds(P.RefreshCode, id=st.just(0), path=paths),
        # The file is unchanged: a reload is nothing to do. ApplySpec is a parent's only.
        st.builds(P.Reload, id=st.just(0), dry_run=st.booleans()),
        st.builds(P.ApplySpec, id=st.just(0), spec=spec_blobs.filter(lambda b: b is not None),
                  paths=st.lists(st.text(max_size=6), max_size=2)),
    )


def ill_typed_requests():
    """A request whose field values are not of the declared types: it cannot decode."""
    return st.one_of(
        st.builds(P.WhichChildren, id=st.just(0), path=ill_typed.filter(
            lambda v: not isinstance(v, str))),
        st.builds(P.TerminateChild, id=st.just(0), path=st.just(""),
                  child_id=ill_typed.filter(lambda v: not isinstance(v, str))),
        st.builds(P.StartChild, id=st.just(0), path=st.just("jobs"), spec=st.integers(-2**63, 2**63 - 1),
                  args=arg_lists),
        st.builds(P.StartChild, id=st.just(0), path=st.just("jobs"), kwargs=st.dictionaries(
            st.integers(-2**63, 2**63 - 1), st.integers(-2**63, 2**63 - 1), min_size=1, max_size=2)),
    )


class Client:
    """One control-socket connection: sends a request, reads until its own answer
    (skipping the events every client is sent)."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(20)
        self.sock.connect(path)
        self.reader = FrameReader(P.CONTROL_CODEC)
        self.next_id = 1

    def send(self, msg) -> int:
        rid, self.next_id = self.next_id, self.next_id + 1
        send_frame(self.sock, P.CONTROL_CODEC.encode(msgspec.structs.replace(msg, id=rid)))
        return rid

    def answer(self, rid: int):
        while True:
            msgs, _, eof = recv_some(self.sock, self.reader)
            for msg in msgs:
                if isinstance(msg, P.Response | P.ErrorResponse) and msg.id == rid:
                    return msg
            if eof:
                return None

    def close(self) -> None:
        self.sock.close()


def test_random_control_frames_are_answered_and_never_crash_the_service(service):
    svc = service(SERVICE_TREE)
    clients = [Client(svc.socket)]
    tally = {"Response": 0, "ErrorResponse": 0, "dropped": 0}
    try:
        @FUZZ
        @given(st.lists(st.one_of(control_requests(), control_requests(), control_requests(),
                                  ill_typed_requests().map(lambda m: ("bad", m))),
                        min_size=1, max_size=4))
        def run(requests):
            for msg in requests:
                if isinstance(msg, tuple):  # ill typed: that client is dropped
                    bad = Client(svc.socket)
                    clients.append(bad)
                    bad.answer(bad.send(msg[1]))  # returns at EOF: we were dropped
                    tally["dropped"] += 1
                    continue
                answer = clients[0].answer(clients[0].send(msg))
                assert answer is not None, f"no answer to {msg!r}"
                assert "failed to handle" not in getattr(answer, "message", ""), answer
                tally[type(answer).__name__] += 1
                assert svc.proc.poll() is None, msg

        run()
    finally:
        for c in clients:
            c.close()
    print(f"control socket requests: {tally}")
    assert tally["ErrorResponse"] > tally["Response"] > 0 and tally["dropped"] > 0
    assert svc.proc.poll() is None
    with supervisor.connect(svc.socket) as app:
        assert app.pid == svc.proc.pid
        assert {i.id for i in app.which_children()} <= {"a", "jobs", "sub", "c1"}
    assert not [line for line in svc.lines if "bug:" in line]


def test_a_bad_start_child_and_a_bad_report_over_the_control_socket_are_refused(service):
    """The two requests that used to end a service root."""
    svc = service(SERVICE_TREE)
    client = Client(svc.socket)
    try:
        answers = [client.answer(client.send(msg)) for msg in (
            P.StartChild(id=0, path="", spec=b"\x80\x05not a pickle"),
            P.StartChild(id=0, path="", spec=pickle.dumps({"id": "x"})),
            P.ReportFailure(id=0, path="", child_id="a", category="bogus", reason="x"),
            P.WhichChildren(id=0, path=""),
        )]
    finally:
        client.close()
    assert [(a.kind, a.fields.get("field")) for a in answers[:3]] == [
        ("ConfigError", "spec"), ("ConfigError", "spec"), ("ConfigError", "category")]
    assert answers[0].message.startswith("spec: cannot decode it (UnpicklingError")
    assert answers[2].message.startswith("category: expected one of initialization_error, ")
    assert [i["id"] for i in answers[3].value] == ["a", "jobs", "sub"]
    assert svc.proc.poll() is None
