"""systemd's notification protocol for `run` under a `Type=notify` unit (sd_notify).

When systemd starts a service with `Type=notify` it passes the path of a datagram socket
in ``NOTIFY_SOCKET``; the service sends it ``KEY=value`` lines. `run` sends:

    READY=1 and STATUS=...   once the whole tree is up (every child's init returned)
    STATUS=...               when the tree starts stopping, with STOPPING=1
    WATCHDOG=1               every half of ``WATCHDOG_USEC`` (when systemd asks for a
                             watchdog), from the supervisor's own loop: a loop that stalls
                             stops pinging, and systemd acts on it

The protocol is one datagram per notification; a socket name starting with "@" is in the
abstract namespace. Without ``NOTIFY_SOCKET`` nothing is sent. A notification that cannot
be sent is dropped (logged once): systemd being gone must not stop the tree.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

from loguru import logger

__all__ = ["Notifier"]


class Notifier:
    """Sends notifications to ``NOTIFY_SOCKET`` of `environ` (none when it is unset)."""

    def __init__(self, environ: Mapping[str, str] = os.environ) -> None:
        address = environ.get("NOTIFY_SOCKET", "")
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self.sock: socket.socket | None = None
        self._warned = False
        if self.address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)
        self.watchdog = _watchdog_interval(environ)

    def send(self, **fields: object) -> None:
        if self.sock is None:
            return
        data = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            self.sock.sendto(data, self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                logger.warning("systemd notification to {} failed: {} (further failures are "
                               "not logged)", self.address.replace("\0", "@"), exc)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _watchdog_interval(environ: Mapping[str, str]) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when systemd
    asked for none (or asked another process: WATCHDOG_PID)."""
    usec = environ.get("WATCHDOG_USEC")
    pid = environ.get("WATCHDOG_PID")
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        return max(int(usec), 1) / 2e6
    except ValueError:
        return None
