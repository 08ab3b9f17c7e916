"""The shape of a tree file: which keys each kind of table takes, and the TOML type of each.

The specs validate values (ranges, enum words, import strings); this module only makes sure
each value has the TOML type the spec's factory expects, so a string where a number goes is
reported as "expected a number, got string '3'" under its path instead of surfacing as a
Python TypeError (or, worse, a value a spec happens to accept: ``shutdown = "5"``).

    Kind("worker", {"id": STRING, ...}, required=("id", "worker"))
    check_table(table, kind, path)  -> raises ConfigError(field="<path>.<key>")
"""

from __future__ import annotations

import datetime
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from .errors import ConfigError

__all__ = [
    "Expect",
    "Kind",
    "WORKER",
    "PROGRAM",
    "SUPERVISOR",
    "POOL",
    "ROOT",
    "TEMPLATE",
    "METRICS",
    "LOGS",
    "CHILD_TYPES",
    "TOP_LEVEL_KEYS",
    "check_table",
    "describe",
]

CHILD_TYPES = ("worker", "supervisor", "pool")
TOP_LEVEL_KEYS = ("tree", "errors", "metrics", "logs")

# TOML's own names for the Python values tomllib returns; bool before int (bool is an int).
_TOML_NAMES: tuple[tuple[type | tuple[type, ...], str], ...] = (
    (bool, "boolean"),
    (int, "integer"),
    (float, "float"),
    (str, "string"),
    (list, "array"),
    (dict, "table"),
    (datetime.datetime, "datetime"),
    (datetime.date, "date"),
    (datetime.time, "time"),
)
_SHOW_LIMIT = 60


def describe(value: Any) -> str:
    """``string '3'``: the TOML type of a value and a short repr of it, for messages."""
    name = next((n for t, n in _TOML_NAMES if isinstance(value, t)), type(value).__name__)
    # Dates and times read best the way TOML wrote them, not as datetime.datetime(...).
    dated = isinstance(value, datetime.date | datetime.time)
    text = value.isoformat() if dated else repr(value)
    if len(text) > _SHOW_LIMIT:
        text = text[: _SHOW_LIMIT - 3] + "..."
    return f"{name} {text}"


@attrs.frozen
class Expect:
    """An expected TOML type: the words used in messages and the test that accepts a value."""

    words: str
    accepts: Callable[[Any], bool]


def _is_integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


STRING = Expect("a string", lambda v: isinstance(v, str))
BOOLEAN = Expect("true or false", lambda v: isinstance(v, bool))
INTEGER = Expect("an integer", _is_integer)
NUMBER = Expect("a number", _is_number)
ARRAY = Expect("an array", lambda v: isinstance(v, list))
TABLE = Expect("a table", lambda v: isinstance(v, dict))
# The elements of `command` and `env` and the matrix rows are checked by the specs and the
# matrix, whose messages already name the bad element: only the outer type is checked here.
STRINGS = Expect("an array of strings", lambda v: isinstance(v, list))
TABLES = Expect("an array of tables",
                lambda v: isinstance(v, list) and all(isinstance(x, dict) for x in v))
SHUTDOWN = Expect("a number of seconds, 'brutal_kill' or 'infinity'",
                  lambda v: _is_number(v) or isinstance(v, str))
SIGNAL = Expect("a signal name or number", lambda v: isinstance(v, str) or _is_integer(v))
NAME_OR_ID = Expect("a name or a number", lambda v: isinstance(v, str) or _is_integer(v))
UMASK = Expect("a umask (0o022, or '022')", lambda v: isinstance(v, str) or _is_integer(v))


@attrs.frozen
class Kind:
    """One kind of table: its keys in documented order, their types, the required ones."""

    name: str
    keys: Mapping[str, Expect]
    required: tuple[str, ...] = ()
    # Said after "required key 'x' is missing", when a missing key has a likely cause.
    hints: Mapping[str, str] = attrs.field(factory=dict)


# Options every supervised child takes, whatever runs in it.
_RESTART_OPTIONS = {
    "restart": STRING,
    "shutdown": SHUTDOWN,
    "significant": BOOLEAN,
    "errors": TABLE,
}
_STABILITY = {"stable_after": NUMBER, "circuit_timeout": NUMBER}

