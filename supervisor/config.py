"""Tree files: TOML -> frozen specs, and a printable tree for ``python -m supervisor check``.

    load(path) / loads(text)
      tomllib.loads              syntax error -> ConfigError(file, line)
      _root(document)            [tree] + top-level [errors] -> Supervisor(...)
        _node(table, path)       each [[...children]] table -> child / program / Supervisor / Pool
          check_table            unknown keys, missing keys, TOML types (_config_schema)
          _matrix                [....errors.<category>] rows through override_matrix
          _call(factory)         the spec validates the values; its relative field gets the path

The specs own every rule about values; this module only routes tables to factories, checks
TOML types first (so no TypeError leaks out of a factory), and puts the full path from the
document root in front of whatever the spec or the matrix said. Every ConfigError leaves with
`file` set; `line` is known only for syntax errors (tomllib keeps no positions for values).
"""

from __future__ import annotations

import os
import re
import shlex
import sys
import tomllib
from collections.abc import Callable, Mapping
from typing import Any

from strategies.matrix import DEFAULT_MATRIX, MatrixError, override_matrix

from ._config_schema import (
    CHILD_TYPES,
    LOGS,
    METRICS,
    POOL,
    PROGRAM,
    ROOT,
    SUPERVISOR,
    TEMPLATE,
    TOP_LEVEL_KEYS,
    WORKER,
    Kind,
    check_table,
    describe,
)
from .errors import ConfigError
from .observe.options import MetricsOptions
from .specs import (
    ChildSpec,
    Pool,
    PoolSpec,
    ProgramSpec,
    Supervisor,
    SupervisorSpec,
    child,
    program,
    resolve_worker,
)

__all__ = ["load", "load_service", "load_logs", "loads", "format_tree"]

# tomllib ends its messages with the position: " (at line 3, column 12)" or, when the
# parser ran off the end, " (at end of document)".
_POSITION = re.compile(r" \(at (?:line (\d+), column (\d+)|end of document)\)$")
# A Pool's workers are made by Pool itself from the pool table's options, so a spec error on
# "children[2].restart" is about the table's own "restart".
_GENERATED_CHILD = re.compile(r"^children\[\d+\]\.")


def load(path: str | os.PathLike) -> SupervisorSpec:
    """Read a tree file and return its root `SupervisorSpec`.

    Raises ConfigError (with `file` set) when the file cannot be read or is not UTF-8, and
    everything `loads` raises.
    """
    file = os.fsdecode(path)
    return loads(_read(file), file=file)


def load_service(path: str | os.PathLike) -> tuple[SupervisorSpec, MetricsOptions | None]:
    """`load`, plus the file's ``[metrics]`` table (None when it has none).

    Raises what `load` raises, and ConfigError for a bad ``[metrics]`` table (an unknown
    key, a malformed address, a non-loopback address without ``token_file``).
    """
    file = os.fsdecode(path)
    text = _read(file)
    spec = loads(text, file=file)
    table = _parse(text, file).get("metrics")
    if table is None:
        return spec, None
    try:
        if not isinstance(table, dict):
            raise ConfigError(f"expected a table, got {describe(table)}", field="metrics")
        check_table(table, METRICS, "metrics")
        return spec, MetricsOptions(**table)
    except ConfigError as exc:
        raise ConfigError(_message(exc), field=exc.field, value=exc.value, file=file) from exc


def load_logs(path: str | os.PathLike) -> Any:
    """The file's ``[logs]`` table as a `supervisor.LogOptions` (None when it has none);
    relative paths in it are taken from the file's directory.

    Raises ConfigError (with `file` set) for a bad table: an unknown key, a wrong type, a
    bad size, compression or format.
    """
    from .logoptions import LogOptions

    file = os.fsdecode(path)
    table = _parse(_read(file), file).get("logs")
    if table is None:
        return None
    try:
        if not isinstance(table, dict):
            raise ConfigError(f"expected a table, got {describe(table)}", field="logs")
        check_table(table, LOGS, "logs")
        base = os.path.dirname(os.path.abspath(file))
        where = {key: os.path.join(base, table[key]) for key in ("dir", "file") if key in table}
        return LogOptions(**{**table, **where})
    except ConfigError as exc:
        raise ConfigError(_message(exc), field=exc.field, value=exc.value, file=file) from exc


def _read(file: str) -> str:
    try:
        with open(file, "rb") as stream:
            data = stream.read()
    except OSError as exc:
        raise ConfigError(f"cannot read the file: {exc.strerror or exc}", file=file) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text (byte {exc.start}): {exc.reason}", file=file) from exc
    return text


