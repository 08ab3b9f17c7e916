"""The control socket of a tree run by `python -m supervisor run`.

    clients (CLI commands, supervisor.connect) ──AF_UNIX──▶ root supervisor loop
        requests (+fds for OpenChannel) ▶            ◀ Responses, Events, the root's Exit

Where: ``--socket PATH``, else ``$XDG_RUNTIME_DIR/supervisor/<root id>.sock``, else
``<tmp>/supervisor-<uid>/<root id>.sock``. The directory is created 0700 and must be ours
and private; the socket is 0600; every connection's peer uid (SO_PEERCRED) must be ours.
A socket file left by a dead run (connecting is refused) is replaced; a live one means a
tree already runs there, and a second `run` is refused. Clients check the server before
they send anything (`supervisor._trust`); `find_socket` and `dial` are their half here.

Clients are served from the root's own loop, never blocking it: their sockets are
non-blocking, and a client that stops reading (its buffer fills) is disconnected rather
than allowed to stall the supervisor.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import struct
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from . import protocol as P
from ._framing import FrameReader, recv_some, send_frame
from ._trust import Trust, check_directory
from .errors import ConfigError, ProtocolError

if TYPE_CHECKING:
    from ._supervisor import SupervisorProcess

__all__ = ["ControlServer", "default_dir", "default_socket", "find_socket", "dial", "peer_uid",
           "peer_pid", "TreeRunning"]


class TreeRunning(ConfigError):
    """A live tree already listens on that socket."""


def default_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "supervisor"
    return Path(tempfile.gettempdir()) / f"supervisor-{os.getuid()}"


def default_socket(root_id: str) -> Path:
    return default_dir() / f"{root_id}.sock"


def _private_dir(directory: Path) -> None:
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = directory.stat()
    if info.st_uid != os.getuid():
        raise ConfigError(f"{directory} belongs to uid {info.st_uid}, not to us; "
                          "refusing to put a control socket there", field="socket")
    if stat.S_IMODE(info.st_mode) & 0o077:
        os.chmod(directory, 0o700)


def _is_live(path: Path) -> bool:
    """Whether a server listens at `path`. The probe never waits: a full listen backlog
    (EAGAIN) means a live server too busy to accept at this instant."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(str(path))
        return True
    except BlockingIOError:
        return True
    except OSError as exc:
        if exc.errno in (errno.ECONNREFUSED, errno.ENOENT):
            return False
        raise
    finally:
        probe.close()


def find_socket(explicit: str | None = None, trust: Trust | None = None) -> Path:
    """The socket a control command talks to: `explicit`, else the lone live one in the
    default directory. Raises ConfigError when there is none, or several, and
    UntrustedServer when the default directory is not private to us (or to root / the
    server uid in `trust`): its sockets are then not even probed. The caller still checks
    the socket it picks (`_trust.check_socket`) before connecting."""
    if explicit:
        return Path(explicit)
    trust = trust or Trust.of()
    directory = default_dir()
    try:
        check_directory(directory, trust)
    except FileNotFoundError:
        live = []
    else:
        live = sorted(p for p in _own_sockets(directory, trust) if _is_live(p))
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


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of an AF_UNIX connection (Linux)."""
    return _peer(conn)[1]


def peer_pid(conn: socket.socket) -> int:
    """The pid of the process at the other end of an AF_UNIX connection (Linux)."""
    return _peer(conn)[0]


class ControlServer:
    def __init__(self, sup: SupervisorProcess, path: Path) -> None:
        self.sup = sup
        self.path = path
        self.clients: dict[socket.socket, FrameReader] = {}
        _private_dir(path.parent)
        if path.exists() or path.is_symlink():
            if _is_live(path):
                raise TreeRunning(f"a tree is already running on {path}; stop it first "
                                  "or pick another --socket", field="socket")
            path.unlink()  # a stale socket from a run that died
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where it is open
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.listener.setblocking(False)
        sup.loop.add_reader(self.listener, self._accept)

    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:
            return
        uid = peer_uid(conn)
        if uid != os.getuid():
            logger.warning("control socket: refused a connection from uid {}", uid)
            conn.close()
            return
        conn.setblocking(False)
        self.clients[conn] = FrameReader(P.CONTROL_CODEC)
        self.sup.loop.add_reader(conn, lambda: self._read(conn))

    def _read(self, conn: socket.socket) -> None:
        reader = self.clients.get(conn)
        if reader is None:
            return
        try:
            msgs, fds, eof = recv_some(conn, reader, maxfds=16)
        except (ProtocolError, OSError) as exc:
            logger.warning("control socket: dropped a client: {}", exc)
            self.drop(conn)
            return
        fds = list(fds)
        for msg in msgs:
            fd = fds.pop(0) if isinstance(msg, P.OpenChannel) and fds else None
            if conn not in self.clients:  # dropped while answering an earlier request
                if fd is not None:
                    os.close(fd)
                continue
            self.sup._request(msg, conn, fd)
        for fd in fds:
            os.close(fd)
        if eof and conn in self.clients:
            self.drop(conn)

    def owns(self, conn: Any) -> bool:
        return conn in self.clients

    def send(self, conn: socket.socket, msg: Any) -> None:
        """Send to one client; one that cannot take it now is disconnected."""
        try:
            send_frame(conn, P.CONTROL_CODEC.encode(msg))
        except (BlockingIOError, BrokenPipeError, ConnectionResetError, OSError):
            self.drop(conn)

    def broadcast(self, msg: Any) -> None:
        data = P.CONTROL_CODEC.encode(msg)
        for conn in list(self.clients):
            try:
                send_frame(conn, data)
            except OSError:  # BlockingIOError included: a client that does not read
                self.drop(conn)

    def drop(self, conn: socket.socket) -> None:
        if self.clients.pop(conn, None) is not None:
            self.sup.loop.remove_reader(conn)
            conn.close()

    def close(self) -> None:
        for conn in list(self.clients):
            self.drop(conn)
        self.sup.loop.remove_reader(self.listener)
        self.listener.close()
        try:
            self.path.unlink()
        except FileNotFoundError:  # removed by someone else already
            pass
