"""The pool's futures: a `concurrent.futures.Future` that builds its lock only when needed.

`Future()` builds a `threading.Condition` up front: an RLock, a deque and five bound
methods, a dozen objects the cyclic GC has to track for every call. Under `submit` load
that tracking was 40% of the caller's CPU (measured: 78k calls/s with the collector on,
130k/s with it off). Most pool futures are settled before anybody waits on them, so
`PoolFuture` makes the Condition (and its waiter and callback lists) on first use, and its
state changes that no waiter can observe yet (running, result, exception, all before any condition exists) skip it.

Why this is safe: a waiter (`result`/`exception` with a wait, `add_done_callback`,
`concurrent.futures.wait`/`as_completed`, `cancel`) always goes through `_condition`,
which creates the Condition under `_CREATE`; the fast state changes check, under the same
lock, that it does not exist. So either the setter sees the Condition and takes the
ordinary path (notifying waiters and calling callbacks), or the waiter creates it after
the change and finds the final state when it looks under it. Everything else is the
standard library's Future, unchanged.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING
from typing import Any

__all__ = ["PoolFuture"]

_CREATE = threading.Lock()  # creating a Condition vs. a change made without one
_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)


class PoolFuture(Future):
    """A `concurrent.futures.Future`, cheaper to make and to settle unobserved."""

    def __init__(self) -> None:  # Future.__init__ without the Condition and lists
        self._state = PENDING
        self._result = None
        self._exception = None
        self._cond: threading.Condition | None = None
        self._lists: tuple[list[Any], list[Any]] | None = None

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        cond = self._cond
        if cond is None:
            with _CREATE:
                cond = self._cond
                if cond is None:
                    cond = self._cond = threading.Condition()
        return cond

    # The waiter and callback lists are only touched by code that holds the Condition (or
    # settles after it): made on first use, like it.
    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        return (self._lists or self._make_lists())[0]

    @property
    def _done_callbacks(self) -> list[Any]:  # type: ignore[override]
        return (self._lists or self._make_lists())[1]

    def _make_lists(self) -> tuple[list[Any], list[Any]]:
        with _CREATE:
            if self._lists is None:
                self._lists = ([], [])
            return self._lists

    def _quietly(self, state: str, old: tuple[str, ...], result: Any = None,
                 exception: BaseException | None = None) -> bool:
        """Move from one of `old` to `state` if nobody can be watching; False if not."""
        with _CREATE:
            if self._cond is not None or self._state not in old:
                return False
            self._result = result
            self._exception = exception
            self._state = state
            return True

    def set_running_or_notify_cancel(self) -> bool:
        if self._quietly(RUNNING, (PENDING,)):
            return True
        return super().set_running_or_notify_cancel()

    def set_result(self, result: Any) -> None:
        if not self._quietly(FINISHED, (PENDING, RUNNING), result=result):
            super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not self._quietly(FINISHED, (PENDING, RUNNING), exception=exception):
            super().set_exception(exception)

    def done(self) -> bool:
        return self._state in _DONE  # a state read is atomic; FINISHED is final

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # noqa: PLW0642 - break the frame/exception cycle, as Future does
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)
