"""The client's half of the control socket: finding a running tree and connecting to it.

The checks a client makes before it sends anything are in `wire.trust`; `supervisor.connect`
runs them between `find_socket` and the first request.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
from pathlib import Path

from ..errors import ConfigError
from ..wire.trust import Trust, check_directory, default_dir, is_live

__all__ = ["find_socket", "dial"]


def find_socket(explicit: str | None = None, trust: Trust | None = None) -> Path:
    """The socket a control command talks to: `explicit`, else the lone live one in the
    default directory. Raises ConfigError when there is none, or several, and
    UntrustedServer when the default directory is not private to us (or to root / the
    server uid in `trust`): its sockets are then not even probed. The caller still checks
    the socket it picks (`wire.trust.check_socket`) before connecting."""
    if explicit:
        return Path(explicit)
    trust = trust or Trust.of()
    directory = default_dir()
    try:
        check_directory(directory, trust)
    except FileNotFoundError:
        live = []
    else:
        live = sorted(p for p in _own_sockets(directory, trust) if is_live(p))
    if len(live) == 1:
        return live[0]
    if not live:
        raise ConfigError(f"no running tree found in {directory}; start one with "
                          "'python -m supervisor run TREE.toml' or pass --socket",
                          field="socket")
    names = ", ".join(p.name for p in live)
    raise ConfigError(f"several trees run in {directory} ({names}); pick one with --socket",
                      field="socket")


def _own_sockets(directory: Path, trust: Trust) -> list[Path]:
    # Only sockets the server uid owns are candidates: anything else in a private
    # directory was not made by a tree we would talk to.
    found = []
    with os.scandir(directory) as entries:
        for entry in entries:
            if not entry.name.endswith(".sock"):
                continue
            info = entry.stat(follow_symlinks=False)
            if stat.S_ISSOCK(info.st_mode) and info.st_uid == trust.server:
                found.append(Path(entry.path))
    return found


def dial(path: Path, timeout: float) -> socket.socket:
    """A connected, blocking AF_UNIX socket to `path`.

    A full listen backlog is waited out within `timeout`, not failed at once: a blocking
    connect waits in the kernel until the server accepts, woken when room frees up
    (SO_SNDTIMEO bounds that wait; Python's own socket timeout would make the connect
    non-blocking, which fails with EAGAIN at once). Raises TimeoutError when the backlog
    stays full that long, OSError (ECONNREFUSED, ENOENT...) when nobody listens.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _send_timeout(sock, max(timeout, 0.001))
        try:
            sock.connect(str(path))
        except BlockingIOError:  # EAGAIN once SO_SNDTIMEO ran out
            raise TimeoutError(errno.ETIMEDOUT, f"the control socket {path} did not accept "
                               f"within {timeout:g}s (its listen backlog stayed full)"
                               ) from None
        _send_timeout(sock, 0.0)  # sends block as before: the App's writes are framed
    except BaseException:
        sock.close()
        raise
    return sock


def _send_timeout(sock: socket.socket, seconds: float) -> None:
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO,
                    struct.pack("ll", whole, int((seconds - whole) * 1_000_000)))