# child(...) options after id and worker; a pool passes them on to each of its workers.
_WORKER_OPTIONS = {
    "args": ARRAY,
    "kwargs": TABLE,
    **_RESTART_OPTIONS,
    "heartbeat": NUMBER,
    "heartbeat_timeout": NUMBER,
    "max_memory_mb": NUMBER,
    "max_calls": INTEGER,
    "call_timeout": NUMBER,
    "on_timeout": STRING,
    "fallback": STRING,
    "serializer": STRING,
    **_STABILITY,
    "env": TABLE,
    "backend": STRING,
    "ray_options": TABLE,
}

_SUPERVISOR_KEYS = {
    "id": STRING,
    "children": TABLES,
    "strategy": STRING,
    "max_restarts": INTEGER,
    "max_seconds": NUMBER,
    "restart": STRING,
    "shutdown": SHUTDOWN,
    "template": TABLE,
    "max_children": INTEGER,
    "auto_shutdown": STRING,
    "significant": BOOLEAN,
    "errors": TABLE,
    "ray_address": STRING,
}

WORKER = Kind(
    "worker",
    {"id": STRING, "type": STRING, "worker": STRING, **_WORKER_OPTIONS,
     "autostart": BOOLEAN},
    required=("id", "worker"),
    hints={"worker": "; a child runs worker = 'package.module:Class' or command = [...]"},
)
PROGRAM = Kind(
    "program",
    {"id": STRING, "type": STRING, "command": STRINGS, "cwd": STRING, "env": TABLE,
     "stop_signal": SIGNAL, **_RESTART_OPTIONS, **_STABILITY, "start_seconds": NUMBER,
     "autostart": BOOLEAN, "user": NAME_OR_ID, "group": NAME_OR_ID, "umask": UMASK},
    required=("id", "command"),
)
SUPERVISOR = Kind("supervisor", {"id": STRING, "type": STRING, **_SUPERVISOR_KEYS},
                  required=("id",))
POOL = Kind(
    "pool",
    {"id": STRING, "type": STRING, "worker": STRING, "size": INTEGER, "max_overflow": INTEGER,
     "checkout_timeout": NUMBER, "max_restarts": INTEGER, "max_seconds": NUMBER,
     **_WORKER_OPTIONS},
    required=("id", "worker"),
)
# [tree] is a supervisor that is nobody's child: it has no `type` to choose.
# Its `directory` (default: the file's) is put on sys.path to resolve `worker` strings.
ROOT = Kind("supervisor", {**_SUPERVISOR_KEYS, "directory": STRING}, required=("id",))
# A simple_one_for_one template is a worker child; programs are not templates (ChildSpec only).
TEMPLATE = Kind("worker", {k: v for k, v in WORKER.keys.items() if k not in ("type", "autostart")},
                required=WORKER.required)

# [metrics]: the service root's HTTP server (`run --metrics` / `--metrics-token-file`).
METRICS = Kind("metrics", {"address": STRING, "token_file": STRING}, required=("address",))
# [logs]: per-child log files and the supervisor's own (`run --log-dir` / `--log-file`).
SIZE = Expect("a size (bytes, or a string such as '10 MB')",
              lambda v: _is_integer(v) or isinstance(v, str))
LOGS = Kind("logs", {"dir": STRING, "file": STRING, "split": BOOLEAN, "rotation": SIZE,
                     "retention": INTEGER, "compression": STRING, "format": STRING,
                     "group_readable": BOOLEAN, "echo": BOOLEAN})


def check_table(table: Mapping[str, Any], kind: Kind, path: str) -> None:
    """Check the keys of one table against `kind`: unknown, missing, then wrong TOML types.

    Raises ConfigError with ``field="<path>.<key>"``; the first problem in a fixed order
    (unknown keys alphabetically, then the kind's key order) so messages are reproducible.
    """
    unknown = sorted(key for key in table if key not in kind.keys)
    if unknown:
        raise ConfigError(
            f"unknown key {unknown[0]!r}; expected one of {', '.join(kind.keys)}",
            field=f"{path}.{unknown[0]}",
            value=table[unknown[0]],
        )
    for key in kind.required:
        if key not in table:
            hint = kind.hints.get(key, "")
            raise ConfigError(f"required key {key!r} is missing{hint}", field=f"{path}.{key}")
    for key, expect in kind.keys.items():
        if key in table and not expect.accepts(table[key]):
            raise ConfigError(
                f"expected {expect.words}, got {describe(table[key])}",
                field=f"{path}.{key}",
                value=table[key],
            )
