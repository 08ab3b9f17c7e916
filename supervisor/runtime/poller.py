"""A minimal readiness poller for the worker's serving loop: `poll(2)` where it exists.

`selectors` costs a few microseconds of Python per wake-up (key objects, maps, lists); on
the call path, where a whole round trip is ~15 us, that is a large share. This poller
keeps a plain dict of fd -> data and returns ``(fd, data, events)`` triples. Elsewhere it
falls back to `selectors` with the same interface.

`poll` rather than `epoll`: a worker polls a handful of descriptors (its control channel
and one channel per calling process), where the two cost the same per wake-up, and `poll`
needs no descriptor of its own, which a thousand idle workers would each hold.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

__all__ = ["Poller", "READ", "WRITE"]

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class _PollPoller:
    def __init__(self) -> None:
        self.poller = select.poll()
        self.data: dict[int, Any] = {}

    @staticmethod
    def _mask(events: int) -> int:
        return (select.POLLIN if events & READ else 0) | (
            select.POLLOUT if events & WRITE else 0)

    def register(self, fd: int, events: int, data: Any) -> None:
        self.poller.register(fd, self._mask(events))
        self.data[fd] = data

    def modify(self, fd: int, events: int, data: Any) -> None:
        self.poller.modify(fd, self._mask(events))
        self.data[fd] = data

    def unregister(self, fd: int) -> None:
        if self.data.pop(fd, _MISSING) is not _MISSING:
            self.poller.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready = []
        # Errors, hang-ups and a descriptor closed under us are reported as readable: the
        # read sees EOF or the error.
        for fd, mask in self.poller.poll(None if timeout is None else timeout * 1000):
            data = self.data.get(fd, _MISSING)
            if data is not _MISSING:
                events = (READ if mask & _POLL_READ else 0) | (
                    WRITE if mask & select.POLLOUT else 0)
                ready.append((fd, data, events))
        return ready

    def values(self) -> list[Any]:
        return list(self.data.values())

    def registered(self, fd: int, data: Any) -> bool:
        return self.data.get(fd, _MISSING) is data


class _SelectorPoller:
    def __init__(self) -> None:
        self.selector = selectors.DefaultSelector()

    def register(self, fd: int, events: int, data: Any) -> None:
        self.selector.register(fd, events, data)

    def modify(self, fd: int, events: int, data: Any) -> None:
        self.selector.modify(fd, events, data)

    def unregister(self, fd: int) -> None:
        try:
            self.selector.unregister(fd)
        except KeyError:  # not registered
            pass

    def poll(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        return [(key.fd, key.data, mask) for key, mask in self.selector.select(timeout)]

    def values(self) -> list[Any]:
        return [key.data for key in self.selector.get_map().values()]

    def registered(self, fd: int, data: Any) -> bool:
        key = self.selector.get_map().get(fd)
        return key is not None and key.data is data


_MISSING = object()
_POLL_READ = (select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL
              if hasattr(select, "poll") else 0)
Poller = _PollPoller if hasattr(select, "poll") else _SelectorPoller
