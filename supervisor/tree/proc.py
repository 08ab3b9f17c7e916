"""Process control: fork a child that dies with its parent, pidfds, subreaping, exit reasons.

Linux fast paths (prctl, pidfd_open) with portable fallbacks: without PR_SET_PDEATHSIG a
child still notices its parent's death as EOF on its control channel; without pidfds the
supervisor loop learns of exits through SIGCHLD.
"""

from __future__ import annotations

import ctypes
import gc
import os
import signal
import sys
from collections.abc import Callable, Iterable

import psutil

__all__ = [
    "fork_child",
    "set_subreaper",
    "set_parent_death_signal",
    "pidfd_open",
    "describe_status",
    "exit_reason",
    "kill_quietly",
    "kill_strays",
    "raise_fd_limit",
    "child_pids",
]

_PR_SET_PDEATHSIG = 1
_PR_SET_CHILD_SUBREAPER = 36

_libc: ctypes.CDLL | None = None
if sys.platform.startswith("linux"):
    try:
        _libc = ctypes.CDLL(None, use_errno=True)
    except OSError:  # a libc that cannot be loaded: fall back to the portable paths
        _libc = None


def _prctl(option: int, value: int) -> bool:
    if _libc is None:
        return False
    return _libc.prctl(option, value, 0, 0, 0) == 0


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask the kernel to send `sig` when the thread that forked us exits (Linux only)."""
    return _prctl(_PR_SET_PDEATHSIG, int(sig))


def set_subreaper() -> bool:
    """Make orphaned descendants reparent to this process, so it can kill and reap them."""
    return _prctl(_PR_SET_CHILD_SUBREAPER, 1)


def pidfd_open(pid: int) -> int | None:
    """A pidfd for `pid`, or None where the platform has none (then SIGCHLD wakes the loop)."""
    opener = getattr(os, "pidfd_open", None)
    if opener is None:
        return None
    try:
        return opener(pid)
    except ProcessLookupError:  # already gone and reaped: the caller sees it via waitpid
        return None
    except OSError:  # ENOSYS on old kernels
        return None


def set_title(title: str) -> None:
    """Show `title` for this process in `ps` and `top` (e.g. ``worker: jobs/job-1``)."""
    from setproctitle import setproctitle  # here: only processes of the tree need it

    setproctitle(title)


def fork_child(run: Callable[[], int], keep: Iterable[int] = ()) -> int:
    """Fork; in the child set the death signal, close every inherited fd but 0-2 and
    `keep`, call `run`, exit with the code it returns.

    The child never returns into the parent's code: it leaves with `os._exit`, so no
    parent atexit handler or finalizer runs twice. Closing what it inherited matters: a
    sibling's channel left open here would never show EOF to the other side when the
    parent dies. One `closerange` per gap between kept fds does it in a few syscalls,
    however many children the parent has.
    """
    parent = os.getpid()
    keep = sorted({fd for fd in keep if fd > 2})
    pid = os.fork()
    if pid:
        return pid
    code = 70
    # What we inherited is never collected here: our collector then never walks it,
    # which would write to every object's header and copy each page it touches. (Frozen
    # in the child only: in the supervisor, frozen garbage would never be freed.)
    gc.freeze()
    try:
        set_parent_death_signal()
        # The race: the parent may have died between fork and prctl, in which case
        # the signal will never come. Checking the parent pid after prctl closes it.
        if os.getppid() != parent:
            os._exit(1)
        signal.set_wakeup_fd(-1)
        _close_all_but(keep)
        # Ctrl-C and a terminal's hangup reach the whole foreground process group: the
        # service root turns them into a graceful stop of the tree, which stops us in turn.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        code = run()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException:  # the child must never unwind into the parent's stack
        import traceback

        traceback.print_exc()
        code = 70
    finally:
        _flush_std()
        os._exit(code)


def _close_all_but(keep: list[int]) -> None:
    low = 3
    for fd in keep:
        if fd > low:
            os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, _MAX_FD)


_MAX_FD = 1 << 20  # closerange uses close_range(2) on Linux: the bound costs nothing


def _flush_std() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # closed or broken stream: nothing more to say
            pass


def raise_fd_limit() -> None:
    """Lift the soft RLIMIT_NOFILE to the hard limit (a supervisor holds several fds per
    child; the default soft limit of 1,024 caps a tree at a few hundred children)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):  # a container that refuses: keep the soft limit
            pass


def describe_status(status: int) -> str:
    """Human text for a wait status: ``exit code 3`` or ``killed by SIGKILL``."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"killed by {name}"
    if os.WIFEXITED(status):
        return f"exit code {os.WEXITSTATUS(status)}"
    return f"wait status {status}"


def exit_reason(status: int) -> str:
    """The exit reason of a child that left without an Exit report (a program, or a
    worker that died): ``killed`` by a signal, ``normal`` for exit code 0, else ``exited``."""
    if os.WIFSIGNALED(status):
        return "killed"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
        return "normal"
    return "exited"


def kill_quietly(pid: int, sig: int = signal.SIGKILL) -> None:
    """Send `sig` to `pid`, ignoring a process that is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:  # already exited
        pass


def child_pids() -> list[int] | None:
    """Our direct children, from /proc/self/task/*/children (Linux): one small read per
    thread instead of a scan of the whole process table. None where it is unavailable."""
    pids: list[int] = []
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/children") as fh:
                pids.extend(int(pid) for pid in fh.read().split())
    except OSError:  # no /proc, or a kernel without CONFIG_PROC_CHILDREN
        return None
    return pids


def kill_strays(known: Iterable[int]) -> list[int]:
    """SIGKILL every child of this process that is not in `known`.

    A subreaper inherits the orphans of a child that died (its subprocesses); they are not
    ours to keep. Returns the pids that were killed (the SIGCHLD handler reaps them).
    """
    keep = set(known)
    pids = child_pids()
    if pids is None:
        try:
            pids = [proc.pid for proc in psutil.Process().children()]
        except (psutil.Error, OSError):
            # Our own entry is unreadable, or no descriptor is left to read /proc with
            # (EMFILE): nothing to scan now; the next exit or the shutdown scans again.
            return []
    killed = []
    for pid in pids:
        if pid not in keep:
            kill_quietly(pid)
            killed.append(pid)
    return killed
