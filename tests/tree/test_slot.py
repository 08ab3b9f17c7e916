"""Starting a child: what `await_ready` does with the frames that come with the Ready."""

from __future__ import annotations

import socket

from supervisor.specs import child
from supervisor.tree.launch import await_ready
from supervisor.tree.slot import ChildSlot
from supervisor.wire import messages as P
from supervisor.wire.framing import FrameReader
from workers.echo import Echo


def test_an_exit_read_together_with_the_ready_is_not_lost():
    # A worker whose run() raises at once sends Ready and then Exit; on a loaded machine
    # the supervisor reads both in one recv. The Exit names the failure (python_error):
    # dropping it made the exit look like an unexplained crash (connection_error).
    ours, theirs = socket.socketpair()
    slot = ChildSlot(spec=child("svc", Echo), path="svc", matrix=None, launcher=None)
    slot.ctrl, slot.reader = ours, FrameReader(P.CONTROL_CODEC)
    exit_msg = P.Exit(reason="python_exception", category="python_error",
                      type="RuntimeError", message="service loop failed")
    theirs.sendall(P.CONTROL_CODEC.encode(P.Ready(pid=1)) + P.CONTROL_CODEC.encode(exit_msg))
    seen = []
    try:
        assert await_ready(slot, lambda _slot, msg: seen.append(msg)) is None
    finally:
        ours.close()
        theirs.close()
    assert seen == [exit_msg]
