"""The HTTP server's way into the tree: a short control connection to the root's own socket.

A request that needs the root's loop (a fresh status, a restart button) is sent the way any
control client sends it, over the control socket, so the loop serves it between its other
events and the HTTP thread never touches the loop's state. One connection per HTTP
request: the root broadcasts every event to every client and drops one that does not read,
so a connection is opened, used for its few requests and closed.

Deliberately not an `App` (`supervisor.connect`): an App starts a reader thread that runs
telemetry handlers and the default reporter, which log; a thread of the service root that
logs can hold a lock at the moment the loop forks a child. This client only sends and
reads frames on a socket it owns.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

import msgspec

from ..errors import error_from_wire
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.trust import peer_pid

__all__ = ["RootClient"]


class RootClient:
    """A blocking control connection to the service root this process is (a context
    manager). `request(msg)` returns the answer's value or raises the error it carries;
    events that arrive meanwhile are skipped. Raises OSError when the socket cannot be
    reached, TimeoutError when no answer comes within `timeout` seconds."""

    def __init__(self, path: Path, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            self.sock.settimeout(timeout)
            self.sock.connect(str(path))
            # Our own root listens there, nobody else: a socket swapped under the path
            # would be answered by another process.
            if peer_pid(self.sock) != os.getpid():
                raise ConnectionRefusedError(f"{path} is not served by this process")
        except BaseException:
            self.sock.close()
            raise
        self.reader = FrameReader(P.CONTROL_CODEC)
        self.ids = itertools.count(1)
        self.backlog: list[Any] = []

    def request(self, msg: Any, timeout: float | None = None) -> Any:
        """The answer to `msg` within `timeout` seconds (default: the client's)."""
        rid = next(self.ids)
        send_frame(self.sock, P.CONTROL_CODEC.encode(msgspec.structs.replace(msg, id=rid)))
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while True:
            while self.backlog:
                answer = self.backlog.pop(0)
                match answer:
                    case P.Response(id=got, value=value) if got == rid:
                        return value
                    case P.ErrorResponse(id=got, kind=kind, message=text, fields=fields) \
                            if got == rid:
                        raise error_from_wire(kind, text, **fields)
                    case _:
                        pass  # an event, or the answer to an earlier request
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no answer from the root within {timeout:g}s")
            self.sock.settimeout(remaining)
            msgs, _, eof = recv_some(self.sock, self.reader, bufsize=65536)
            self.backlog.extend(msgs)
            if eof and not self.backlog:
                raise ConnectionResetError("the root closed the control connection")

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RootClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


