"""External programs as children: `program("db", ["redis-server"])` / TOML ``command = [...]``.

A program runs in its own process group, forked by the supervisor like any child (so it
dies with it: PR_SET_PDEATHSIG survives exec) and then exec'd. Whether exec worked is read
from a close-on-exec pipe: EOF means the program is running, bytes are the exec error.
Signals the supervisor's Python set to "ignore" (SIGPIPE, SIGINT, SIGHUP) are reset first:
ignored dispositions survive exec and would change the program's behaviour.

Stopping it sends `stop_signal` to its group, then SIGKILL to the group when the shutdown
grace runs out. When it exits, whatever is left of its group is killed too.
Exit code 0 is the exit reason ``normal``; a signal is ``killed``; any other code ``exited``.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

from .output import Capture
from .proc import fork_child
from .slot import ChildSlot, StartFailure

__all__ = ["spawn", "await_exec", "signal_group", "kill_group"]

_RESET = (signal.SIGPIPE, signal.SIGINT, signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD,
          signal.SIGXFSZ)


def spawn(slot: ChildSlot, keep: list[int], capture: Capture | None) -> int:
    """Fork and exec the program; returns the read end of its exec-status pipe."""
    spec = slot.spec
    status_r, status_w = os.pipe()  # both close-on-exec: exec success closes status_w
    env = dict(os.environ)
    env.update(spec.env or {})

    def run() -> int:
        os.setpgid(0, 0)
        for sig in _RESET:
            signal.signal(sig, signal.SIG_DFL)
        if capture is not None:  # (status_r is not in `keep`: fork_child closed it)
            capture.in_child()
        try:
            _become(spec)
            if spec.cwd:
                os.chdir(spec.cwd)
            os.execvpe(spec.command[0], list(spec.command), env)
        except (OSError, KeyError) as exc:
            os.write(status_w, f"{type(exc).__name__}: {exc}".encode())
        return 127

    try:
        pid = fork_child(run, [*keep, status_w])
    except OSError:
        os.close(status_r)
        raise
    finally:
        os.close(status_w)
    try:
        os.setpgid(pid, pid)  # also here: whichever side runs first, the group exists
    except (PermissionError, ProcessLookupError):
        pass  # the child already exec'd (EACCES) or died; it set its own group first
    slot.attach(pid, None)
    return status_r


def _become(spec: Any) -> None:
    """In the forked child, before exec: the program's group, user and umask. The group
    goes first (a process that gave up root can no longer change it); the supplementary
    groups become the user's own. Raises KeyError for an unknown name, PermissionError
    when we may not change user (not root)."""
    if spec.umask is not None:
        os.umask(spec.umask)
    if spec.user is None and spec.group is None:
        return
    import grp
    import pwd

    user = None
    if spec.user is not None:
        user = pwd.getpwnam(spec.user) if isinstance(spec.user, str) else pwd.getpwuid(spec.user)
    if spec.group is not None:
        gid = grp.getgrnam(spec.group).gr_gid if isinstance(spec.group, str) else spec.group
    else:
        gid = user.pw_gid
    if user is not None:
        os.initgroups(user.pw_name, gid)
    else:
        os.setgroups([gid])
    os.setgid(gid)
    if user is not None:
        os.setuid(user.pw_uid)


def await_exec(slot: ChildSlot, status_r: int) -> StartFailure | None:
    """None once the program is exec'd; the failure (and the reaped child) otherwise."""
    chunks = []
    while True:
        data = os.read(status_r, 4096)
        if not data:
            break
        chunks.append(data)
    os.close(status_r)
    if not chunks:
        return None
    os.waitpid(slot.pid, 0)
    kind, _, message = b"".join(chunks).decode(errors="replace").partition(": ")
    return StartFailure(slot.path, "initialization_error", kind,
                        f"cannot run {list(slot.spec.command)!r}: {message}")


def signal_group(slot: ChildSlot, sig: int) -> None:
    try:
        os.killpg(slot.pid, sig)
    except ProcessLookupError:  # the group is gone already
        pass
    except PermissionError:  # the leader left the group (setsid); signal it alone
        try:
            os.kill(slot.pid, sig)
        except ProcessLookupError:
            pass


def kill_group(pgid: int) -> None:
    """SIGKILL what is left of a program's process group after the leader exited."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left, or not ours any more
        pass


def stop_signal_of(spec: Any) -> int:
    return spec.signal_number


def is_program(spec: Any) -> bool:
    return hasattr(spec, "command")


def graceful(slot: ChildSlot, wait: Callable[[float | None], int | None]) -> int:
    """Stop a program per its shutdown spec; `wait(deadline)` waits for its exit."""
    import time

    shutdown = slot.spec.shutdown
    if shutdown == "brutal_kill":
        signal_group(slot, signal.SIGKILL)
        return wait(None)
    signal_group(slot, stop_signal_of(slot.spec))
    if shutdown == "infinity":
        return wait(None)
    status = wait(time.monotonic() + shutdown)
    if status is not None:
        return status
    signal_group(slot, signal.SIGKILL)
    return wait(None)
