"""Log capture: a child's stdout and stderr, read by its supervisor and logged line by line.

    child fd 1 ──pipe──▶ supervisor loop ──▶ ChildLog  (stream=stdout)
    child fd 2 ──pipe──▶ supervisor loop ──▶ ChildLog  (stream=stderr, or a worker's own
                                                         record: stream=log)

The child's `ChildLog` (childlog.py) writes each line to the child's log file, to loguru
(the tree's log, tagged ``child=<path>``) or both, and keeps the last ones for `logs`.

The read ends are non-blocking and read from the supervisor's selector loop, so a chatty
child never blocks it. A pipe is read until EOF, not until the child's exit is reaped: the
last lines a crashing child wrote are still in the pipe when its pidfd fires, and they are
logged all the same (EOF comes once every writer, including the child's own
subprocesses, has closed it). A line longer than `MAX_LINE` is logged in pieces.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from ..runtime.log import parse

if TYPE_CHECKING:
    from collections.abc import Callable

    from .childlog import ChildLog
    from .loop import Loop

__all__ = ["Capture", "MAX_LINE"]

MAX_LINE = 64 * 1024
_LEVELS = {"TRACE", "DEBUG", "INFO", "SUCCESS", "WARNING", "ERROR", "CRITICAL"}


class Capture:
    """The two pipes of one child process, whose lines go to `log`. Make it before fork;
    call `in_child()` in the child and `in_parent(loop, done)` in the supervisor."""

    def __init__(self, path: str, log: ChildLog) -> None:
        self.path = path
        self.log = log
        self.out_r, self.out_w = os.pipe()
        try:
            self.err_r, self.err_w = os.pipe()
        except OSError:  # out of fds: release the first pipe, or it leaks per attempt
            os.close(self.out_r)
            os.close(self.out_w)
            raise
        self.partial: dict[int, bytes] = {self.out_r: b"", self.err_r: b""}
        self.streams = {self.out_r: "stdout", self.err_r: "stderr"}
        self.loop: Loop | None = None
        self.done: Callable[[Capture], None] | None = None

    def discard(self) -> None:
        """The fork failed: close all four ends."""
        for fd in (self.out_r, self.out_w, self.err_r, self.err_w):
            try:
                os.close(fd)
            except OSError:  # closed already
                pass
        self.partial.clear()

    def child_fds(self) -> list[int]:
        """The four ends the child needs until `in_child` has dup2'd them."""
        return [self.out_r, self.out_w, self.err_r, self.err_w]

    def in_child(self) -> None:
        os.dup2(self.out_w, 1)
        os.dup2(self.err_w, 2)
        for fd in (self.out_r, self.err_r, self.out_w, self.err_w):
            os.close(fd)

    def in_parent(self, loop: Loop, done: Callable[[Capture], None]) -> None:
        """Read both pipes from `loop`; `done(self)` once both are finished."""
        os.close(self.out_w)
        os.close(self.err_w)
        self.loop = loop
        self.done = done
        self.log.attach()
        for fd in self.partial:
            os.set_blocking(fd, False)
            loop.add_reader(fd, lambda fd=fd: self._read(fd))

    def _read(self, fd: int) -> None:
        try:
            data = os.read(fd, 65536)
        except BlockingIOError:  # spurious wake-up
            return
        except OSError:  # EIO and the like: treat as the end of the stream
            data = b""
        if data:
            self._consume(fd, data)
        else:
            self._finish(fd)

    def _consume(self, fd: int, data: bytes) -> None:
        *lines, rest = (self.partial[fd] + data).split(b"\n")
        while len(rest) > MAX_LINE:
            lines.append(rest[:MAX_LINE])
            rest = rest[MAX_LINE:]
        self.partial[fd] = rest
        for line in lines:
            self._log(fd, line)

    def _finish(self, fd: int) -> None:
        """EOF (or no more waiting): log the unterminated last line, close the pipe."""
        if self.partial.get(fd):
            self._log(fd, self.partial[fd])
        self.partial.pop(fd, None)
        if self.loop is not None:
            self.loop.remove_reader(fd)
        os.close(fd)
        if not self.partial and self.loop is not None:
            self.log.detach()
            self.done(self)

    def _log(self, fd: int, line: bytes) -> None:
        text = line.decode("utf-8", "replace").rstrip("\r")
        stream = self.streams[fd]
        record = parse(text) if stream == "stderr" else None
        if record is None:  # plain output: logged as it is, at INFO
            self.log.write(stream, "INFO", text)
            return
        # A record of the worker's own logger (`runtime.log`): its level and fields.
        message = record["message"]
        if record.get("exception"):
            message = f"{message}\n{record['exception'].rstrip()}"
        extra = record.get("extra") if isinstance(record.get("extra"), dict) else {}
        level = record.get("level") if record.get("level") in _LEVELS else "INFO"
        self.log.write("log", level, message, extra)

    def close(self) -> None:
        """The supervisor is leaving: log what can be read now, then drop both pipes."""
        for fd in list(self.partial):
            while fd in self.partial:
                try:
                    data = os.read(fd, 65536)
                except BlockingIOError:
                    data = b""  # nothing more now, and nobody will read it later
                except OSError:
                    data = b""
                if data:
                    self._consume(fd, data)
                else:
                    self._finish(fd)
