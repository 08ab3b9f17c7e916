"""The call policy: what a caller needs to apply the error matrix to its calls.

A worker sends it with every call channel it accepts (the answer to `OpenChannel`), so the
caller's side knows, without asking again: which process it talks to, which commands are
idempotent (safe to send again after a crash), the call timeout and what a timeout does,
the fallback sibling, which serializer the child uses (a pickled reply is accepted only
from a child that opted in), and the delays of re-sends for the connection_error and
timeout_error rows of the child's matrix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import msgspec

__all__ = ["CallPolicy", "call_policy", "decode_policy", "MAX_RESENDS", "DEFAULT_CALL_TIMEOUT"]

MAX_RESENDS = 32  # caller-side re-sends per call, whatever a row's budget
DEFAULT_CALL_TIMEOUT = 60.0


class CallPolicy(msgspec.Struct, frozen=True, kw_only=True):
    """One worker process's rules for its callers (a map on the wire).

    `retries` maps a category ("connection_error", "timeout_error") to the delay before
    each re-send of an idempotent call (the first is immediate); `on_timeout` is
    "restart" (the worker is reported and replaced after a timed-out call) or "ignore".
    """

    pid: int
    idempotent: frozenset[str] = frozenset()
    call_timeout: float | None = DEFAULT_CALL_TIMEOUT
    on_timeout: str = "restart"
    fallback: str | None = None
    serializer: str = "msgpack"
    retries: dict[str, tuple[float, ...]] = msgspec.field(default_factory=dict)

    def resend_delays(self, category: str | None, method: str,
                      idempotent: bool) -> tuple[float, ...] | None:
        """The delays of the re-sends a call of `method` that failed with `category` may
        have; None when it may not be sent again (it is not idempotent)."""
        if not (idempotent or method in self.idempotent):
            return None
        return self.retries.get(category or "", ())

    @property
    def restarts_on_timeout(self) -> bool:
        return self.on_timeout == "restart"


def call_policy(spec: Any, commands: Mapping[str, Any], matrix: Any, pid: int) -> CallPolicy:
    """The policy of a worker built from `spec` with `commands`, under `matrix`."""
    from strategies.matrix import DEFAULT_MATRIX, ErrorCategory, retry_delay

    from ..worker import is_idempotent

    matrix = matrix or DEFAULT_MATRIX
    retries = {}
    for category in (ErrorCategory.connection_error, ErrorCategory.timeout_error):
        rule = matrix[category]
        # Capped, whatever the row's budget: the list travels with every channel.
        count = min(rule.max_retries, MAX_RESENDS)
        retries[str(category)] = (0.0, *(retry_delay(rule, n) for n in range(2, count + 1)))
    return CallPolicy(
        pid=pid,
        idempotent=frozenset(name for name, fn in commands.items() if is_idempotent(fn)),
        call_timeout=spec.call_timeout,
        on_timeout=spec.on_timeout,
        fallback=spec.fallback,
        serializer=spec.serializer,
        retries=retries,
    )


def decode_policy(value: Any) -> CallPolicy:
    """The policy from an `OpenChannel` answer (raises msgspec.ValidationError)."""
    return msgspec.convert(value, CallPolicy)