def loads(text: str, *, file: str = "<string>") -> SupervisorSpec:
    """Parse a tree from TOML text; `file` names it in errors.

    Raises ConfigError with `file` set: invalid TOML (with `line`), an unknown or missing
    key, a value of the wrong TOML type, or anything a spec or the error matrix rejects,
    each with `field` set to the path from the document root (``tree.children[1].restart``).
    """
    document = _parse(text, file)
    base = os.getcwd() if file == "<string>" else os.path.dirname(os.path.abspath(file))
    try:
        return _root(document, base)
    except ConfigError as exc:
        raise ConfigError(
            _message(exc), field=exc.field, value=exc.value, file=file, line=exc.line
        ) from exc


def _parse(text: str, file: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        reason, line, where = str(exc), None, ""
        match = _POSITION.search(reason)
        if match is not None:
            reason = reason[: match.start()]
            if match.group(1):
                line, where = int(match.group(1)), f" at column {match.group(2)}"
            else:
                # Off the end: the last line with text on it is where the reader looks.
                line, where = max(1, len(text.rstrip().splitlines())), " at the end of the file"
        raise ConfigError(f"invalid TOML{where}: {reason}", file=file, line=line) from exc


def _message(exc: ConfigError) -> str:
    """The message of a ConfigError without the ``field: `` its str() starts with."""
    text = str(exc.args[0]) if exc.args else ""
    prefix = f"{exc.field}: "
    return text[len(prefix):] if exc.field is not None and text.startswith(prefix) else text


def _root(document: Mapping[str, Any], base: str) -> SupervisorSpec:
    unknown = sorted(key for key in document if key not in TOP_LEVEL_KEYS)
    if unknown:
        raise ConfigError(
            f"unknown top-level key {unknown[0]!r}; expected one of {', '.join(TOP_LEVEL_KEYS)}",
            field=unknown[0],
            value=document[unknown[0]],
        )
    if "tree" not in document:
        raise ConfigError("required table [tree] (the root supervisor) is missing", field="tree")
    tree = document["tree"]
    if not isinstance(tree, dict):
        raise ConfigError(f"expected a table, got {describe(tree)}", field="tree", value=tree)
    if "errors" in document:
        # The top-level [errors] is the root supervisor's `errors`, validated under its own
        # path so the message points at what the user wrote.
        _matrix(document, "")
        if "errors" in tree:
            raise ConfigError(
                "the tree-wide matrix is given twice; keep either [errors] or [tree.errors]",
                field="tree.errors",
            )
        tree = {**tree, "errors": document["errors"]}
    _use_directory(tree, base)
    return _supervisor({k: v for k, v in tree.items() if k != "directory"}, "tree", ROOT)


def _use_directory(tree: Mapping[str, Any], base: str) -> None:
    """Put the tree's `directory` (relative to the file's; default: the file's own) on
    sys.path, so `worker = "module:Class"` resolves wherever `run` was started from. It
    is appended: it never shadows what is on the path already."""
    raw = tree.get("directory")
    if raw is not None and not isinstance(raw, str):
        raise ConfigError(f"expected a string, got {describe(raw)}", field="tree.directory",
                          value=raw)
    directory = os.path.normpath(os.path.join(base, raw)) if raw else base
    if not os.path.isdir(directory):
        raise ConfigError(f"{directory} is not a directory", field="tree.directory",
                          value=raw)
    if directory not in sys.path:
        sys.path.append(directory)


def _node(table: Mapping[str, Any], path: str) -> Any:
    """Build the spec of one child table, whichever kind it is."""
    kind = _child_kind(table, path)
    if kind is SUPERVISOR:
        return _supervisor(table, path, SUPERVISOR)
    if kind is POOL:
        return _pool(table, path)
    if kind is PROGRAM:
        return _program(table, path)
    return _worker(table, path, WORKER)


def _child_kind(table: Mapping[str, Any], path: str) -> Kind:
    kind = table.get("type", "worker")
    if not isinstance(kind, str) or kind not in CHILD_TYPES:
        raise ConfigError(
            f"expected one of {', '.join(CHILD_TYPES)}, got {kind!r}",
            field=f"{path}.type",
            value=kind,
        )
    if kind == "supervisor":
        return SUPERVISOR
    if kind == "pool":
        return POOL
    if "command" not in table:
        return WORKER
    if "worker" in table:
        raise ConfigError(
            "a child runs either worker (a Worker class) or command (an external program), "
            "not both",
            field=f"{path}.command",
            value=table["command"],
        )
    return PROGRAM


def _options(table: Mapping[str, Any], *skip: str) -> dict[str, Any]:
    return {key: value for key, value in table.items() if key not in ("type", *skip)}


def _worker(table: Mapping[str, Any], path: str, kind: Kind) -> ChildSpec:
    check_table(table, kind, path)
    _matrix(table, path)
    _import(table["worker"], f"{path}.worker")
    return _call(child, path, _options(table))


def _program(table: Mapping[str, Any], path: str) -> ProgramSpec:
    check_table(table, PROGRAM, path)
    _matrix(table, path)
    return _call(program, path, _options(table))


def _pool(table: Mapping[str, Any], path: str) -> PoolSpec:
    check_table(table, POOL, path)
    _matrix(table, path)
    _import(table["worker"], f"{path}.worker")
    return _call(Pool, path, _options(table), pooled=True)


def _supervisor(table: Mapping[str, Any], path: str, kind: Kind) -> SupervisorSpec:
    check_table(table, kind, path)
    _matrix(table, path)
    children = tuple(
        _node(entry, f"{path}.children[{index}]")
        for index, entry in enumerate(table.get("children", ()))
    )
    options = _options(table, "children", "template")
    if "template" in table:
        options["template"] = _worker(table["template"], f"{path}.template", TEMPLATE)
    return _call(Supervisor, path, {**options, "children": children})


def _matrix(table: Mapping[str, Any], path: str) -> None:
    """Check a table's `errors` rows; the matrix's own message keeps its full path."""
    if "errors" not in table:
        return
    where = f"{path}.errors" if path else "errors"
    try:
        override_matrix(DEFAULT_MATRIX, table["errors"], path=where)
    except MatrixError as exc:
        field = exc.field or where
        message = str(exc)
        if message.startswith(f"{field}: "):
            message = message[len(field) + 2:]
        raise ConfigError(message, field=field, value=exc.value) from exc


def _import(value: str, field: str) -> None:
    """Resolve a worker import string before the spec does, to know whose field it is.

    resolve_worker turns ImportError and AttributeError into ConfigError, but importing a
    user's module runs its code, which may raise anything (SyntaxError, a relative name's
    TypeError, an error at import time): that is still this field's problem.
    """
    try:
        resolve_worker(value, field)
    except ConfigError:
        raise
    except Exception as exc:
        raise ConfigError(
            f"importing {value!r} failed: {type(exc).__name__}: {exc}", field=field, value=value
        ) from exc


def _call(factory: Callable[..., Any], path: str, options: dict[str, Any], *,
          pooled: bool = False) -> Any:
    """Call a spec factory; its ConfigError's relative field is put under `path`."""
    try:
        return factory(**options)
    except ConfigError as exc:
        relative = exc.field
        if pooled and relative is not None:
            relative = _GENERATED_CHILD.sub("", relative)
        field = f"{path}.{relative}" if relative else path
        raise ConfigError(_message(exc), field=field, value=exc.value) from exc
    except Exception as exc:
        # The types were checked, so this is a spec bug or a surprise from user code; a
        # config loader reports it as a bad file under its path, never as a traceback.
        raise ConfigError(
            f"cannot build this spec: {type(exc).__name__}: {exc}", field=path
        ) from exc


def format_tree(spec: SupervisorSpec) -> str:
    """A readable outline of a tree, one line per node, for ``python -m supervisor check``.

    Each line is ``id (kind): facts``: strategy and intensity for supervisors, the worker's
    import path or the command and the restart type for children; a simple_one_for_one
    template is shown as its supervisor's last branch. Deterministic; raises nothing.
    """
    lines = [_describe(spec, root=True)]
    _branches(spec, "", lines)
    return "\n".join(lines)


def _branches(spec: Any, indent: str, lines: list[str]) -> None:
    # A pool's workers are identical and numerous: its own line says "size x worker".
    if not isinstance(spec, SupervisorSpec) or isinstance(spec, PoolSpec):
        return
    nodes = [(node, "") for node in spec.children]
    if spec.template is not None:
        nodes.append((spec.template, "template "))
    for index, (node, role) in enumerate(nodes):
        last = index == len(nodes) - 1
        lines.append(f"{indent}{'└── ' if last else '├── '}{_describe(node, role=role)}")
        _branches(node, indent + ("    " if last else "│   "), lines)


def _describe(spec: Any, *, role: str = "", root: bool = False) -> str:
    if isinstance(spec, PoolSpec):
        first = spec.children[0] if spec.children else None
        worker = _worker_name(first.worker) if first is not None else "?"
        kind, facts = "pool", [f"{spec.size} x {worker}"]
        restart = first.restart if first is not None else spec.restart
    elif isinstance(spec, SupervisorSpec):
        kind = "supervisor"
        facts = [spec.strategy, f"max_restarts={spec.max_restarts}",
                 f"max_seconds={spec.max_seconds:g}"]
        if spec.auto_shutdown != "never":
            facts.append(f"auto_shutdown={spec.auto_shutdown}")
        restart = None if root else spec.restart
    elif isinstance(spec, ProgramSpec):
        kind, facts, restart = "program", [f"$ {shlex.join(spec.command)}"], spec.restart
    else:
        kind, facts, restart = "worker", [_worker_name(spec.worker)], spec.restart
    if restart is not None:
        facts.append(f"restart={restart}")
    if spec.significant:
        facts.append("significant")
    return f"{spec.id} ({role}{kind}): {', '.join(facts)}"


def _worker_name(worker: type | str) -> str:
    if isinstance(worker, str):
        return worker
    return f"{worker.__module__}:{worker.__qualname__}"
