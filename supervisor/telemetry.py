"""Telemetry: attach handlers to events raised anywhere in the tree.

Events raised inside supervisor processes travel up the tree as `Event` frames and are
delivered here, in the App's process, on the App's reader thread. Event names are tuples
that start with ``"supervisor"``; a handler attached to a prefix gets every event whose name
starts with it (``("supervisor",)`` is all of them).

    telemetry.attach("my-id", [("supervisor", "child")], fn)   # fn(event, measurements, metadata)
    telemetry.detach("my-id")

A handler that raises is detached (and the error logged), so a broken handler cannot take
down the thread that delivers replies and events.
"""

from __future__ import annotations

import atexit
import collections
import os
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

__all__ = [
    "attach",
    "detach",
    "execute",
    "handlers",
    "attach_default_reporter",
    "DEFAULT_REPORTER",
    "circuit_breaker",
    "retry_reporter",
]

Handler = Callable[[tuple[str, ...], Mapping[str, Any], Mapping[str, Any]], Any]

_lock = threading.Lock()
_handlers: dict[str, tuple[tuple[tuple[str, ...], ...], Handler]] = {}
# Set once the default reporter is detached: `start()` and the command line then leave it
# off (a user who silenced it before starting a tree keeps it silent).
_default_silenced = False


def attach(handler_id: str, prefixes: Iterable[Iterable[str]], fn: Handler) -> None:
    """Call `fn(event, measurements, metadata)` for events under any of `prefixes`.

    Raises ValueError when `handler_id` is already attached or a prefix is empty.
    """
    normalized = tuple(tuple(p) for p in prefixes)
    if not normalized or any(not p for p in normalized):
        raise ValueError(f"expected non-empty event prefixes, got {normalized!r}")
    global _default_silenced
    with _lock:
        if handler_id in _handlers:
            raise ValueError(f"telemetry handler {handler_id!r} is already attached")
        _handlers[handler_id] = (normalized, fn)
        if handler_id == DEFAULT_REPORTER:
            _default_silenced = False


def detach(handler_id: str) -> bool:
    """Remove a handler; returns False when it was not attached. Detaching
    `DEFAULT_REPORTER` sticks: starting a tree later does not attach it again."""
    global _default_silenced
    with _lock:
        if handler_id == DEFAULT_REPORTER:
            _default_silenced = True
        return _handlers.pop(handler_id, None) is not None


def handlers() -> list[str]:
    with _lock:
        return list(_handlers)


def execute(event: Iterable[str], measurements: Mapping[str, Any],
            metadata: Mapping[str, Any]) -> None:
    """Deliver one event to every handler whose prefix matches it."""
    name = tuple(event)
    with _lock:
        matching = [(hid, fn) for hid, (prefixes, fn) in _handlers.items()
                    if any(name[: len(p)] == p for p in prefixes)]
    for handler_id, fn in matching:
        try:
            fn(name, measurements, metadata)
        except Exception as exc:  # a broken handler is detached, as :telemetry does
            from loguru import logger

            logger.error("telemetry handler {!r} raised {!r} on {}; detached", handler_id,
                         exc, name)
            detach(handler_id)


# ---------------------------------------------------------------------- default reporter
DEFAULT_REPORTER = "supervisor-default-reporter"

# Lifecycle facts are INFO; anything that is a failure or a recovery decision is WARNING.
_WARNINGS = {"failure", "gave_up", "exceeded", "abandoned", "circuit_opened",
             "restart_scheduled", "start_failed", "memory_exceeded", "error", "state_change"}


def _report(event: tuple[str, ...], measurements: Mapping[str, Any],
            metadata: Mapping[str, Any]) -> None:
    from loguru import logger

    name = ".".join(event[1:])
    level = "WARNING" if event[-1] in _WARNINGS else "INFO"
    if event[-1] == "exited" and metadata.get("category") is None:
        level = "INFO"  # a clean exit or a stop we asked for
    facts = " ".join(f"{key}={value}" for key, value in metadata.items()
                     if value is not None and key not in ("path", "id", "supervisor"))
    logger.bind(event=name, **{k: v for k, v in metadata.items() if k != "message"}).log(
        level, "{} {} {}", name, metadata.get("path", ""), facts)


