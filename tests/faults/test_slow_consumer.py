"""Slow consumers: a caller that pipelines calls and never reads the replies.

A worker owes such a caller more and more replies; past 4 MiB it stops reading that
caller (backpressure) instead of buffering without bound, and keeps serving everyone
else. A control-socket client that stops reading is disconnected: the supervisor never
waits for it.
"""

from __future__ import annotations

import select
import socket
import time

import psutil
import pytest

import supervisor
from supervisor import Supervisor, child
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader

from ._workers import Target

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

STALL = 1.0  # no room to write for this long: the worker stopped reading us
CAP = 64 * 1024 * 1024  # what an unbounded worker would have swallowed by now


def flood(sock: socket.socket, payload: bytes, batch: int) -> tuple[int, int]:
    """Pipeline echo calls of `payload` without reading, until the peer stops taking
    them (no room for STALL seconds) or CAP bytes went out; returns (calls, bytes)."""
    sock.setblocking(False)
    calls = sent = 0
    pending = b""
    while sent < CAP:
        if not pending:
            pending = P.CALL_CODEC.encode_many(
                P.Call(id=calls + n + 1, method="echo", args=(payload,)) for n in range(batch))
            calls += batch
        try:
            n = sock.send(pending)
        except BlockingIOError:
            _, writable, _ = select.select([], [sock], [], STALL)
            if not writable:
                break
            continue
        sent += n
        pending = pending[n:]
    return calls - (1 if pending else 0) * batch, sent


@pytest.mark.parametrize("payload, batch", [
    pytest.param(b"x" * 65536, 1, id="64KiB-replies"),
    pytest.param(b"x" * 16, 2000, id="tiny-replies"),
])
def test_a_caller_that_never_reads_holds_up_nobody(start_tree, events, raw_channel,
                                                   payload, batch):
    """A raw caller floods the worker with calls and reads nothing: the worker stops
    reading it once it owes ~4 MiB (we could not send more than a bounded amount, and its
    RSS grew by a bounded amount), while another caller's calls, the supervisor's
    requests and the worker's heartbeats are all answered at once. When the slow caller
    finally reads, it gets every reply, in order: the worker resumed it."""
    app = start_tree(Supervisor("root", children=[
        child("w", Target, heartbeat=0.2, heartbeat_timeout=1.0)]))
    pid = app.call("w", "pid")
    rss_before = psutil.Process(pid).memory_info().rss
    slow = raw_channel(app, "w")
    calls, sent = flood(slow.sock, payload, batch)
    assert sent < 16 * 1024 * 1024, f"the worker took {sent} bytes without being read"

    # The worker now has a caller it will not read; everyone else is served at once.
    for n in range(20):
        started = time.monotonic()
        assert app.call("w", "echo", f"other-{n}", timeout=2) == f"other-{n}"
        assert time.monotonic() - started < 1.0
    assert [i.pid for i in app.which_children()] == [pid]
    grown = (psutil.Process(pid).memory_info().rss - rss_before) / (1 << 20)
    assert grown < 16, f"the worker's RSS grew by {grown:.1f} MiB"
    assert events.named("exited", "w") == []  # heartbeats kept passing through the stall

    # Reading at last: every reply comes, in order (the paused caller was resumed).
    reader = FrameReader(P.CALL_CODEC)
    got = 0
    deadline = time.monotonic() + 30
    while got < calls:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"{got} of {calls} replies"
        ready, _, _ = select.select([slow.sock], [], [], remaining)
        if not ready:
            continue
        for reply in reader.feed(slow.sock.recv(1 << 20)):
            got += 1
            assert (reply.id, reply.value) == (got, payload)
    assert app.call("w", "pid") == pid


SERVICE_TREE = """
[tree]
id = "deaf"

[[tree.children]]
id = "w"
worker = "tests.faults._workers:Target"
"""


RELAY_BUG = (
    "supervisor/tree/process.py SupervisorProcess._relay() catches only BrokenPipeError and "
    "ConnectionResetError: an answer for a control client that was already dropped goes to "
    "a closed socket (fileno -1), OSError EBADF escapes the loop and the service root exits "
    "('error: [Errno 9] Bad file descriptor', exit 2): the whole tree dies. Reached when "
    "{how}. Fix: drop answers for clients the ControlServer no longer owns (or catch "
    "OSError in _relay), and stop handling a client's decoded requests once it is dropped.")


def test_a_control_client_that_never_reads_is_dropped(service):
    """A control-socket client sends requests and never reads the answers: once its
    socket buffer is full the supervisor disconnects it rather than wait, and keeps
    answering other clients and serving calls (same pid)."""
    svc = service(SERVICE_TREE)
    request = P.CONTROL_CODEC.encode(P.GetStatus(id=1, path=""))
    batch = request * 1000
    with svc.connect() as deaf:
        deaf.setblocking(False)
        dropped = False
        deadline = time.monotonic() + 30
        while not dropped:
            assert time.monotonic() < deadline, "the deaf client was never dropped"
            try:
                deaf.send(batch)
            except BlockingIOError:
                # Our requests wait in our buffer while the server does not read: is it
                # gone? Only when it closed us does EOF / reset show through here.
                select.select([], [deaf], [], 0.5)
            except (BrokenPipeError, ConnectionResetError):
                dropped = True
    with supervisor.connect(svc.socket) as app:
        assert app.pid == svc.proc.pid
        assert [i.id for i in app.which_children()] == ["w"]
        assert app.call("w", "ping") == "pong"


NESTED_TREE = """
[tree]
id = "hangups"

[[tree.children]]
id = "sub"
type = "supervisor"

  [[tree.children.children]]
  id = "w"
  worker = "tests.faults._workers:Target"
"""


def test_a_control_client_that_hangs_up_before_its_answer_is_forgotten(service):
    """Clients that send a request for a nested supervisor and hang up at once (a killed
    `supervisor status`, a client timeout): their answers have nobody to go to and are
    dropped; the supervisor survives every one of them."""
    svc = service(NESTED_TREE)
    request = P.CONTROL_CODEC.encode(P.WhichChildren(id=1, path="sub"))
    for n in range(1000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            try:
                sock.connect(svc.socket)  # blocking: a full backlog waits for accept()
                sock.sendall(request)
            except OSError as exc:  # refused: nobody listens any more
                raise AssertionError(f"after {n} hang-ups: {exc}; exit status "
                                     f"{svc.proc.poll()}") from exc
    with supervisor.connect(svc.socket) as app:
        assert app.pid == svc.proc.pid
        assert [i.id for i in app.which_children("sub")] == ["w"]
