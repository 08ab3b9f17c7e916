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

    def poll(self, timeout: float | None = None) -> list[tuple[int, Any, int]]:
        # One comprehension, the events looked up by mask: this runs once per call served.
        data = self.data
        return [(fd, data[fd], _EVENTS[mask & _EVENT_BITS])
                for fd, mask in self.poller.poll(None if timeout is None else timeout * 1000)
                if fd in data]

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
_POLL_WRITE = select.POLLOUT if hasattr(select, "poll") else 0
# Errors, hang-ups and a descriptor closed under us are reported as readable: the read sees
# EOF or the error. `_EVENTS[mask & _EVENT_BITS]` is the selectors-style events of a mask.
_EVENT_BITS = _POLL_READ | _POLL_WRITE | getattr(select, "POLLPRI", 0)
_EVENTS = [(READ if mask & _POLL_READ else 0) | (WRITE if mask & _POLL_WRITE else 0)
           for mask in range(_EVENT_BITS + 1)]
Poller = _PollPoller if hasattr(select, "poll") else _SelectorPoller
