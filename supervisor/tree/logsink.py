"""A log sink on stderr that never blocks a supervisor's loop.

A supervisor process logs (its own lines and every line its children write) to fd 2. When
fd 2 is a pipe or a terminal nobody reads (`| less` paused, Ctrl-S, a stalled collector),
a plain write waits for the reader, and the whole loop waits with it: a killed worker
stays a zombie, calls go unanswered, a chatty child blocks on its own full output pipe.
This sink never waits:

    loguru ─▶ StderrSink.write ─▶ queue (bounded) ─▶ fd 2, as much as it takes right now
                                      ▲
       loop.add_writer(fd) ───────────┘ the rest, once the fd is writable again

How "right now" is done depends on what fd 2 is:

- a regular file or a block device: a plain write (it never waits for a reader);
- a socket (journald's stream): send with MSG_DONTWAIT, a flag of that call only;
- a pipe, FIFO or terminal: a file description of our own, opened through
  /proc/self/fd/2 with O_NONBLOCK. Setting O_NONBLOCK on fd 2 itself is not an option:
  its description is shared with the shell and with other processes, whose writes would
  then fail with EAGAIN;
- where that reopen is refused (no /proc, a pipe another user created): poll(fd 2,
  POLLOUT, 0) before each write of at most PIPE_BUF bytes (a pipe reported writable has
  at least that much room).

Lines that do not fit in the queue (`LIMIT` bytes) are dropped and counted; once the
queue has drained, one warning says how many. Whole lines are written together, at most
PIPE_BUF bytes at a time, so lines of other processes sharing the pipe (child
supervisors) are not cut into ours.

Which processes use it: a process that installs the sink (the service root, an App's root)
is non-blocking at once; a child supervisor switches it on when it attaches its loop.
Everywhere else after a fork (a worker) it writes plainly and may wait: a worker's fd 2 is a
pipe its supervisor keeps reading, and waiting there is the backpressure we want (nothing
dropped). Supervisor processes are single-threaded: the queue has no lock of its own
(loguru serializes writes; the loop's flush runs between them, on the same thread).
"""

from __future__ import annotations

import atexit
import collections
import os
import select
import socket
import stat
import time
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .loop import Loop

__all__ = ["StderrSink", "stderr_sink", "LIMIT", "PIPE_BUF"]

LIMIT = 1024 * 1024  # bytes of log lines held while stderr is not being read
PIPE_BUF = getattr(select, "PIPE_BUF", 512)  # POSIX guarantees at least 512
EXIT_WAIT = 0.5  # seconds a leaving process gives a stuck stderr for its last lines


class _Output(Protocol):
    fd: int  # what the loop waits on for "writable"

    def send(self, data: bytes) -> int:
        """Write what fits now; the number of bytes written (0: it would block)."""

    def close(self) -> None: ...


class _Plain:
    """A regular file (or a worker's pipe): an ordinary write, complete when it returns."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, data: bytes) -> int:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view):]
        return len(data)

    def close(self) -> None:
        pass


class _Socket:
    """A socket: MSG_DONTWAIT makes this one send non-blocking, not the shared socket."""

    def __init__(self, fd: int) -> None:
        self.sock = socket.socket(fileno=os.dup(fd))
        self.fd = self.sock.fileno()

    def send(self, data: bytes) -> int:
        try:
            return self.sock.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        self.sock.close()


class _Private:
    """Our own non-blocking open file description of the pipe or terminal on fd 2."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def send(self, data: bytes) -> int:
        try:
            return os.write(self.fd, data)
        except BlockingIOError:
            return 0

    def close(self) -> None:
        os.close(self.fd)


