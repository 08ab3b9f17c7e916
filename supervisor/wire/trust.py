"""Where a tree's control socket lives, and whom either side trusts on it.

Both sides use this module: the service root (`service.control`) binds the socket where
`default_socket` says and admits only peers whose uid (`peer_uid`) is its own; the client
(`client.control`, `supervisor.connect`) finds it and checks the server as below.

What a control client trusts before it says anything to a server.

A control command (and `supervisor.connect`) talks to whatever listens on an AF_UNIX path.
Whoever listens there gets our requests and answers them: a fake server could feed us
replies we act on (and, before pickled replies were tied to the channel's serializer, run
code in our process). Root's commands under sudo or cron use ``<tmp>/supervisor-0``, a
name any local user can create first. So before sending a byte the client checks, in this
order, and refuses with `UntrustedServer` (one line naming the path and its owner):

1. The directory chain. Every directory from ``/`` down to the socket, walked one
   component at a time with `lstat` (a symlink is never followed by the kernel: we read it
   and walk its target the same way), must be owned by a trusted uid (the caller, root, or
   the server uid the caller named) and not writable by group or others. A shared
   directory with the sticky bit (``/tmp``) is the one exception: there only an entry's
   owner can remove or rename it, so it is acceptable when the entry below it is owned by a
   trusted uid. Nobody else can then have put, moved or swapped anything on the path.
   A fault above the caller's own ``XDG_RUNTIME_DIR`` (a directory owned by the caller,
   writable by no one else) is forgiven: nobody else can create a directory owned by the
   caller, so whatever lies below it is the caller's.
2. The socket file is owned by the server uid (by default: the caller's own uid).
3. After connecting, the process listening (SO_PEERCRED, recorded by the kernel when the
   server called `listen`) runs as the server uid. Checks 1 and 2 race with a rename made
   between them and the connect; this one does not: it is the kernel's word about the
   process we are connected to.

The server uid is the caller's own unless the caller names another one explicitly
(``connect(path, server_uid=...)``, ``--server-uid``): e.g. root talking to a tree run by
a service account. The server still applies its own peer check, which today admits only
its own uid.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import struct
import tempfile
from pathlib import Path

import attrs

from ..errors import UntrustedServer

__all__ = ["Trust", "check_socket", "check_directory", "check_place", "check_peer",
           "describe_uid", "missing_dirs",
           "describe_kind", "default_dir", "default_socket", "is_live", "peer_uid", "peer_pid"]

_MAX_LINKS = 40  # symlinks followed in one walk before it is a loop (the kernel's ELOOP)
_SHARED = stat.S_IWGRP | stat.S_IWOTH


def describe_uid(uid: int) -> str:
    """``uid 998 (otpsup-probe)``: the uid and its user name, for error messages."""
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:  # a uid with no passwd entry (a container's, a deleted user's)
        return f"uid {uid} (no user name)"


@attrs.frozen
class Trust:
    """Whom a client trusts: itself (`caller`, its effective uid), root, and `server`, the
    uid the server must run as (the caller's unless named explicitly)."""

    caller: int
    server: int

    @classmethod
    def of(cls, server_uid: int | None = None) -> Trust:
        caller = os.geteuid()
        return cls(caller, caller if server_uid is None else server_uid)

    def trusts(self, uid: int) -> bool:
        return uid in (0, self.caller, self.server)

    def whom(self) -> str:
        """Who may own a directory on the path, in words."""
        names = ["you" if self.caller else "root", *(["root"] if self.caller else [])]
        if self.server not in (0, self.caller):
            names.append(f"the server's {describe_uid(self.server)}")
        return " or ".join(names)

    def server_words(self) -> str:
        """Whom the socket and the server must belong to, in words."""
        if self.server == self.caller:
            return f"you ({describe_uid(self.caller)})"
        return f"the server uid you named ({describe_uid(self.server)})"


def check_socket(path: str | os.PathLike, trust: Trust) -> None:
    """Raise UntrustedServer unless `path`'s directory chain and the socket file itself
    are trusted (see the module docstring); FileNotFoundError when some part is missing."""
    where = os.fspath(path)
    info = _walk(where, trust)
    if not stat.S_ISSOCK(info.st_mode):
        raise UntrustedServer(f"{where} is not a socket ({describe_kind(info.st_mode)} owned by "
                              f"{describe_uid(info.st_uid)})", field="socket")
    if info.st_uid != trust.server:
        raise UntrustedServer(f"refusing {where}: the socket belongs to "
                              f"{describe_uid(info.st_uid)}, not to {trust.server_words()}; "
                              "pass --server-uid (server_uid=) only if you trust that user",
                              field="socket")


def check_directory(path: str | os.PathLike, trust: Trust) -> None:
    """Raise UntrustedServer unless the directory at `path` and its whole chain are
    trusted and the directory itself is writable by nobody else (no sticky exception:
    a socket directory is private). FileNotFoundError when it does not exist."""
    where = os.fspath(path)
    info = _walk(where, trust)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
    fault = _dir_fault(where, info, None, None, trust)
    if fault is not None:
        raise fault


def check_place(directory: str | os.PathLike, trust: Trust) -> None:
    """Raise UntrustedServer unless a socket put in `directory` can be replaced by nobody
    but a trusted uid: the directory and every one above it are owned by a trusted uid
    and none is writable by group or others unless sticky (in a sticky directory, like
    /tmp, only an entry's owner can remove or rename it). The server's check of where it
    binds; FileNotFoundError when `directory` does not exist."""
    where = os.fspath(directory)
    info = _walk(where, trust)
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), where)
    if not trust.trusts(info.st_uid):
        raise _foreign(where, info.st_uid, trust)
    if stat.S_IMODE(info.st_mode) & _SHARED and not info.st_mode & stat.S_ISVTX:
        raise _open_to_others(where, info)


