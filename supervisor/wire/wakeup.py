"""A wake-up channel: one thread (or a signal handler) tells a poll loop to look again.

Used wherever a loop sleeps in poll/epoll/select and something outside it must interrupt
the sleep: a worker's serving loop (a new call channel, a stop request), a pool link's
reader (bytes waiting to be flushed), the pool's watcher (links to re-arm, the tree's
end), a supervisor's loop (a signal arrived).

A socketpair rather than a pipe: once closed, a socket object refuses writes, whereas a
closed pipe's fd number may already belong to another file, so a late `set()` from another
thread can never write into someone else's descriptor. Both ends are non-blocking: a
`set()` on a full channel is dropped, since one pending wake-up is as good as many.
"""

from __future__ import annotations

import socket

__all__ = ["Wakeup"]


class Wakeup:
    """`set()` wakes whoever polls `fileno()`; `drain()` consumes what is pending and
    returns it (a signal wake-up carries the signal numbers as bytes)."""

    __slots__ = ("_recv", "_send")

    def __init__(self) -> None:
        self._recv, self._send = socket.socketpair()
        self._recv.setblocking(False)
        self._send.setblocking(False)

    def fileno(self) -> int:
        """The end to poll for reading."""
        return self._recv.fileno()

    def send_fileno(self) -> int:
        """The end that wakes (for `signal.set_wakeup_fd`)."""
        return self._send.fileno()

    def set(self) -> None:
        try:
            self._send.send(b"!")
        except OSError:  # full of wake-ups already (one is enough), or closed: moot
            pass

    def drain(self) -> bytes:
        chunks = []
        try:
            while chunk := self._recv.recv(4096):
                chunks.append(chunk)
        except OSError:  # drained (BlockingIOError), or closed under us
            pass
        return b"".join(chunks)

    def close(self) -> None:
        self._recv.close()
        self._send.close()
