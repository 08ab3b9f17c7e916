"""The control socket of a tree run by `python -m supervisor run`.

    clients (CLI commands, supervisor.connect) ──AF_UNIX──▶ root supervisor loop
        requests (+fds for OpenChannel) ▶            ◀ Responses, Events, the root's Exit

Where: ``--socket PATH``, else ``$XDG_RUNTIME_DIR/supervisor/<root id>.sock``, else
``<tmp>/supervisor-<uid>/<root id>.sock``. The server's own directory is created 0700 and
must be a real directory of ours, private; a `--socket` directory that exists is used as it
is (its mode is never changed); every directory above must be one no other user can swap.
The socket is born 0600; every connection's peer uid (SO_PEERCRED) must be ours. A socket
of ours left by a dead run (connecting is refused) is replaced; a live one means a tree
already runs there, and a second `run` is refused; anything else at the path is refused.
Clients check the server before they send anything (`wire.trust`, `client.control`).

Clients are served from the root's own loop, never blocking it: their sockets are
non-blocking, and a client that stops reading (its buffer fills) is disconnected rather
than allowed to stall the supervisor. Out of descriptors, the server stops accepting for a
moment instead of dying; the partial frames of all clients together are bounded.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from loguru import logger

from ..errors import ConfigError, ProtocolError
from ..tree.loop import Timer
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.trust import (
    Trust,
    check_place,
    default_socket,
    describe_kind,
    describe_uid,
    is_live,
    missing_dirs,
    peer_uid,
)

if TYPE_CHECKING:
    from ..tree.process import SupervisorProcess

__all__ = ["ControlServer", "default_socket", "TreeRunning", "PARTIAL_BUDGET"]

_MIB = 1024 * 1024


class TreeRunning(ConfigError):
    """A live tree already listens on that socket."""


# ------------------------------------------------------------ where the server may bind
# The server trusts no directory it did not create. Its own directory (the default one, or
# a missing `--socket` directory) is created 0700 and then checked through a descriptor
# opened with O_NOFOLLOW, so a symlink planted in its place is refused, not followed. Any
# other directory is only used, never changed: a shared one (/tmp, $HOME) keeps its mode,
# and the socket is born 0600 by the umask. Every directory above must be one no other user
# can swap: owned by us or root, not writable by group or others unless sticky (like /tmp).


def _private_dir(directory: Path) -> None:
    """Make `directory` our private directory for control sockets, or raise ConfigError.

    Missing directories are created 0700 (they are then ours). An existing `directory`
    must be a real directory (not a symlink) owned by us with no access for group or
    others: it is refused otherwise, never chmodded. The directories above it must pass
    `wire.trust.check_place`.
    """
    directory = Path(os.path.abspath(directory))
    place, missing = missing_dirs(directory)
    check_place(place, Trust.of())
    created = False
    for made in missing:
        try:
            os.mkdir(made, 0o700)
        except FileExistsError:  # made by someone else meanwhile: checked like any other
            if made != directory:
                check_place(made, Trust.of())
            continue
        if made == directory:
            created = True
        else:
            _check_private(made, created=True)
    _check_private(directory, created=created)


def _check_private(directory: Path, *, created: bool) -> None:
    # Opened with O_NOFOLLOW and checked with fstat: what is checked is what we opened,
    # so nothing can be swapped in between a check of the path and its use.
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        info = _lstat(directory)
        kind = "a symbolic link" if stat.S_ISLNK(info.st_mode) else "not a directory"
        raise ConfigError(f"refusing {directory}: it is {kind} (owned by "
                          f"{describe_uid(info.st_uid)}), not a directory of ours; remove it "
                          "or pick another --socket", field="socket") from None
    try:
        info = os.fstat(fd)
        if info.st_uid != os.getuid():
            raise ConfigError(f"refusing {directory}: it is owned by {describe_uid(info.st_uid)}, "
                              "not by us; remove it or pick another --socket",
                              field="socket")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077:
            if not created:
                raise ConfigError(f"refusing {directory}: mode {mode:04o} gives group or "
                                  f"others access; make it private (chmod 700 {directory})"
                                  " or remove it", field="socket")
            os.fchmod(fd, 0o700)  # ours, made a moment ago under an unusual umask
    finally:
        os.close(fd)


def _lstat(path: Path) -> os.stat_result:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist", field="socket") from None


PARTIAL_BUDGET = 2 * P.CONTROL_CODEC.max_frame
"""Bytes that the partial frames of all control clients may hold together (128 MiB with
the default 64 MiB frame limit). Past it, the client holding the most is dropped."""

ACCEPT_PAUSE = (0.1, 1.0)
"""Seconds the server stops accepting after accept() ran out of descriptors or memory:
the first pause, then doubling up to the second while it persists."""


def accept_pause(pauses: int) -> float:
    """Seconds of the next pause after `pauses` pauses in a row: 0.1, 0.2, 0.4, 0.8, 1.0,
    1.0, ..."""
    first, longest = ACCEPT_PAUSE
    return min(longest, first * 2 ** min(pauses, 16))


# The client went away between connecting and being accepted: nothing to do.
_GONE = frozenset({errno.ECONNABORTED, errno.EPROTO})


class ControlServer:
    """The listening control socket of a service root, served from the root's loop.

    `explicit` is True for a `--socket PATH` chosen by the user: its directory may be a
    shared one, which is used as it is. Otherwise the directory is our private one.
    Raises ConfigError when the directory or an existing file at `path` is not to be
    trusted, TreeRunning when a live tree already listens there.
    """

    def __init__(self, sup: SupervisorProcess, path: Path, *, explicit: bool = False) -> None:
        self.sup = sup
        self.path = path
        self.clients: dict[socket.socket, FrameReader] = {}
        self._held: dict[socket.socket, int] = {}  # partial-frame bytes per client (>0 only)
        self._held_total = 0
        self._pauses = 0  # accept() pauses in the current shortage (0: none)
        self._paused_since = 0.0
        self._resume: Timer | None = None
        self.hub: Any = None  # the root's observe.hub.Hub: answers RecentEvents
        self.reloader: Any = None  # the root's service.reload.Reloader: answers Reload
        directory = path.parent
        if explicit and os.path.lexists(directory):
            check_place(directory, Trust.of())  # shared or not, its mode stays as it is
        else:
            _private_dir(directory)
        self._claim(path)
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # the socket file is born 0600: no window where it is open
        try:
            self.listener.bind(str(path))
        finally:
            os.umask(old)
        bound = os.lstat(path)
        self._identity = (bound.st_dev, bound.st_ino)  # close() removes this file only
        self.listener.listen(64)
        self.listener.setblocking(False)
        sup.loop.add_reader(self.listener, self._accept)

    @staticmethod
    def _claim(path: Path) -> None:
        """Make room at `path`: nothing there, or a socket of ours that nobody serves."""
        try:
            info = os.lstat(path)
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(f"refusing to replace {path}: it is {describe_kind(info.st_mode)} owned "
                              f"by {describe_uid(info.st_uid)}, not a socket of ours; remove it or "
                              "pick another --socket", field="socket")
        if is_live(path):
            raise TreeRunning(f"a tree is already running on {path}; stop it first "
                              "or pick another --socket", field="socket")
        path.unlink()  # a stale socket from a run of ours that died

    # ------------------------------------------------------------------ accepting
    def _accept(self) -> None:
        try:
            conn, _ = self.listener.accept()
        except BlockingIOError:  # another accept took it, or the client left
            return
        except OSError as exc:
            if exc.errno in _GONE:
                return
            # Out of descriptors or kernel memory (EMFILE, ENFILE, ENOBUFS, ENOMEM), or a
            # failure we do not know: the root must not die of it, and retrying at once
            # would spin (level-triggered readiness reports the waiting client again).
            self._pause(exc)
            return
        try:
            uid = peer_uid(conn)
        except OSError as exc:  # the peer is already gone
            logger.warning("control socket: no credentials for a connection: {}", exc)
            conn.close()
            return
        if uid != os.getuid():
            logger.warning("control socket: refused a connection from uid {}", uid)
            conn.close()
            return
        if self._pauses:
            logger.info("control socket: accepting again after {} pauses ({:.1f} s)",
                        self._pauses, time.monotonic() - self._paused_since)
            self._pauses = 0
        conn.setblocking(False)
        self.clients[conn] = FrameReader(P.CONTROL_CODEC)
        self.sup.loop.add_reader(conn, lambda: self._read(conn))

    def _pause(self, exc: OSError) -> None:
        """Stop accepting for a moment; the waiting clients stay in the listen backlog."""
        if not self._pauses:
            self._paused_since = time.monotonic()
            logger.warning("control socket: cannot accept a connection ({}); not accepting "
                           "for a moment, the tree runs on", exc.strerror or exc)
        delay = accept_pause(self._pauses)
        self._pauses += 1
        self.sup.loop.remove_reader(self.listener)
        self._resume = self.sup.loop.call_later(delay, self._unpause)

    def _unpause(self) -> None:
        self._resume = None
        self.sup.loop.add_reader(self.listener, self._accept)

    # ------------------------------------------------------------------ reading
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
            if isinstance(msg, P.RecentEvents):  # the service root's own record, not a tree's
                kept = self.hub.since(msg.after) if self.hub is not None else []
                self.send(conn, P.Response(id=msg.id, value=kept))
                continue
            if isinstance(msg, P.Reload) and self.reloader is not None:
                self.reloader.request(msg, conn)  # answered once the plan is applied
                continue
            self.sup.request(msg, conn, fd)
        for fd in fds:
            os.close(fd)
        if eof and conn in self.clients:
            self.drop(conn)
        elif conn in self.clients:
            self._account(conn, reader.pending)

    def _account(self, conn: socket.socket, held: int) -> None:
        """Note what `conn` buffers now; past PARTIAL_BUDGET drop the biggest holders."""
        self._held_total += held - self._held.pop(conn, 0)
        if held:
            self._held[conn] = held
        while self._held_total > PARTIAL_BUDGET:
            biggest = max(self._held, key=self._held.__getitem__)
            logger.warning("control socket: dropped the client holding the most partial "
                           "frame bytes ({:.1f} MiB): all clients held {:.1f} MiB, over the "
                           "budget of {:.0f} MiB", self._held[biggest] / _MIB,
                           self._held_total / _MIB, PARTIAL_BUDGET / _MIB)
            self.drop(biggest)

    # ------------------------------------------------------------------ writing
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
            self._held_total -= self._held.pop(conn, 0)
            self.sup.loop.remove_reader(conn)
            conn.close()

    def close(self) -> None:
        for conn in list(self.clients):
            self.drop(conn)
        if self._resume is not None:
            self._resume.cancel()
        self.sup.loop.remove_reader(self.listener)
        self.listener.close()
        # Only the file we bound: a later run may have replaced a socket we lost.
        try:
            info = os.lstat(self.path)
        except FileNotFoundError:  # removed by someone else already
            return
        if (info.st_dev, info.st_ino) == self._identity:
            self.path.unlink()
