"""What a supervisor says upward: to its parent, or to whoever asked it something.

    send(msg)        Ready, StartFailed, Events, the Exit: to the parent's channel, or (the
                     service root, which has no parent) to `deliver`
    emit(...)        a telemetry Event about one child, with the common metadata
    relay(origin, m) an answer to a requester: the parent's channel or a control client
    reply_error(...) an ErrorResponse (a refusal, or a bug turned into an answer)

Sends never block the supervisor's loop on a requester that went away: a closed or full
channel drops the message (its reader is gone, or a control client that stopped reading is
disconnected by the control server).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import Any

from ..wire import messages as P
from ..wire.framing import send_frame
from .slot import ChildSlot

__all__ = ["Uplink"]


class Uplink:
    """`parent` is the channel to the parent (None for the service root, whose messages go
    to `deliver`); `control` is the service root's control server (its clients' answers go
    through it)."""

    def __init__(self, path: str, parent: socket.socket | None) -> None:
        self.path = path
        self.parent = parent
        self.deliver: Callable[[Any], None] | None = None
        self.control: Any = None

    def send(self, msg: Any) -> None:
        if self.deliver is not None:
            self.deliver(msg)
            return
        try:
            send_frame(self.parent, P.CONTROL_CODEC.encode(msg))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the parent is gone; PR_SET_PDEATHSIG or its EOF ends us soon

    def emit(self, name: str, slot: ChildSlot, *, group: str = "child",
             **metadata: Any) -> None:
        meta = {"path": slot.path, "id": slot.id, "pid": slot.pid, "supervisor": self.path,
                "reason": None, "category": None, "restarts": slot.restarts}
        meta.update(metadata)
        self.send(P.Event(name=["supervisor", group, name],
                          measurements={"time": time.time()}, metadata=meta))

    def relay(self, origin: socket.socket, msg: Any) -> None:
        if self.control is not None and self.control.owns(origin):
            self.control.send(origin, msg)
            return
        try:
            send_frame(origin, P.CONTROL_CODEC.encode(msg))
        except OSError:
            # The requester left (a dropped control client's socket is closed: EBADF; a
            # parent that went away: EPIPE). Nobody waits for this answer.
            pass

    def reply_error(self, origin: socket.socket, rid: int, kind: str, message: str,
                    **fields: Any) -> None:
        self.relay(origin, P.ErrorResponse(id=rid, kind=kind, message=message, fields=fields))
