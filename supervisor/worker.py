"""The `Worker` base class users subclass, and the `idempotent` marker.

Every public method of a subclass is a command callers can invoke; the lifecycle hooks
(`init`, `run`, `terminate`, `health`) and the runtime attributes are not commands.
The instance lives in its own process: the supervisor forks it, calls `init`, then the
worker runtime (`supervisor.runtime`) serves commands until it is stopped.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["Worker", "idempotent", "is_idempotent", "command_table"]

F = TypeVar("F", bound=Callable[..., Any])

# Names a subclass may define that are hooks or runtime facts, never commands.
RESERVED = frozenset(
    {"init", "run", "terminate", "health", "stop", "id", "path", "restarts", "log",
     "stopping", "session"}
)


def idempotent(method: F) -> F:
    """Mark a command as safe to re-send after its worker died mid-call or timed out."""
    method.__supervisor_idempotent__ = True  # type: ignore[attr-defined]
    return method


def is_idempotent(method: Any) -> bool:
    return bool(getattr(method, "__supervisor_idempotent__", False))


class Worker:
    """Base class of supervised workers.

    Override `init(*args, **kwargs)` to set up (it runs in the child; raising fails the
    start as an initialization_error), add public methods as commands, optionally `run()`
    for a service main loop, `health() -> bool` for heartbeats and `terminate(reason)` for
    a graceful shutdown. Inside a worker, `self.id`, `self.path`, `self.restarts`, `self.log`,
    `self.session` and `self.stop(reason)` are available.
    """

    id: str = ""
    path: str = ""
    restarts: int = 0
    # The state of the current call's session (a dict per session id, kept while this
    # process lives; see Pool sessions). Calls without a session share one scratch dict.
    session: dict[str, Any] = {}

    def init(self, *args: Any, **kwargs: Any) -> None:
        """Set the worker up; called once in the child process before it serves."""

    def terminate(self, reason: str) -> None:
        """Graceful shutdown hook: runs on every graceful stop, not after a crash or kill."""

    def stop(self, reason: str = "normal") -> None:
        """Ask the runtime to exit with `reason` once the current command has replied.

        ``"normal"`` is a clean exit (a transient child is not restarted); any other
        reason is an abnormal exit.
        """
        self._stop_reason = reason
        self.stopping.set()

    @property
    def stopping(self) -> threading.Event:
        """Set when the worker has been asked to stop; a `run()` loop should watch it."""
        event = self.__dict__.get("_stopping")
        if event is None:
            event = self.__dict__["_stopping"] = threading.Event()
        return event

    @property
    def log(self) -> Any:
        """A loguru logger bound to this child's path."""
        logger = self.__dict__.get("_log")
        if logger is None:
            from loguru import logger as root

            logger = self.__dict__["_log"] = root.bind(child=self.path or self.id)
        return logger


def command_table(cls: type) -> dict[str, Callable[..., Any]]:
    """The commands of a Worker subclass: its public callables that are not hooks."""
    table: dict[str, Callable[..., Any]] = {}
    for name in dir(cls):
        if name.startswith("_") or name in RESERVED:
            continue
        attr = getattr(cls, name, None)
        if callable(attr) and not isinstance(attr, type):
            table[name] = attr
    return table
