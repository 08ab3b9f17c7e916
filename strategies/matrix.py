"""The error decision matrix: failure -> category -> severity, recovery, retry budget, backoff.

    classify(error or exit reason) -> ErrorCategory          (None for normal/shutdown exits)
    decide(category, attempt, affecting_all) -> Decision     (the row, then the rules below)
    retry_delay(decision, attempt) -> seconds                (immediate table or row backoff)
    override_matrix(DEFAULT_MATRIX, {"timeout_error": {"max_retries": 4}}) -> new matrix

Rules applied on top of a row, in this order (from the original design):
  1. a failure on an attempt above 3 upgrades the severity one step (minor -> major ->
     critical; critical and warning stay);
  2. a failure affecting every child of a supervisor is critical;
  3. a critical failure on an attempt above 2 is abandoned; otherwise the row's recovery
     holds (unlike the original Elixir, an upgraded severity does not change the recovery).
"""

from __future__ import annotations

import enum
import math
import random
import sys
import types
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from strategies.backoff import IMMEDIATE_TABLE, SCHEDULE_NAMES, BackoffSpec
from strategies.backoff import delay as _schedule_delay
from strategies.restart import is_clean_exit

__all__ = [
    "ErrorCategory",
    "Severity",
    "Recovery",
    "OnExhausted",
    "MatrixError",
    "Rule",
    "Decision",
    "DEFAULT_MATRIX",
    "SEVERITY_UPGRADE",
    "UPGRADE_AFTER_ATTEMPT",
    "ABANDON_AFTER_ATTEMPT",
    "EXIT_REASONS",
    "RULE_FIELDS",
    "decide",
    "retry_delay",
    "classify",
    "override_matrix",
    "rule_for",
]


class ErrorCategory(enum.StrEnum):
    """What kind of failure happened; every failure maps to exactly one."""

    initialization_error = "initialization_error"
    connection_error = "connection_error"
    communication_error = "communication_error"
    timeout_error = "timeout_error"
    resource_error = "resource_error"
    health_check_error = "health_check_error"
    session_error = "session_error"
    python_error = "python_error"
    system_error = "system_error"


class Severity(enum.StrEnum):
    """How bad a failure is."""

    critical = "critical"
    major = "major"
    minor = "minor"
    warning = "warning"


class Recovery(enum.StrEnum):
    """What the supervisor does about a failure."""

    immediate_retry = "immediate_retry"
    backoff_retry = "backoff_retry"
    circuit_break = "circuit_break"
    failover = "failover"
    abandon = "abandon"


class OnExhausted(enum.StrEnum):
    """What the supervisor does once a row gives up on a child (its retry budget is used up
    on a retry row, or the decision is ``abandon``): abandon only that child (the default),
    or escalate (the supervisor gives up, as OTP would once intensity is exceeded)."""

    abandon = "abandon"
    escalate = "escalate"


class MatrixError(ValueError):
    """A matrix row or override is invalid: the configuration's fault.

    The message starts with the field path (``errors.timeout_error.max_retries: ...``) and
    names the bad value; `field` and `value` hold them.
    """

    def __init__(self, message: str, *, field: str | None = None, value: Any = None) -> None:
        super().__init__(message)
        self.field = field
        self.value = value


RULE_FIELDS: tuple[str, ...] = ("severity", "recovery", "max_retries", "backoff", "on_exhausted")
"""The fields of a row, in the order they are documented and listed in errors."""


def _fail(where: str, expected: str, value: Any) -> MatrixError:
    return MatrixError(f"{where}: {expected}, got {value!r}", field=where, value=value)


def _parse_enum(enum_cls: type[enum.StrEnum], value: Any, where: str) -> Any:
    if isinstance(value, str) and value in enum_cls.__members__:
        return enum_cls(value)
    raise _fail(where, f"expected one of {', '.join(enum_cls)}", value)


def _parse_max_retries(value: Any, where: str = "max_retries") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise _fail(where, "expected an integer >= 0", value)
    return value