class _Polled:
    """fd 2 itself, written only when poll says it has room, PIPE_BUF bytes at most."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.poll = select.poll()
        self.poll.register(fd, select.POLLOUT)

    def send(self, data: bytes) -> int:
        if not any(ev & (select.POLLOUT | select.POLLERR) for _, ev in self.poll.poll(0)):
            return 0
        return os.write(self.fd, data[:PIPE_BUF])

    def close(self) -> None:
        pass


def _open_output(fd: int) -> _Output:
    """The non-blocking way to write to `fd` (see the module docstring)."""
    st = os.fstat(fd)
    if stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode):
        return _Plain(fd)
    if stat.S_ISSOCK(st.st_mode):
        try:
            return _Socket(fd)
        except OSError:  # EMFILE: no descriptor for the dup; poll fd 2 itself
            return _Polled(fd)
    try:
        private = os.open(f"/proc/self/fd/{fd}",
                          os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:  # no /proc, EACCES (someone else's pipe), ENXIO (a FIFO with no reader)
        return _Polled(fd)
    mine = os.fstat(private)
    if (mine.st_dev, mine.st_ino) != (st.st_dev, st.st_ino):  # not the same file after all
        os.close(private)
        return _Polled(fd)
    return _Private(private)


class StderrSink:
    """A loguru sink (a file-like object) writing to fd 2 without ever waiting.

    `attach(loop)` lets the loop finish writing queued lines once fd 2 is writable, and
    report dropped ones; `detach()` gives a leaving process's last lines a bounded chance.
    """

    def __init__(self, fd: int = 2, limit: int = LIMIT) -> None:
        self.fd = fd
        self.limit = limit
        self.queue: collections.deque[bytes] = collections.deque()
        self.queued = 0  # bytes in `queue`
        self.dropped = 0  # lines dropped since the last report
        self.blocking = False  # a plain write that may wait: a worker after fork
        self.broken = False  # the reader is gone (EPIPE) or fd 2 is unusable: discard
        self.loop: Loop | None = None
        self.out: _Output | None = None  # opened on first use, per process
        self.watched: int | None = None  # the fd registered with the loop for writing
        self.report_due = False
        os.register_at_fork(after_in_child=self._after_fork)

    # ---------------------------------------------------------------- loguru's side
    def write(self, message: str) -> None:
        """One formatted log message (called by loguru, under its handler lock)."""
        if self.broken:
            return
        data = message.encode("utf-8", "backslashreplace")
        if self.blocking:
            self._send_all(data)
            return
        if self.queued and self.queued + len(data) > self.limit:
            self.dropped += 1
            return
        self.queue.append(data)
        self.queued += len(data)
        self._flush()
        if not self.queue and self.dropped and self.loop is not None and not self.report_due:
            # Logging the report from inside loguru's handler would re-enter it: later.
            self.report_due = True
            self.loop.call_soon(self._report)

    def isatty(self) -> bool:
        """For loguru's colour default: colour only on a terminal."""
        try:
            return os.isatty(self.fd)
        except OSError:
            return False

    def stop(self) -> None:
        """Called by loguru when the handler is removed: the bounded last flush, then the
        sink lets go of its own descriptor (fd 2 itself is not ours to close)."""
        self.detach()
        if self.out is not None:
            self.out.close()
            self.out = None

    # ---------------------------------------------------------------- the loop's side
    def attach(self, loop: Loop) -> None:
        """Write from now on without waiting; `loop` finishes what fd 2 did not take."""
        self.blocking = False
        self.loop = loop
        self._flush()

    def detach(self, wait: float = EXIT_WAIT) -> None:
        """Leave the loop: write what is queued within `wait` seconds, drop the rest."""
        self._unwatch()
        self.loop = None
        deadline = time.monotonic() + wait
        while self.queue and not self.broken:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if self._wait_writable(remaining):
                self._flush()
        if self.dropped and not self.queue:
            self._report()

    # ---------------------------------------------------------------- internals
    def _output(self) -> _Output:
        if self.out is None:
            self.out = _open_output(self.fd)
        return self.out

    def _send_all(self, data: bytes) -> None:
        try:
            _Plain(self.fd).send(data)
        except OSError:  # EPIPE, EBADF: nobody can read us any more
            self.broken = True

    def _flush(self) -> None:
        """Write queued lines while fd 2 takes them; watch it for the rest."""
        try:
            out = self._output()
            while self.queue:
                chunk = self._take(PIPE_BUF)
                sent = out.send(chunk)
                if sent < len(chunk):
                    self.queue.appendleft(chunk[sent:])
                    self.queued += len(chunk) - sent
                    break
        except OSError:  # EPIPE (the reader left), EBADF, EIO (a hung-up terminal)
            self._give_up()
            return
        if self.queue:
            self._watch()
        else:
            self._unwatch()

    def _take(self, size: int) -> bytes:
        """Whole lines from the queue's head, up to `size` bytes (at least one line)."""
        parts = [self.queue.popleft()]
        total = len(parts[0])
        while self.queue and total + len(self.queue[0]) <= size:
            total += len(self.queue[0])
            parts.append(self.queue.popleft())
        self.queued -= total
        return b"".join(parts)

    def _give_up(self) -> None:
        self.broken = True
        self.queue.clear()
        self.queued = 0
        self._unwatch()

    def _watch(self) -> None:
        if self.loop is None or self.watched is not None:
            return
        self.watched = self._output().fd
        self.loop.add_writer(self.watched, self._on_writable)

    def _unwatch(self) -> None:
        if self.watched is not None and self.loop is not None:
            self.loop.remove_writer(self.watched)
        self.watched = None

    def _on_writable(self) -> None:
        self._flush()
        if not self.queue and self.dropped:
            self._report()

    def _report(self) -> None:
        self.report_due = False
        if not self.dropped or self.queue:
            return  # drained and reported already, or stuck again: report once it drains
        count, self.dropped = self.dropped, 0
        from loguru import logger

        logger.warning("dropped {} log lines while stderr was not being read", count)

    def _wait_writable(self, timeout: float) -> bool:
        poll = select.poll()
        poll.register(self._output().fd, select.POLLOUT)
        return bool(poll.poll(timeout * 1000))

    def _after_fork(self) -> None:
        # The child's copy of the queue is the parent's to write; our private description
        # is the parent's copy too (closing it here does not touch the parent's).
        if self.out is not None:
            try:
                self.out.close()
            except OSError:  # closed already
                pass
        self.out = None
        self.queue.clear()
        self.queued = 0
        self.dropped = 0
        self.loop = None
        self.watched = None
        self.report_due = False
        self.broken = False
        self.blocking = True


_sink: StderrSink | None = None


def stderr_sink() -> StderrSink:
    """This process's sink on fd 2 (made on first use; inherited by forked children)."""
    global _sink
    if _sink is None:
        _sink = StderrSink()
        atexit.register(_sink.detach)
    return _sink
