"""A single-threaded event loop: one selector, a monotonic timer heap, a signal wake-up fd.

The loop sleeps in `select()` until the next timer is due or an fd is ready; it never
polls and never calls `time.sleep`. Signals are turned into fd events with
`signal.set_wakeup_fd`, so a handler runs between events, not in the middle of one.

Given `on_error`, the loop outlives its handlers: an exception escaping an fd callback, a
timer or a signal handler is handed to `on_error(exc, callback)` and the loop goes on with
the next event. A supervisor must not die of a bug in one handler: its children would be
left to its parent's restart, or, at the root, the whole tree would end.
"""

from __future__ import annotations

import heapq
import itertools
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from ..wire.wakeup import Wakeup

__all__ = ["Loop", "Timer"]


class Timer:
    """A scheduled callback; `cancel()` makes it a no-op."""

    __slots__ = ("when", "callback", "cancelled")

    def __init__(self, when: float, callback: Callable[[], Any]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Loop:
    def __init__(self, on_error: Callable[[Exception, Callable[..., Any]], Any] | None = None
                 ) -> None:
        self.selector = selectors.DefaultSelector()
        self._on_error = on_error
        self._timers: list[tuple[float, int, Timer]] = []
        self._seq = itertools.count()
        self._running = False
        self._signal_handlers: dict[int, Callable[[int], Any]] = {}
        self._signals: Wakeup | None = None  # carries the numbers of signals that arrived

    # fds -----------------------------------------------------------------------------
    def add_reader(self, fileobj: Any, callback: Callable[[], Any]) -> None:
        self.selector.register(fileobj, selectors.EVENT_READ, callback)

    def remove_reader(self, fileobj: Any) -> None:
        try:
            self.selector.unregister(fileobj)
        except (KeyError, ValueError):  # never registered, or its fd is already closed
            pass

    def add_writer(self, fileobj: Any, callback: Callable[[], Any]) -> None:
        """Call `callback` whenever `fileobj` is writable (an fd is watched one way only)."""
        self.selector.register(fileobj, selectors.EVENT_WRITE, callback)

    remove_writer = remove_reader

    # timers --------------------------------------------------------------------------
    def call_later(self, delay: float, callback: Callable[[], Any]) -> Timer:
        timer = Timer(time.monotonic() + max(0.0, delay), callback)
        heapq.heappush(self._timers, (timer.when, next(self._seq), timer))
        return timer

    def call_soon(self, callback: Callable[[], Any]) -> Timer:
        return self.call_later(0.0, callback)

    # signals -------------------------------------------------------------------------
    def add_signal(self, signum: int, callback: Callable[[int], Any]) -> None:
        """Run `callback(signum)` from the loop when `signum` arrives (main thread only)."""
        if self._signals is None:
            self._signals = Wakeup()
            signal.set_wakeup_fd(self._signals.send_fileno(), warn_on_full_buffer=False)
            self.add_reader(self._signals.fileno(), self._read_signals)
        self._signal_handlers[signum] = callback
        # The Python-level handler does nothing: the wake-up fd carries the signal number.
        signal.signal(signum, lambda *_: None)

    def _read_signals(self) -> None:
        for signum in dict.fromkeys(self._signals.drain()):
            handler = self._signal_handlers.get(signum)
            if handler is not None:
                self._guarded(handler, signum)

    # running -------------------------------------------------------------------------
    def stop(self) -> None:
        self._running = False

    def run(self) -> None:
        """Run until `stop()` is called."""
        self._running = True
        while self._running:
            self.run_once()

    def run_once(self, max_wait: float | None = None) -> None:
        timeout = self._next_timeout()
        if max_wait is not None:
            timeout = max_wait if timeout is None else min(timeout, max_wait)
        for key, _ in self.selector.select(timeout):
            # An earlier callback in this batch may have unregistered (and closed) this
            # fd; calling it anyway would read from a closed or reused descriptor.
            if self.selector.get_map().get(key.fd) is not key:
                continue
            self._guarded(key.data)
            if not self._running and max_wait is None:
                return
        self._run_due_timers()

    def _next_timeout(self) -> float | None:
        while self._timers and self._timers[0][2].cancelled:
            heapq.heappop(self._timers)
        if not self._timers:
            return None
        return max(0.0, self._timers[0][0] - time.monotonic())

    def _run_due_timers(self) -> None:
        now = time.monotonic()
        while self._timers and self._timers[0][0] <= now:
            _, _, timer = heapq.heappop(self._timers)
            if not timer.cancelled:
                timer.cancelled = True
                self._guarded(timer.callback)

    def _guarded(self, callback: Callable[..., Any], *args: Any) -> None:
        if self._on_error is None:
            callback(*args)
            return
        try:
            callback(*args)
        except Exception as exc:  # a bug in one handler; see the module docstring
            self._on_error(exc, callback)
