"""A supervisor's standby: its next worker process, forked before it is needed.

    supervisor ──fork, off the critical path──▶ standby: inherited fds closed, death signal
                                                set, worker logging on; blocked in recvmsg
    a worker child dies; its restart is decided
    supervisor ──Become(path, restarts) + [control, stdout, stderr]──▶ standby ──▶ `serve`
    supervisor ──a while later, once the replacement serves──▶ forks the next standby

A restart then costs one sendmsg instead of a fork of the supervisor (a 29 MB heap: its
page tables copied while the supervisor waits) and the child's first round of setup and
copy-on-write faults. The rules:

- Lazy: a supervisor makes its standby only after its first restart of a process worker,
  never for the initial start: an idle tree, a tree that never restarts and the start of
  1,000 workers keep their process count and memory.
- Only process workers: not programs (fork + exec), Ray actors (their bridge joins a
  cluster) or supervisors.
- No worker's state, ever: forked from the supervisor (which holds none), a standby
  becomes exactly one child; from then on it is that worker and nothing else.
- Never outlives its supervisor: PR_SET_PDEATHSIG (`fork_child`) and EOF on its channel
  both make it leave, and the supervisor kills and reaps it when it stops (`close`), when
  it is discarded, or when its pidfd says it died (someone killed it: the next restart
  forks as before, and a new standby is made after that restart).
- Invisible: it is no child slot, so not in which_children, status, top or metrics. Its
  pid is in the supervisor's own list (`Children.own_pids`) only so that the orphan scan
  spares it and the reaping pass leaves it to its pidfd.
- Never stale (see `_inherited`): a standby runs what it inherited at its fork. It is
  used only for a child whose spec and error matrix are the very objects it inherited,
  and only while nothing else it inherited may have changed; otherwise it is discarded,
  the restart forks as before, and a fresh standby is made later.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import attrs
import msgspec
from loguru import logger

from ..runtime.log import _handler_ids
from ..runtime.log import prepare as prepare_log
from ..runtime.log import to_supervisor as log_to_supervisor
from . import reimport
from .proc import fork_child, kill_quietly, pidfd_open, set_title

if TYPE_CHECKING:
    from .launch import ProcessLauncher
    from .loop import Loop, Timer
    from .output import Capture
    from .slot import ChildSlot

__all__ = ["Standby", "Become", "REFILL_DELAY"]

REFILL_DELAY = 0.05
"""Seconds after a restart before the next standby is forked. Not at once: forking copies
the supervisor's page tables (1-1.5 ms with the loop stopped), and right after a restart
the supervisor is relaying the callers' new channels to the replacement."""


class Become(msgspec.Struct, frozen=True):
    """"Go": the standby becomes the child at `path` (a key of what it inherited), its
    `restarts`-th process. Sent with three fds: the control channel, stdout, stderr."""

    path: str
    restarts: int


_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(Become).decode
_FDS = 3  # control channel, stdout pipe, stderr pipe


def _inherited() -> tuple[Any, ...]:
    """What a forked child takes from its supervisor besides the specs, for the staleness
    check. The rule: a standby is discarded (never used) once any of this differs from
    what it was at its fork: the code (a re-import of worker modules, `restart --rolling`
    or `reload`: `reimport.generation`; a module imported since; `sys.path`), the logging
    setup (a loguru handler added or removed: a log file, a format), the environment and
    the working directory. A change the supervisor could make that is not listed here must
    be added here."""
    return (reimport.generation(), len(sys.modules), tuple(sys.path),
            tuple(_handler_ids(logger)), os.getcwd(), dict(os.environ))


@attrs.define(eq=False)
class _Spare:
    """One standby process, as its supervisor sees it."""

    pid: int
    sock: socket.socket  # our end of its channel (SOCK_SEQPACKET: one message, one Become)
    pidfd: int | None
    # path -> (spec, matrix) of every process worker at its fork: the objects it holds.
    known: dict[str, tuple[Any, Any]]
    inherited: tuple[Any, ...]

    def fits(self, slot: ChildSlot) -> bool:
        spec_matrix = self.known.get(slot.path)
        return (spec_matrix is not None and spec_matrix[0] is slot.spec
                and spec_matrix[1] is slot.matrix and self.inherited == _inherited())


