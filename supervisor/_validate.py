"""Field checks for the specs: the grammar of one value at a time.

Each check takes the field's name and the value it was given, returns the value when it is
valid and otherwise raises `ConfigError` naming the field and the value. `specs` composes
them into whole specs (which fields a spec has, how they depend on each other); nothing here
knows what a child or a supervisor is. The messages are part of the interface: the config
loader prefixes them with the TOML path, and tests pin them.
"""

from __future__ import annotations

import math
import signal
from collections.abc import Mapping, Sequence
from typing import Any

from .errors import ConfigError

__all__ = [
    "SHUTDOWN_WORDS",
    "check_choice",
    "check_number",
    "check_integer",
    "check_bool",
    "check_env",
    "check_umask",
    "check_id",
    "check_shutdown",
    "check_signal",
    "check_significant",
    "check_errors",
    "reject_unknown",
]

SHUTDOWN_WORDS = ("brutal_kill", "infinity")


def check_choice(field: str, value: Any, allowed: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ConfigError(
            f"expected one of {', '.join(allowed)}, got {value!r}", field=field, value=value
        )
    return value


def check_number(field: str, value: Any, *, minimum: float, strict: bool = False,
                 allow_none: bool = False) -> float | None:
    if value is None and allow_none:
        return None
    # bool is an int subclass, but `true` for a number of seconds is a mistake, not 1.
    ok = isinstance(value, int | float) and not isinstance(value, bool) and not math.isnan(value)
    if ok and (value > minimum if strict else value >= minimum):
        return value
    bound = f"> {minimum}" if strict else f">= {minimum}"
    raise ConfigError(f"expected a number {bound}, got {value!r}", field=field, value=value)


def check_integer(field: str, value: Any, *, minimum: int,
                  allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and value >= minimum:
        return value
    raise ConfigError(f"expected an integer >= {minimum}, got {value!r}", field=field, value=value)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"expected true or false, got {value!r}", field=field, value=value)
    return value


def check_umask(field: str, value: Any) -> int:
    """A umask: an integer 0..0o777 (TOML: ``0o022``) or its octal digits (``"022"``)."""
    number = value
    if isinstance(value, str):
        try:
            number = int(value, 8)
        except ValueError:
            number = None
    if isinstance(number, bool) or not isinstance(number, int) or not 0 <= number <= 0o777:
        raise ConfigError(f"expected a umask such as 0o022 or '022', got {value!r}",
                          field=field, value=value)
    return number


def check_env(env: Any) -> None:
    """`env`: None, or a table of strings (added to the inherited environment)."""
    if env is not None and (not isinstance(env, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in env.items())):
        raise ConfigError(f"expected a table of strings, got {env!r}", field="env")


def check_id(field: str, value: Any) -> str:
    # '/' separates the parts of a child path ("jobs/sleeper"), so an id may not hold one.
    if not isinstance(value, str) or not value or "/" in value or value.strip() != value:
        raise ConfigError(
            f"expected a non-empty string without '/' or surrounding spaces, got {value!r}",
            field=field,
            value=value,
        )
    return value


def check_shutdown(field: str, value: Any) -> float | str:
    """Seconds of grace, or one of SHUTDOWN_WORDS."""
    if isinstance(value, str):
        return check_choice(field, value, SHUTDOWN_WORDS)
    return check_number(field, value, minimum=0)


def check_signal(field: str, value: Any) -> int:
    """The signal number of a name ('SIGTERM', 'term') or of a valid number."""
    if isinstance(value, str):
        name = value.upper()
        name = name if name.startswith("SIG") else f"SIG{name}"
        sig = getattr(signal.Signals, name, None) if name in signal.Signals.__members__ else None
        if sig is not None:
            return int(sig)
    elif isinstance(value, int) and not isinstance(value, bool):
        try:
            return int(signal.Signals(value))
        except ValueError:
            pass  # not a signal of this platform: the ConfigError below says so
    raise ConfigError(f"expected a signal name such as 'SIGTERM', got {value!r}",
                      field=field, value=value)


def check_significant(significant: Any, restart: str) -> None:
    if not isinstance(significant, bool):
        raise ConfigError(f"expected true or false, got {significant!r}", field="significant")
    if significant and restart == "permanent":
        raise ConfigError(
            "a significant child must be transient or temporary, got restart='permanent'",
            field="significant",
            value=significant,
        )


def check_errors(errors: Any) -> None:
    """An error-matrix override must apply to the default matrix."""
    if errors is None:
        return
    from strategies.matrix import DEFAULT_MATRIX, MatrixError, override_matrix

    try:
        override_matrix(DEFAULT_MATRIX, errors)
    except MatrixError as exc:
        raise ConfigError(str(exc), field=None, value=errors) from exc


def reject_unknown(unknown: Mapping[str, Any], allowed: Sequence[str]) -> None:
    """Refuse the first (sorted) of the keyword arguments a spec factory does not take."""
    if unknown:
        name = sorted(unknown)[0]
        raise ConfigError(
            f"unknown key {name!r}; expected one of {', '.join(allowed)}",
            field=name,
            value=unknown[name],
        )