def missing_dirs(directory: str | os.PathLike) -> tuple[Path, list[Path]]:
    """The directories of absolute `directory` that do not exist yet, outermost first, and
    the one whose place decides whether they may be made (for `check_place`): the nearest
    existing directory above them, or `directory`'s parent when none is missing. A dangling
    symlink exists (`lexists`): it is refused by the checks, never created through."""
    target = Path(os.path.abspath(directory))
    missing = []
    top = target
    while not os.path.lexists(top):
        missing.append(top)
        top = top.parent
    missing.reverse()
    return (top if missing else target.parent), missing


def check_peer(uid: int, path: str | os.PathLike, trust: Trust) -> None:
    """Raise UntrustedServer unless `uid`, the peer uid (SO_PEERCRED) of our connection to
    `path`, is the server uid."""
    if uid != trust.server:
        raise UntrustedServer(f"refusing the server at {os.fspath(path)}: it runs as "
                              f"{describe_uid(uid)}, not as {trust.server_words()}; pass "
                              "--server-uid (server_uid=) only if you trust that user",
                              field="socket")


# ---------------------------------------------------------------------------- the walk
def _walk(path: str, trust: Trust) -> os.stat_result:
    """`lstat` of `path`'s last component, reached from ``/`` one component at a time.

    Every directory a name is looked up in is vetted first (`_dir_fault`): the kernel never
    resolves a name in a directory we have not checked, and a symlink is read and its
    target walked the same way. The first fault is raised once the walk ends, unless the
    walk then passed through the caller's own XDG_RUNTIME_DIR (see the module docstring).
    Raises FileNotFoundError / NotADirectoryError / OSError(ELOOP) as the kernel would.
    """
    if not os.path.isabs(path):
        path = os.path.join(os.getcwd(), path)
    runtime = _runtime_dir()
    todo = _components(path)
    todo.reverse()  # a stack: the next component on top
    chain: list[tuple[str, os.stat_result]] = [("/", os.lstat("/"))]
    fault: UntrustedServer | None = None
    links = 0
    while todo:
        name = todo.pop()
        if name == "..":  # the chain holds real directories: their parent is lexical
            if len(chain) > 1:
                chain.pop()
            continue
        parent, parent_info = chain[-1]
        here = os.path.join(parent, name)
        info = os.lstat(here)
        fault = fault or _dir_fault(parent, parent_info, here, info, trust)
        if stat.S_ISLNK(info.st_mode):
            links += 1
            if links > _MAX_LINKS:
                raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
            target = os.readlink(here)
            if os.path.isabs(target):
                del chain[1:]
            todo.extend(reversed(_components(target)))
            continue
        if todo and not stat.S_ISDIR(info.st_mode):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), here)
        chain.append((here, info))
        if here == runtime and _own_private(info, trust):
            fault = None
    if fault is not None:
        raise fault
    return chain[-1][1]