def _parse_seconds(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(where, "expected a number of seconds >= 0", value)
    if math.isnan(value) or value < 0:
        raise _fail(where, "expected a number of seconds >= 0", value)
    return float(value)


def _parse_backoff(value: Any, where: str = "backoff") -> BackoffSpec:
    if isinstance(value, str):
        if value in SCHEDULE_NAMES:
            return str(value)
        names = ", ".join(SCHEDULE_NAMES)
        raise _fail(where, f"expected one of {names}, a list of seconds or a callable", value)
    if isinstance(value, list | tuple):
        if not value:
            raise _fail(where, "expected a non-empty list of seconds", value)
        return tuple(_parse_seconds(v, f"{where}[{i}]") for i, v in enumerate(value))
    if callable(value):
        return value
    raise _fail(where, "expected a schedule name, a list of seconds or a callable", value)


def _parse_severity(value: Any, where: str = "severity") -> Severity:
    return _parse_enum(Severity, value, where)


def _parse_recovery(value: Any, where: str = "recovery") -> Recovery:
    return _parse_enum(Recovery, value, where)


def _parse_on_exhausted(value: Any, where: str = "on_exhausted") -> OnExhausted:
    return _parse_enum(OnExhausted, value, where)


def _parse_category(value: Any, where: str = "category") -> ErrorCategory:
    return _parse_enum(ErrorCategory, value, where)


_FIELD_PARSERS: dict[str, Callable[[Any, str], Any]] = {
    "severity": _parse_severity,
    "recovery": _parse_recovery,
    "max_retries": _parse_max_retries,
    "backoff": _parse_backoff,
    "on_exhausted": _parse_on_exhausted,
}


@attrs.frozen(kw_only=True)
class Rule:
    """One row of the matrix. Strings are accepted for the enums and a list for a table.

    `backoff` is a schedule name (see `strategies.backoff.SCHEDULE_NAMES`), a tuple of
    seconds, or a callable attempt -> seconds. Raises MatrixError (a ValueError) naming the
    field and the bad value.
    """

    severity: Severity = attrs.field(converter=_parse_severity)
    recovery: Recovery = attrs.field(converter=_parse_recovery)
    max_retries: int = attrs.field(converter=_parse_max_retries)
    backoff: BackoffSpec = attrs.field(converter=_parse_backoff)
    # Not part of the decision (`decide` never reads it): what the supervisor does once
    # the row gives up on a child (`strategies.recovery.contain`).
    on_exhausted: OnExhausted = attrs.field(default=OnExhausted.abandon,
                                            converter=_parse_on_exhausted)


@attrs.frozen(kw_only=True)
class Decision:
    """What the runtime acts on for one failure: the row after the adjustment rules.

    `attempt` is the (1-based) consecutive failure the decision was made for.
    """

    category: ErrorCategory
    severity: Severity
    recovery: Recovery
    max_retries: int
    backoff: BackoffSpec
    attempt: int = 1


def _row(severity: str, recovery: str, max_retries: int, backoff: str) -> Rule:
    return Rule(severity=severity, recovery=recovery, max_retries=max_retries, backoff=backoff)


_C = ErrorCategory
DEFAULT_MATRIX: Mapping[ErrorCategory, Rule] = types.MappingProxyType(
    {
        _C.initialization_error: _row("critical", "circuit_break", 3, "exponential"),
        _C.connection_error: _row("major", "backoff_retry", 5, "exponential"),
        _C.communication_error: _row("major", "immediate_retry", 3, "linear"),
        _C.timeout_error: _row("major", "backoff_retry", 2, "exponential"),
        _C.resource_error: _row("critical", "circuit_break", 1, "none"),
        _C.health_check_error: _row("minor", "backoff_retry", 3, "linear"),
        _C.session_error: _row("minor", "immediate_retry", 2, "none"),
        _C.python_error: _row("major", "failover", 1, "none"),
        _C.system_error: _row("critical", "abandon", 0, "none"),
    }
)
"""The default table (the README's matrix section), read-only."""

SEVERITY_UPGRADE: Mapping[Severity, Severity] = types.MappingProxyType(
    {
        Severity.minor: Severity.major,
        Severity.major: Severity.critical,
        Severity.critical: Severity.critical,
        Severity.warning: Severity.warning,
    }
)
"""One step up the severity ladder, applied to failures on late attempts."""

UPGRADE_AFTER_ATTEMPT = 3
"""A failure on an attempt above this one upgrades the severity one step."""

ABANDON_AFTER_ATTEMPT = 2
"""A critical failure on an attempt above this one is abandoned."""


def decide(
    category: ErrorCategory | str,
    attempt: int = 1,
    *,
    affecting_all: bool = False,
    matrix: Mapping[ErrorCategory, Rule] = DEFAULT_MATRIX,
) -> Decision:
    """Decide what to do about a failure of `category` on consecutive attempt `attempt`.

    Applies the row of `matrix` (a row missing from it falls back to DEFAULT_MATRIX), then
    the rules of the module docstring. Raises MatrixError for an unknown category and
    ValueError for attempt < 1.
    """
    category = _parse_category(category)
    if isinstance(attempt, bool) or not isinstance(attempt, int) or attempt < 1:
        raise ValueError(f"attempt: expected an integer >= 1, got {attempt!r}")
    rule = matrix.get(category) or DEFAULT_MATRIX[category]
    severity = rule.severity
    if attempt > UPGRADE_AFTER_ATTEMPT:
        severity = SEVERITY_UPGRADE[severity]
    if affecting_all:
        severity = Severity.critical
    recovery = rule.recovery
    if severity == Severity.critical and attempt > ABANDON_AFTER_ATTEMPT:
        recovery = Recovery.abandon
    return Decision(
        category=category,
        severity=severity,
        recovery=recovery,
        max_retries=rule.max_retries,
        backoff=rule.backoff,
        attempt=attempt,
    )


def retry_delay(
    rule_or_decision: Rule | Decision,
    attempt: int,
    *,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    rng: random.Random | None = None,
) -> float:
    """Seconds to wait before retry number `attempt` (1-based) under this row or decision.

    immediate_retry uses 0, 0.1, 0.2 s (last repeats; not scaled, capped by `max_delay`);
    every other recovery uses the row's backoff, scaled by `base_delay` and capped by
    `max_delay` (see `strategies.backoff`). Raises ValueError for attempt < 1.
    """
    if rule_or_decision.recovery == Recovery.immediate_retry:
        spec: BackoffSpec = IMMEDIATE_TABLE
    else:
        spec = rule_or_decision.backoff
    return _schedule_delay(spec, attempt, base_delay=base_delay, max_delay=max_delay, rng=rng)


EXIT_REASONS: Mapping[str, ErrorCategory] = types.MappingProxyType(
    {
        "killed": _C.connection_error,
        "crashed": _C.connection_error,
        "exited": _C.connection_error,
        "port_exited": _C.connection_error,
        "connection_closed": _C.connection_error,
        "connect_failed": _C.connection_error,
        "timeout": _C.timeout_error,
        "init_failed": _C.initialization_error,
        "health_check_failed": _C.health_check_error,
        "heartbeat_missed": _C.health_check_error,
        "memory_limit": _C.resource_error,
        "checkout_failed": _C.resource_error,
        "protocol_error": _C.communication_error,
        "encode_error": _C.communication_error,
        "decode_error": _C.communication_error,
        "session_not_found": _C.session_error,
        "session_lost": _C.session_error,
        "python_exception": _C.python_error,
    }
)
"""Exit reasons (strings) that name a failure category; any other failure is system_error."""

# Checked in order; the first base class that matches wins. BrokenPipeError is a
# ConnectionError; TimeoutError must come before any OSError catch-all.
_EXCEPTION_CATEGORIES: tuple[tuple[tuple[type[BaseException], ...], ErrorCategory], ...] = (
    ((TimeoutError,), _C.timeout_error),
    ((ConnectionError, EOFError), _C.connection_error),
    ((MemoryError,), _C.resource_error),
    ((UnicodeError,), _C.communication_error),
)

_MSGSPEC_ERRORS = frozenset({"DecodeError", "EncodeError", "ValidationError"})


def _is_msgspec_error(error: BaseException) -> bool:
    # Only look when msgspec is already loaded: if it is not, no msgspec error can exist, and
    # importing it here would slow down importing strategies.
    msgspec = sys.modules.get("msgspec")
    if msgspec is None:
        return False
    errors = tuple(getattr(msgspec, name) for name in _MSGSPEC_ERRORS if hasattr(msgspec, name))
    return isinstance(error, errors)


def _classify_exception(error: BaseException) -> ErrorCategory:
    declared = getattr(error, "category", None)
    if isinstance(declared, str) and declared in ErrorCategory.__members__:
        return ErrorCategory(declared)
    for bases, category in _EXCEPTION_CATEGORIES:
        if isinstance(error, bases):
            return category
    if _is_msgspec_error(error):
        return _C.communication_error
    if isinstance(error, Exception):
        return _C.python_error
    # KeyboardInterrupt, SystemExit and friends: the process is being torn down.
    return _C.system_error


def classify(error: object) -> ErrorCategory | None:
    """The category of an exception or an exit reason; None when it is not a failure.

    - An exception with a valid `category` attribute (the supervisor's own errors) -> it.
      Else TimeoutError -> timeout_error; ConnectionError (BrokenPipeError...), EOFError ->
      connection_error; MemoryError -> resource_error; UnicodeError and msgspec's
      DecodeError/EncodeError/ValidationError -> communication_error; any other Exception ->
      python_error; a BaseException that is not an Exception -> system_error.
    - A string: "normal", "shutdown" and "shutdown:<why>" -> None (clean exits are not
      failures); a category name -> that category; a reason in EXIT_REASONS -> its
      category; any other string -> system_error.
    - A tuple such as ("port_exited", 1): classified by its first element.
    - Anything else -> system_error. Never raises.
    """
    if isinstance(error, BaseException):
        return _classify_exception(error)
    if isinstance(error, tuple):
        return classify(error[0]) if error else _C.system_error
    if isinstance(error, str):
        if is_clean_exit(error):
            return None
        if error in ErrorCategory.__members__:
            return ErrorCategory(error)
        return EXIT_REASONS.get(error, _C.system_error)
    return _C.system_error


def override_matrix(
    base: Mapping[ErrorCategory, Rule],
    overrides: Mapping[str, Mapping[str, Any] | Rule],
    *,
    path: str = "errors",
) -> Mapping[ErrorCategory, Rule]:
    """A new read-only matrix: `base` with the rows of `overrides` replaced or patched.

    `overrides` maps category names to a `Rule` (replaces the row) or to a table of some of
    severity, recovery, max_retries, backoff, on_exhausted (patches only those), as a TOML
    ``[errors.X]`` table gives. `path` prefixes the field paths in errors. Raises
    MatrixError naming the field path and the bad value for an unknown category or field,
    a bad enum value, a negative or non-integer max_retries, an unknown backoff name or a
    bad table of seconds.
    """
    if not isinstance(overrides, Mapping):
        raise _fail(path, "expected a table of category -> row", overrides)
    rows = dict(base)
    for key, patch in overrides.items():
        where = f"{path}.{key}"
        if not (isinstance(key, str) and key in ErrorCategory.__members__):
            expected = ", ".join(ErrorCategory)
            raise MatrixError(
                f"{where}: unknown category; expected one of {expected}", field=where, value=key
            )
        category = ErrorCategory(key)
        rows[category] = _patched_row(rows.get(category) or DEFAULT_MATRIX[category], patch, where)
    return types.MappingProxyType({c: rows[c] for c in ErrorCategory if c in rows})


def rule_for(category: ErrorCategory | str,
             matrix: Mapping[ErrorCategory, Rule] = DEFAULT_MATRIX) -> Rule:
    """The row of `matrix` for `category` (a row missing from it: DEFAULT_MATRIX's)."""
    category = _parse_category(category)
    return matrix.get(category) or DEFAULT_MATRIX[category]


def _patched_row(rule: Rule, patch: Mapping[str, Any] | Rule, where: str) -> Rule:
    if isinstance(patch, Rule):
        return patch
    if not isinstance(patch, Mapping):
        raise _fail(where, f"expected a Rule or a table of {', '.join(RULE_FIELDS)}", patch)
    changes = {}
    for name, value in patch.items():
        parser = _FIELD_PARSERS.get(name)
        if parser is None:
            expected = ", ".join(RULE_FIELDS)
            raise MatrixError(
                f"{where}.{name}: unknown field; expected one of {expected}",
                field=f"{where}.{name}",
                value=value,
            )
        changes[name] = parser(value, f"{where}.{name}")
    return attrs.evolve(rule, **changes)
