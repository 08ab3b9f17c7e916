"""What a supervisor keeps of its children's output, and how a reader gets it.

    Capture (output.py) ──line──▶ ChildLog.write
                                    ├─▶ its log file(s)          (logfiles.ChildFile, when
                                    │                             [logs] dir is set)
                                    ├─▶ loguru: the tree's log    (no dir, or echo = true)
                                    └─▶ the tail: the last TAIL_LINES lines (TAIL_BYTES at
                                        most), numbered; readers waiting for a line are
                                        answered from the loop once it arrived

    `python -m supervisor logs PATH [-n N] [-f]` ──Logs──▶ the root ──▶ ... ──▶ the
    supervisor that captures PATH (`route`), which answers from the tail.

Reading is pulled, never pushed: a reader asks for the lines after the last one it got
(`Logs.after`), and with `wait` its request is parked until a line arrives (at most
`PARK_SECONDS`, then answered empty). A slow reader therefore costs the tree nothing but
the bounded tail: lines that fall out of it before the reader asks again are reported to
it as dropped (`LogChunk.dropped`), and nothing waits on the reader. Each answer holds at
most `CHUNK_BYTES` of text, so it fits a control socket's buffer.

The kept output lives in the process of the capturing supervisor: a restart of that
supervisor starts a new one (a new `epoch`), and a dynamic child's is dropped with it.
"""

from __future__ import annotations

import collections
import itertools
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import msgspec
from loguru import logger

from ..logoptions import LogOptions, prepare_dir
from ..wire import messages as P
from .logfiles import ChildFile, add_supervisor_file

if TYPE_CHECKING:
    import socket

    from .loop import Loop, Timer
    from .uplink import Uplink

__all__ = ["ChildLog", "ChildLogs", "configure", "install", "options", "route",
           "TAIL_LINES", "TAIL_BYTES", "PARK_SECONDS", "CHUNK_BYTES"]

TAIL_LINES = 500  # lines kept per child for `logs` (the most `-n` can show)
TAIL_BYTES = 256 * 1024  # ... and at most this much text
PARK_SECONDS = P.LOGS_WAIT  # a waiting reader is answered (empty) after this long
MAX_PARKED = 16  # waiting readers per child; the oldest is answered empty past this
CHUNK_BYTES = 64 * 1024  # text in one answer

_options: LogOptions | None = None
_epochs = itertools.count(1)


def configure(opts: LogOptions | None) -> None:
    """The tree's log options, set in the root before any child is forked (children
    inherit them)."""
    global _options
    _options = opts


def options() -> LogOptions | None:
    """The options `configure` set in this process (or a parent it was forked from)."""
    return _options


def install(opts: LogOptions | None) -> None:
    """In the root supervisor's process, before any child starts: check (or create) the
    log directory, send this process's log to `opts.file` too, and `configure`. Raises
    ConfigError when a directory is refused, OSError when the supervisor's file cannot be
    opened."""
    if opts is not None and opts.dir is not None:
        prepare_dir(opts.dir, opts.dir_mode)
    if opts is not None and opts.file is not None:
        add_supervisor_file(opts)
    configure(opts)