def _dir_fault(directory: str, info: os.stat_result, entry: str | None,
               entry_info: os.stat_result | None, trust: Trust) -> UntrustedServer | None:
    """Why looking up `entry` in `directory` is not safe, or None when it is."""
    if not trust.trusts(info.st_uid):
        return _foreign(directory, info.st_uid, trust)
    mode = stat.S_IMODE(info.st_mode)
    if not mode & _SHARED:
        return None
    if mode & stat.S_ISVTX and entry_info is not None and trust.trusts(entry_info.st_uid):
        return None  # a sticky shared directory: only the entry's owner can replace it
    if mode & stat.S_ISVTX and entry_info is not None:
        return UntrustedServer(f"refusing {entry}: it belongs to "
                               f"{describe_uid(entry_info.st_uid)}, not to {trust.whom()}, in "
                               f"the shared directory {directory}; another user may have "
                               "planted it", field="socket")
    return _open_to_others(directory, info)


def _foreign(directory: str, uid: int, trust: Trust) -> UntrustedServer:
    return UntrustedServer(f"refusing {directory}: it belongs to {describe_uid(uid)}, not to "
                           f"{trust.whom()}; another user may have planted it", field="socket")


def _open_to_others(directory: str, info: os.stat_result) -> UntrustedServer:
    mode = stat.S_IMODE(info.st_mode)
    return UntrustedServer(f"refusing {directory} (owner {describe_uid(info.st_uid)}): it is "
                           f"writable by others (mode {mode:04o}), who could swap what is in "
                           "it", field="socket")


def _own_private(info: os.stat_result, trust: Trust) -> bool:
    return (stat.S_ISDIR(info.st_mode) and info.st_uid == trust.caller
            and not stat.S_IMODE(info.st_mode) & _SHARED)


def _runtime_dir() -> str | None:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if not runtime or not os.path.isabs(runtime):
        return None  # the spec: a relative value is invalid and must be ignored
    return os.path.normpath(runtime)


def _components(path: str) -> list[str]:
    return [part for part in path.split("/") if part not in ("", ".")]


def describe_kind(mode: int) -> str:
    """``a socket``, ``a file``, ``a directory``, ``a symbolic link``: for error messages."""
    for test, name in ((stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a file"),
                       (stat.S_ISDIR, "a directory"), (stat.S_ISLNK, "a symbolic link")):
        if test(mode):
            return name
    return "a special file"



# ----------------------------------------------------------------------- where it lives
def default_dir() -> Path:
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime:
        return Path(runtime) / "supervisor"
    return Path(tempfile.gettempdir()) / f"supervisor-{os.getuid()}"


def default_socket(root_id: str) -> Path:
    return default_dir() / f"{root_id}.sock"


def is_live(path: Path) -> bool:
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


def _peer(conn: socket.socket) -> tuple[int, int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return struct.unpack("3i", creds)


def peer_uid(conn: socket.socket) -> int:
    """The uid of the process at the other end of an AF_UNIX connection (Linux)."""
    return _peer(conn)[1]


def peer_pid(conn: socket.socket) -> int:
    """The pid of the process at the other end of an AF_UNIX connection (Linux)."""
    return _peer(conn)[0]
