"""A minimal readiness poller for the worker's serving loop: `epoll` where it exists.

`selectors` costs a few microseconds of Python per wake-up (key objects, maps, lists); on
the call path, where a whole round trip is ~15 us, that is a large share. This poller
keeps a plain dict of fd -> data and returns ``(data, events)`` pairs. Elsewhere it falls
back to `selectors` with the same interface.
"""

from __future__ import annotations

import select
import selectors
from typing import Any

__all__ = ["Poller", "READ", "WRITE"]

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class _EpollPoller:
    def __init__(self) -> None:
        self.epoll = select.epoll()
        self.data: dict[int, Any] = {}

    @staticmethod
    def _mask(events: int) -> int:
        return (select.EPOLLIN if events & READ else 0) | (
            select.EPOLLOUT if events & WRITE else 0)

    def register(self, fd: int, events: int, data: Any) -> None:
        self.epoll.register(fd, self._mask(events))
        self.data[fd] = data

    def modify(self, fd: int, events: int, data: Any) -> None:
        self.epoll.modify(fd, self._mask(events))
        self.data[fd] = data

    def unregister(self, fd: int) -> None:
        if self.data.pop(fd, _MISSING) is not _MISSING:
            self.epoll.unregister(fd)

    def poll(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        ready = []
        # Errors and hang-ups are reported as readable: the read sees EOF or the error.
        for fd, mask in self.epoll.poll(-1 if timeout is None else timeout):
            data = self.data.get(fd, _MISSING)
            if data is not _MISSING:
                events = (READ if mask & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR)
                          else 0) | (WRITE if mask & select.EPOLLOUT else 0)
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
Poller = _EpollPoller if hasattr(select, "epoll") else _SelectorPoller