class ChildLog:
    """One child's output as its supervisor keeps it (see the module docstring)."""

    def __init__(self, path: str, loop: Loop) -> None:
        self.path = path
        self.loop = loop
        self.epoch = f"{os.getpid()}.{next(_epochs)}"
        self.tail: collections.deque[P.LogLine] = collections.deque()
        self.tail_bytes = 0
        self.next = 0  # the number the next line gets
        self.parked: list[tuple[socket.socket, P.Logs, Timer, Uplink]] = []
        self.wake_due = False
        # A deleted child's pipes may still hold its last lines: its file is closed once
        # the last capture reading them reached EOF.
        self.readers = 0
        self.forgotten = False
        opts = _options
        self.echo = opts is None or opts.dir is None or opts.echo
        self.file: ChildFile | None = None
        if opts is not None and opts.dir is not None:
            self._open(opts)

    def _open(self, opts: LogOptions) -> None:
        try:
            self.file = ChildFile(self.path, opts)
        except (OSError, ValueError) as exc:  # ValueError: ConfigError (a refused directory)
            self._file_broken(exc)

    def _file_broken(self, exc: Exception) -> None:
        # The child runs on; its lines go to the tree's log instead, and this is said once.
        broken, self.file, self.echo = self.file, None, True
        if broken is not None:
            try:
                broken.close()
            except OSError:  # the same fault again (a full disk): the descriptor is closed
                pass
        logger.bind(child=self.path).error(
            "[{}] cannot write its log file: {}; its output goes to this log instead",
            self.path, exc)

    # ------------------------------------------------------------------ writing
    def write(self, stream: str, level: str, text: str,
              extra: Mapping[str, Any] | None = None) -> None:
        """One line the child wrote (`stream` stdout or stderr), or one of its own log
        records (`stream` log, with the record's bound fields as `extra`)."""
        now = time.time()
        if self.file is not None:
            try:
                self.file.write(now, stream, level, text, extra)
            except OSError as exc:  # a full disk, a file removed under us and refused
                self._file_broken(exc)
        if self.echo:
            logger.bind(**{**(extra or {}), "child": self.path, "stream": stream}).log(
                level, "[{}] {}", self.path, text)
        self._keep(P.LogLine(self.next, now, stream, level, text))

    def _keep(self, line: P.LogLine) -> None:
        self.next += 1
        self.tail.append(line)
        self.tail_bytes += len(line.message)
        while len(self.tail) > TAIL_LINES or (self.tail_bytes > TAIL_BYTES and len(self.tail) > 1):
            self.tail_bytes -= len(self.tail.popleft().message)
        if self.parked and not self.wake_due:
            # Answered from the loop, once per pass: a burst of lines is one answer.
            self.wake_due = True
            self.loop.call_soon(self._wake)

    def attach(self) -> None:
        """A capture of one of its processes started reading."""
        self.readers += 1

    def detach(self) -> None:
        """That capture reached EOF on both pipes."""
        self.readers -= 1
        if self.forgotten and self.readers <= 0:
            self.close()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        for origin, msg, timer, uplink in self.parked:
            timer.cancel()
            uplink.relay(origin, P.Response(id=msg.id, value=self._chunk(msg)))
        self.parked.clear()

    # ------------------------------------------------------------------ reading
    def answer(self, msg: P.Logs, origin: socket.socket, uplink: Uplink) -> None:
        """Answer a `Logs` request now, or park it until a line arrives (`wait`)."""
        chunk = self._chunk(msg)
        if chunk.lines or chunk.dropped or not msg.wait:
            uplink.relay(origin, P.Response(id=msg.id, value=chunk))
            return
        if len(self.parked) >= MAX_PARKED:  # most likely readers that left: let one go
            self._release(self.parked[0])
        timer = self.loop.call_later(PARK_SECONDS, lambda: self._release(parked))
        parked = (origin, msg, timer, uplink)
        self.parked.append(parked)

    def _release(self, parked: tuple[Any, P.Logs, Any, Uplink]) -> None:
        if parked not in self.parked:
            return
        self.parked.remove(parked)
        origin, msg, timer, uplink = parked
        timer.cancel()
        uplink.relay(origin, P.Response(id=msg.id, value=self._chunk(msg)))

    def _wake(self) -> None:
        self.wake_due = False
        for parked in list(self.parked):
            self._release(parked)

    def _chunk(self, msg: P.Logs) -> P.LogChunk:
        first = self.tail[0].seq if self.tail else self.next
        if msg.after < 0:
            count = max(0, min(msg.lines, TAIL_LINES))
            start, dropped = max(first, self.next - count), 0
        else:
            after = msg.after if msg.epoch == self.epoch else 0  # another epoch: from its start
            after = min(after, self.next)
            start, dropped = max(first, after), max(0, first - after)
        lines: list[P.LogLine] = []
        size = 0
        for line in itertools.islice(self.tail, start - first, None):
            size += len(line.message)
            if lines and size > CHUNK_BYTES:
                break
            lines.append(line)
        following = lines[-1].seq + 1 if lines else start
        return P.LogChunk(epoch=self.epoch, next=following, dropped=dropped, lines=lines)


class ChildLogs:
    """The kept output of one supervisor's workers and programs, by path."""

    def __init__(self, loop: Loop) -> None:
        self.loop = loop
        self.logs: dict[str, ChildLog] = {}

    def get(self, path: str) -> ChildLog:
        log = self.logs.get(path)
        if log is None:
            log = self.logs[path] = ChildLog(path, self.loop)
        return log

    def forget(self, path: str) -> None:
        """The child was deleted: its kept output (and its open file) go with it."""
        log = self.logs.pop(path, None)
        if log is not None:
            log.forgotten = True
            if log.readers <= 0:
                log.close()

    def close(self) -> None:
        """The supervisor is leaving: close every file, answer every waiting reader."""
        for log in self.logs.values():
            log.close()


def route(children: Any, uplink: Uplink, msg: P.Logs, origin: socket.socket) -> None:
    """A `Logs` request at this supervisor (`children`: its `children.Children`, which
    holds `logs`): answered here for one of its workers or programs, forwarded to the
    child supervisor on the way otherwise."""
    first, _, rest = msg.path.strip("/").partition("/")
    slot = children.find(first) if first else None
    full = "/".join(p for p in (children.path, msg.path.strip("/")) if p)
    error = None
    if slot is None:
        error = ("NoSuchChild", f"no child {full!r}" if full else
                 "the root is a supervisor: logs shows a worker's or a program's output")
    elif rest and slot.kind != "supervisor":
        error = ("NoSuchChild", f"no child {full!r}: {slot.path!r} is a worker")
    elif not rest and slot.kind == "supervisor":
        error = ("NoSuchChild", f"{full!r} is a supervisor: logs shows a worker's or a "
                 "program's output (a supervisor's own lines are in the tree's log)")
    elif rest and (slot.pid is None or slot.ctrl is None):
        error = ("NotRunning", f"{slot.path!r} is not running (state {slot.state}): the "
                 "output of its children went with it")
    if error is not None:
        uplink.reply_error(origin, msg.id, error[0], error[1], path=full)
        return
    if rest:
        children.forward(slot, msgspec.structs.replace(msg, path=rest), origin, msg.id)
        return
    children.logs.get(slot.path).answer(msg, origin, uplink)
