"""The caller's retry loop, shared by `app.call` and the pool: what is safe to send again.

    a try raised WorkerCrashed or CallTimeout
        -> sent again only when the method is idempotent (the worker's policy says which,
           or the caller said `idempotent=True`), after the delays of the matrix row of
           the failure's category (the first re-send is immediate)
    any other WorkerError (CommandError, CircuitOpen, SessionLost, ...)
        -> raised at once

A call that never reached a worker is not a failure here: each client sends it again (to
the replacement, another worker, or the fallback) before it gets this far. Every error is
reported once per try as a ("supervisor", "call", "error") event.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from .. import telemetry
from ..errors import CallTimeout, WorkerCrashed, WorkerError
from ..wire.policy import CallPolicy

__all__ = ["Attempt", "next_try", "with_retries", "with_retries_async", "timed_out"]

T = TypeVar("T")


class Attempt:
    """One call across its tries: `policy` is that of the worker the latest try reached
    (None until one did), so the loop knows what that worker allows."""

    __slots__ = ("policy",)

    def __init__(self) -> None:
        self.policy: CallPolicy | None = None


def next_try(exc: WorkerError, tries: int, attempt: Attempt, *, method: str,
             idempotent: bool, retry: bool, session: str | None) -> float | None:
    """Try number `tries` of a call failed with `exc`: the delay before the next try, or
    None when `exc` is final (see the module doc). Reports the error either way.

    The one decision both loops share: `with_retries` (blocking) and the asyncio client's
    twin differ only in how they wait.
    """
    _note(exc, tries, method, session, attempt.policy)
    if not isinstance(exc, WorkerCrashed | CallTimeout) or not retry:
        return None
    policy = attempt.policy
    delays = None if policy is None else policy.resend_delays(exc.category, method,
                                                              idempotent)
    if delays is None or tries > len(delays):
        return None
    return delays[tries - 1]


def with_retries(try_once: Callable[[Attempt], T], *, method: str, path: str,
                 idempotent: bool, retry: bool, session: str | None,
                 pause: Callable[[float], bool]) -> T:
    """Run `try_once` until it returns or fails for good (see the module doc).

    `pause(seconds)` waits between tries and returns True when the tree went away
    meanwhile (the call then fails with WorkerCrashed).
    """
    attempt = Attempt()
    tries = 1
    while True:
        attempt.policy = None  # a try that reaches no worker has no policy to go by
        try:
            return try_once(attempt)
        except WorkerError as exc:
            delay = next_try(exc, tries, attempt, method=method, idempotent=idempotent,
                             retry=retry, session=session)
            if delay is None:
                raise
            if delay > 0 and pause(delay):
                raise WorkerCrashed("the tree is not running", path=path) from exc
            tries += 1


async def with_retries_async(try_once: Callable[[Attempt], Awaitable[T]], *, method: str,
                             path: str, idempotent: bool, retry: bool, session: str | None,
                             pause: Callable[[float], Awaitable[bool]]) -> T:
    """`with_retries` for an event loop: the same decisions (`next_try`), awaited."""
    attempt = Attempt()
    tries = 1
    while True:
        attempt.policy = None
        try:
            return await try_once(attempt)
        except WorkerError as exc:
            delay = next_try(exc, tries, attempt, method=method, idempotent=idempotent,
                             retry=retry, session=session)
            if delay is None:
                raise
            if delay > 0 and await pause(delay):
                raise WorkerCrashed("the tree is not running", path=path) from exc
            tries += 1


def timed_out(method: str, path: str, limit: float, policy: CallPolicy,
              report: Callable[[str], Any], let_go: Callable[[], None]) -> CallTimeout:
    """A call to the worker at `path` got no answer within `limit`: the CallTimeout to
    raise. With ``on_timeout="restart"`` the worker's state is unknown after a call it did
    not finish: `let_go()` drops the caller's channel to it, and `report(path)` tells its
    supervisor to replace it (handled as a timeout_error)."""
    exc = CallTimeout(f"call {method!r} to {path!r} got no answer within {limit:.3g}s",
                      path=path)
    if policy.restarts_on_timeout:
        let_go()
        report(path)
    return exc


def _note(exc: WorkerError, tries: int, method: str, session: str | None,
          policy: CallPolicy | None) -> None:
    exc.attempt = tries
    exc.context.update({"operation": method, "session_id": session})
    path = exc.path or ""
    parent, _, child_id = path.rpartition("/")
    telemetry.execute(("supervisor", "call", "error"), {"time": time.time()}, {
        "path": exc.path, "id": child_id or None, "pid": policy.pid if policy else None,
        "supervisor": parent, "reason": str(exc).split("\n", 1)[0],
        "category": exc.category, "restarts": None, "method": method,
        "error": type(exc).__name__, "attempt": tries, "session_id": session,
    })