class Standby:
    """The standby of the supervisor at `path` (at most one process). `slots()` lists its
    children; `processes` is its launcher of workers; `reaped()` is called after a dead
    standby was reaped (a reaping pass may have stopped at its pid)."""

    def __init__(self, path: str, loop: Loop, slots: Callable[[], Iterable[ChildSlot]],
                 processes: ProcessLauncher, reaped: Callable[[], None]) -> None:
        self.path = path
        self.loop = loop
        self.slots = slots
        self.processes = processes
        self.reaped = reaped
        self.spare: _Spare | None = None
        self.wanted = False  # a worker of this supervisor was restarted: keep a standby
        self.closed = False
        self._timer: Timer | None = None

    @property
    def pid(self) -> int | None:
        return self.spare.pid if self.spare is not None else None

    def eligible(self, slot: ChildSlot) -> bool:
        """A process worker (not a program, a Ray actor or a supervisor)."""
        return (slot.kind == "worker" and slot.launcher is self.processes
                and getattr(slot.spec, "backend", "local") == "local")

    # ------------------------------------------------------------------ a restart
    def hand_over(self, slot: ChildSlot, capture: Capture | None) -> bool:
        """Start a restart of `slot` in the standby: True once it is the slot's process
        (`await_start` then waits for its Ready as for a fork); False when there is no
        fitting live standby, and the caller forks."""
        if slot.restarts == 0 or capture is None or self.closed or not self.eligible(slot):
            return False
        self.wanted = True
        self._refill_later()
        spare, self.spare = self.spare, None
        if spare is None:
            return False
        if not spare.fits(slot):
            self._discard(spare)
            return False
        try:
            mine, theirs = socket.socketpair()
        except OSError:  # out of fds: the fork that follows fails and says so
            self._discard(spare)
            return False
        try:
            socket.send_fds(spare.sock, [_encode(Become(slot.path, slot.restarts))],
                            [theirs.fileno(), capture.out_w, capture.err_w])
        except OSError:
            # EPIPE: it died (its fds closed at its death). The restart forks instead.
            mine.close()
            self._discard(spare)
            return False
        finally:
            theirs.close()
        self._unwatch(spare)
        spare.sock.close()
        if spare.pidfd is not None:
            os.close(spare.pidfd)  # the slot opens its own (`attach`)
        slot.attach(spare.pid, mine)
        return True

    # ------------------------------------------------------------------ the next one
    def _refill_later(self) -> None:
        if self._timer is None:
            self._timer = self.loop.call_later(REFILL_DELAY, self._refill)

    def _refill(self) -> None:
        self._timer = None
        if self.closed or self.spare is not None or not self.wanted:
            return
        known = {slot.path: (slot.spec, slot.matrix) for slot in self.slots()
                 if self.eligible(slot)}
        if not known:
            return
        prepare_log()  # the workers' log handler, added before fork (as for a worker)
        inherited = _inherited()
        title = f"standby: {self.path or '(root)'}"
        try:
            mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as exc:
            logger.debug("supervisor {!r}: no standby ({})", self.path, exc)
            return
        try:
            pid = fork_child(lambda: _wait_to_become(theirs, title, known, self.processes),
                             [theirs.fileno()])
        except OSError as exc:
            # Out of processes or memory: no standby; the next restart forks as before.
            mine.close()
            logger.debug("supervisor {!r}: no standby ({})", self.path, exc)
            return
        finally:
            theirs.close()
        spare = _Spare(pid=pid, sock=mine, pidfd=pidfd_open(pid), known=known,
                       inherited=inherited)
        if spare.pidfd is None:
            # No pidfds here: a standby's death would go unnoticed while it waits (and,
            # listed as ours, it would hold up the reaping of orphans). No standby, then.
            self._discard(spare)
            self.closed = True
            return
        self.loop.add_reader(spare.pidfd, self._died)
        self.spare = spare

    def _died(self) -> None:
        """Its pidfd fired: the standby is gone (someone killed it). Reaped; the next
        restart forks, and makes a new standby afterwards."""
        spare, self.spare = self.spare, None
        if spare is not None:
            self._discard(spare)
        self.reaped()

    # ------------------------------------------------------------------ the end
    def close(self) -> None:
        """The supervisor stops: no standby from now on; the one waiting is reaped."""
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        spare, self.spare = self.spare, None
        if spare is not None:
            self._discard(spare)

    def _discard(self, spare: _Spare) -> None:
        self._unwatch(spare)
        spare.sock.close()  # EOF, for a standby the signal below would not reach first
        # At once: it holds nothing worth a grace period. Its pid cannot have been reused:
        # only this method reaps it (the reaping pass and the orphan scan spare it).
        kill_quietly(spare.pid)
        try:
            os.waitpid(spare.pid, 0)
        except ChildProcessError:  # reaped already
            pass
        if spare.pidfd is not None:
            os.close(spare.pidfd)

    def _unwatch(self, spare: _Spare) -> None:
        if spare.pidfd is not None:
            self.loop.remove_reader(spare.pidfd)


# ---------------------------------------------------------------------- in the standby
def _wait_to_become(sock: socket.socket, title: str, known: dict[str, tuple[Any, Any]],
                    processes: ProcessLauncher) -> int:
    """The standby's life (in the forked child, `fork_child` has closed what it
    inherited): the setup every worker does whatever it becomes, then wait for `Become`."""
    set_title(title)
    log_to_supervisor()  # loguru records go up whole (the handler writes to fd 2 when used)
    try:
        data, fds, _, _ = socket.recv_fds(sock, 4096, _FDS)
    except OSError:  # the channel broke: the supervisor is gone
        return 0
    sock.close()
    if not data or len(fds) != _FDS:
        # EOF: discarded, or its supervisor is gone. Fewer fds than sent: they could not
        # be installed here; without them this cannot be the child (its supervisor sees
        # EOF before Ready: a start failure, as for a fork that failed).
        for fd in fds:
            os.close(fd)
        return 0 if not data else 71
    try:
        go = _decode(data)
        spec, matrix = known[go.path]
    except (msgspec.DecodeError, KeyError):  # not from our supervisor's `hand_over`
        for fd in fds:
            os.close(fd)
        return 71
    ctrl, out_w, err_w = fds
    os.set_inheritable(ctrl, False)  # as a forked worker's (received without CLOEXEC)
    os.dup2(out_w, 1)
    os.dup2(err_w, 2)
    os.close(out_w)
    os.close(err_w)
    return processes.run_worker(spec, go.path, go.restarts, socket.socket(fileno=ctrl),
                                matrix, processes.plan_for(spec, matrix))
