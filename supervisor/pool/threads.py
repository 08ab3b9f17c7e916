"""The pool client's threads: the watcher, and the timers.

`Timers`: callbacks at monotonic times, run in order on one thread that exists only while a
callback is due (progress checks of busy links, retirement of idle overflow workers,
delayed re-sends). Nothing polls.

`Watcher`: one thread that reads every link no caller is reading.

    blocking caller ── holds a link's reading role while it waits for its own reply
    watcher thread  ── epoll over the links nobody reads: async replies, a leaving
                       worker's Closing notice, EOF of a worker that died while idle

Invariant (under the pool's lock): an open link nobody is reading is *armed*: registered
for one readiness event (EPOLLONESHOT). So a reply to an async call, a Closing notice on
an idle link (read at once: the worker may leave without waiting out its grace, and no
call is sent into a channel it no longer reads) and the EOF of a worker that died while
idle are all seen, without a thread per link and without polling. A blocking caller
disarms the link when it registers its call (else its own reply would also wake this
thread, a hand-off for nothing) and re-arms it when it leaves.

`arm`/`disarm` only record the wanted state, under the pool's lock; `apply` makes the
kernel match it, after that lock is released: a system call releases the GIL, and doing
it under the pool's lock would make every other caller queue on that lock meanwhile.
`apply` reads the latest wanted state under the link's `elock`, so whatever order threads
apply in, the kernel ends in the last state asked for. The watcher marks a link's kernel
registration spent (`kernel_armed = False`) as soon as its one-shot event fires, before it
looks at the link, so an `apply` racing with the event is redone by the watcher's own.

Without epoll (not Linux), a poll() loop rebuilt on each change stands in: every arm or
disarm then wakes the watcher through its wake socket. Slower, same behaviour.
"""

from __future__ import annotations

import heapq
import itertools
import select
import threading
import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from ..wire.wakeup import Wakeup
from .link import Link

__all__ = ["Watcher", "Timers"]

_EPOLL = hasattr(select, "epoll")
_JOIN_TIMEOUT = 5.0  # the thread only ever waits for the pool state's lock; this is a backstop


class Watcher:
    """Reads the links of one pool that no caller is reading (see the module doc):
    `on_ready(link)` runs on its thread for each event; `lock` is the pool state's."""

    def __init__(self, name: str, lock: threading.Lock,
                 on_ready: Callable[[Link], None]) -> None:
        self.name = name
        self.lock = lock
        self.on_ready = on_ready
        self.links: dict[int, Link] = {}  # fd -> link, under the pool state's lock
        self.wake = Wakeup()
        self.thread: threading.Thread | None = None
        self.closed = False
        if _EPOLL:
            self.ep = select.epoll()
            self.ep.register(self.wake.fileno(), select.EPOLLIN)

    # ------------------------------------------------------------------ registration
    def add(self, link: Link) -> None:
        """Watch a new link (under the pool state's lock); it is armed once `apply`d."""
        self.links[link.fd] = link
        with link.elock:
            if _EPOLL:
                self.ep.register(link.fd, select.EPOLLONESHOT)  # registered, not armed
            link.registered = True
        link.armed = True
        if self.thread is None and not self.closed:
            self.thread = threading.Thread(target=self._run, daemon=True,
                                           name=self.name)
            self.thread.start()

    def arm(self, link: Link) -> None:
        """Want the link's next event (under the pool state's lock; then `apply`)."""
        link.armed = True

    def disarm(self, link: Link) -> None:
        """A caller reads the link itself (under the pool state's lock; then `apply`)."""
        link.armed = False

    def apply(self, link: Link) -> None:
        """Make the kernel registration match the wanted state (outside the pool state's lock)."""
        if not _EPOLL:
            self._poke()  # the poll() loop rebuilds its set from the wanted states
            return
        with link.elock:
            want = link.armed
            out = want and bool(link.outbuf)
            if not link.registered or (want, out) == (link.kernel_armed, link.kernel_out):
                return
            events = select.EPOLLONESHOT
            if want:
                events |= select.EPOLLIN | (select.EPOLLOUT if out else 0)
            self.ep.modify(link.fd, events)
            link.kernel_armed, link.kernel_out = want, out

    def remove(self, link: Link) -> None:
        """Forget a link before its fds are closed (under the pool state's lock)."""
        if self.links.get(link.fd) is not link:
            return  # removed already; its fd number may belong to a newer link by now
        del self.links[link.fd]
        link.armed = False
        with link.elock:
            link.registered = False
            if _EPOLL:
                self.ep.unregister(link.fd)
        if not _EPOLL:
            self._poke()

    def close(self) -> None:
        """The tree is gone: end the thread and release our descriptors before returning
        (the caller has set `closed` under the pool state's lock, so no thread starts now)."""
        self.closed = True
        thread = self.thread
        if thread is None:
            self._close_fds()
        elif thread is not threading.current_thread():
            self._poke()
            thread.join(_JOIN_TIMEOUT)

    def _close_fds(self) -> None:
        if _EPOLL:
            self.ep.close()
        self.wake.close()

    def _poke(self) -> None:
        self.wake.set()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        while not self.closed:
            for fd in self._wait():
                if fd == self.wake.fileno():
                    self.wake.drain()
                    continue
                with self.lock:
                    link = self.links.get(fd)
                if link is None:
                    continue
                with link.elock:
                    link.kernel_armed = False  # a one-shot event: spent (see the doc)
                self.on_ready(link)
        self._close_fds()

    def _wait(self) -> list[int]:
        if _EPOLL:
            return [fd for fd, _ in self.ep.poll()]
        poller = select.poll()
        poller.register(self.wake.fileno(), select.POLLIN)
        with self.lock:
            for fd, link in self.links.items():
                if link.armed:
                    poller.register(fd, select.POLLIN | (select.POLLOUT if link.outbuf else 0))
        ready = [fd for fd, _ in poller.poll()]
        with self.lock:
            for fd in ready:
                link = self.links.get(fd)
                if link is not None:
                    link.armed = False  # one-shot, as with epoll
        return ready


class Timers:
    """Callbacks at monotonic times, run in order on one thread that exists only while
    a callback is due (a condition wait until the earliest one, never a polling loop)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition(threading.Lock())
        self.heap: list[tuple[float, int, Callable[[], Any]]] = []
        self.seq = itertools.count()
        self.running = False

    def call_at(self, when: float, fn: Callable[[], Any]) -> None:
        with self.cond:
            heapq.heappush(self.heap, (when, next(self.seq), fn))
            if self.running:
                self.cond.notify()
                return
            self.running = True
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self.call_at(time.monotonic(), fn)

    def _run(self) -> None:
        with self.cond:
            while self.heap:
                when, _, fn = self.heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self.cond.wait(delay)
                    continue
                heapq.heappop(self.heap)
                self.cond.release()
                try:
                    fn()
                except Exception:  # a failing callback must not stop the timers after it
                    logger.exception("pool timer callback {!r} failed", fn)
                finally:
                    self.cond.acquire()
            self.running = False
