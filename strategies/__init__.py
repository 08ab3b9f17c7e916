"""Pure supervision policy: no I/O, no processes, no threads; time and randomness injected.

    restart    which children a restart stops and starts; OTP's restart-type truth table
    intensity  at most max_restarts restarts within max_seconds
    backoff    delay schedules (linear, exponential, fibonacci, jitter, tables, callables)
    matrix     error category -> severity, recovery, retry budget, backoff
    circuit    a thread-safe circuit breaker
    retry      call again with backoff, optionally through a circuit breaker
    recovery   the step a supervisor takes for one failed child (restart, escalate, ...)

``import strategies`` stays cheap (every worker process imports the supervisor, which
imports this package): the modules that need attrs (restart, matrix) and intensity are
imported the first time one of their names is used. retry (with backoff and circuit, which
need only the standard library) is imported at once, because the function `retry` shares
its name with its module: once ``import strategies.retry`` has run anywhere, the package
attribute would be the module, not the function, unless the function is bound here.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from strategies.backoff import SCHEDULE_NAMES, Schedule, make_schedule
from strategies.circuit import CircuitBreaker, CircuitOpenError, CircuitState
from strategies.retry import retry, retrying

__all__ = [
    # restart
    "Strategy",
    "RestartType",
    "ExitKind",
    "RestartPlan",
    "should_restart",
    "is_clean_exit",
    "plan_restart",
    "plan_stop_order",
    # intensity
    "RestartIntensity",
    "add_restart",
    # backoff
    "SCHEDULE_NAMES",
    "Schedule",
    "make_schedule",
    # matrix
    "ErrorCategory",
    "Severity",
    "Recovery",
    "Rule",
    "Decision",
    "MatrixError",
    "DEFAULT_MATRIX",
    "decide",
    "retry_delay",
    "classify",
    "override_matrix",
    # circuit
    "CircuitBreaker",
    "CircuitOpenError",
    "CircuitState",
    # retry
    "retry",
    "retrying",
    # recovery
    "Action",
    "Step",
    "next_step",
]

_HOMES: dict[str, str] = {
    **dict.fromkeys(
        (
            "Strategy",
            "RestartType",
            "ExitKind",
            "RestartPlan",
            "should_restart",
            "is_clean_exit",
            "plan_restart",
            "plan_stop_order",
        ),
        "restart",
    ),
    **dict.fromkeys(("RestartIntensity", "add_restart"), "intensity"),
    **dict.fromkeys(
        (
            "ErrorCategory",
            "Severity",
            "Recovery",
            "Rule",
            "Decision",
            "MatrixError",
            "DEFAULT_MATRIX",
            "decide",
            "retry_delay",
            "classify",
            "override_matrix",
        ),
        "matrix",
    ),
    **dict.fromkeys(("Action", "Step", "next_step"), "recovery"),
}


def __getattr__(name: str) -> Any:
    """Import the submodule that defines `name` on first use; AttributeError if none does."""
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'strategies' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"strategies.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


if TYPE_CHECKING:  # for type checkers and IDEs; never runs
    from strategies.intensity import RestartIntensity, add_restart
    from strategies.matrix import (
        DEFAULT_MATRIX,
        Decision,
        ErrorCategory,
        MatrixError,
        Recovery,
        Rule,
        Severity,
        classify,
        decide,
        override_matrix,
        retry_delay,
    )
    from strategies.recovery import Action, Step, next_step
    from strategies.restart import (
        ExitKind,
        RestartPlan,
        RestartType,
        Strategy,
        is_clean_exit,
        plan_restart,
        plan_stop_order,
        should_restart,
    )