class _ReportThread:
    """The default reporter of an App's process: events are logged by a thread of their own.

    The App's reader thread delivers events and replies alike; were it to log an event
    itself and the log blocked (stderr a pipe nobody reads), it would stop reading the root
    supervisor, whose next message to the App would then block its loop: the whole tree
    would wait for whoever reads the App's stderr. So the reader only queues the event
    (at most `LIMIT`; beyond, events are dropped from the log and counted). Supervisor
    processes never use this: they must not start threads, and their own log never blocks.
    """

    LIMIT = 10_000
    EXIT_WAIT = 2.0  # seconds the exiting interpreter waits for the last lines

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.queue: collections.deque[tuple[Any, Any, Any]] = collections.deque()
        self.dropped = 0
        self.busy = False
        self.thread: threading.Thread | None = None
        self.pid = 0

    def __call__(self, event: tuple[str, ...], measurements: Mapping[str, Any],
                 metadata: Mapping[str, Any]) -> None:
        with self.cond:
            if len(self.queue) >= self.LIMIT:
                self.dropped += 1
                return
            self.queue.append((event, measurements, metadata))
            if self.thread is None or self.pid != os.getpid():  # none yet, or forked since
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._run, daemon=True,
                                               name="supervisor-telemetry-log")
                self.thread.start()
            self.cond.notify_all()

    def _run(self) -> None:
        from loguru import logger

        while True:
            with self.cond:
                self.busy = False
                self.cond.notify_all()
                self.cond.wait_for(lambda: self.queue)
                item = self.queue.popleft()
                dropped = 0 if self.queue else self.dropped
                self.dropped -= dropped
                self.busy = True
            _report(*item)
            if dropped:
                logger.warning("dropped {} telemetry log lines while the log was blocked",
                               dropped)

    def flush(self, timeout: float) -> None:
        """Wait up to `timeout` for the queued events to be logged."""
        with self.cond:
            if self.thread is not None and self.pid == os.getpid():
                self.cond.wait_for(lambda: not self.queue and not self.busy, timeout)


_report_thread = _ReportThread()
# Registered at import, before `supervisor.app` registers its own exit hook that stops the
# Apps still running: exit hooks run last-in first-out, so this runs after that, and the
# lines of those last stops are logged too.
atexit.register(_report_thread.flush, _ReportThread.EXIT_WAIT)


def attach_default_reporter(*, thread: bool = False, force: bool = False) -> None:
    """Log every event with loguru, one structured line each (idempotent).

    Attached by `supervisor.start()` and the command line unless `detach(DEFAULT_REPORTER)`
    silenced it first (that sticks; `attach_default_reporter(force=True)` undoes it). `thread=True` (what `start()` uses in the App's process) logs from a
    thread of its own, so that a log that blocks never holds up the delivery of replies
    and events (nor, through it, the tree); at most 10,000 events wait, further ones are
    left out of the log and counted in a warning.
    """
    global _default_silenced
    with _lock:
        if DEFAULT_REPORTER in _handlers or (_default_silenced and not force):
            return
        _default_silenced = False
        _handlers[DEFAULT_REPORTER] = ((("supervisor",),), _report_thread if thread else _report)


# ---------------------------------------------------------------------- policy objects
def circuit_breaker(name: str, **options: Any):
    """A `strategies.circuit.CircuitBreaker` whose state changes are telemetry events
    ``("supervisor", "circuit_breaker", "state_change")``: the common keys (path ``""``,
    id = `name`, pid = this process, reason = the new state) plus `name`, `old`, `new`."""
    from strategies.circuit import CircuitBreaker

    user_callback = options.pop("on_state_change", None)

    def on_change(old: Any, new: Any) -> None:
        execute(("supervisor", "circuit_breaker", "state_change"), {"time": _now()},
                {**_standalone(name, reason=str(new)), "old": str(old), "new": str(new)})
        if user_callback is not None:
            user_callback(old, new)

    return CircuitBreaker(on_state_change=on_change, name=name, **options)


def retry_reporter(name: str):
    """An `on_retry` hook for `strategies.retry.retry`: each retry becomes the event
    ``("supervisor", "retry", "attempt")``: the common keys (path ``""``, id = `name`,
    pid = this process, reason = the error's type, category = its classification) plus
    `name`, `attempt`, `error`; `delay` is a measurement."""

    def on_retry(attempt: int, exc: BaseException, delay: float) -> None:
        from strategies.matrix import classify

        category = classify(exc)
        execute(("supervisor", "retry", "attempt"), {"time": _now(), "delay": delay},
                {**_standalone(name, reason=type(exc).__name__,
                               category=str(category) if category is not None else None),
                 "attempt": attempt, "error": f"{type(exc).__name__}: {exc}"})

    return on_retry


def _standalone(name: str, *, reason: str | None, category: str | None = None
                ) -> dict[str, Any]:
    """The common metadata keys for a policy object used outside the tree: it has no path
    in the tree (""), its `name` is its id, `pid` the process it ran in; no supervisor and
    no restarts (None)."""
    import os

    return {"path": "", "id": name, "pid": os.getpid(), "supervisor": None,
            "reason": reason, "category": category, "restarts": None, "name": name}


def _now() -> float:
    import time

    return time.time()
