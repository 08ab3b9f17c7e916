"""The command line: ``python -m supervisor COMMAND``.

    run TREE.toml        the tree in the foreground (SIGTERM / Ctrl-C / SIGHUP stop it
                         gracefully; SIGHUP until configuration reload exists)
    check TREE.toml      validate the file and print the tree, starting nothing
    status               the running tree: path, kind, state, pid, uptime, restarts, RSS, circuit
                         (and why, for an abandoned child)
    start|stop|restart PATH
    call PATH METHOD [JSON-ARGS]
    shutdown

The control commands check the server before sending anything (see `supervisor.wire.trust`):
a socket whose directories, file or listening process belong to another user is refused
with exit status 2; `--server-uid UID|USER` trusts a tree run by that user.

Exit status: 0 success (a clean stop for `run`), 1 the root gave up or the tree could not
start (or a control command failed), 2 a bad file, bad usage, or no tree to talk to. A bad
file is one line naming the file, the line where known and the field path; no traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .errors import ConfigError, SupervisorError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m supervisor",
        description="Erlang/OTP-style supervision trees for Python workers and programs.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = sub.add_parser("run", help="run a tree in the foreground")
    run.add_argument("tree", help="the tree's TOML file")
    run.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    check = sub.add_parser("check", help="validate a tree file and print the tree")
    check.add_argument("tree")
    status = sub.add_parser("status", help="show the running tree")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    for name, text in (("start", "start a stopped or abandoned child"), ("stop", "stop a child"),
                       ("restart", "stop and start a child")):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument("path", help="the child's path, e.g. jobs/sleeper")
    call = sub.add_parser("call", help="call a worker; prints the result as JSON")
    call.add_argument("path")
    call.add_argument("method")
    call.add_argument("args", nargs="?", default="[]", help="a JSON array of arguments")
    call.add_argument("--timeout", type=float, default=None)
    sub.add_parser("shutdown", help="stop the running tree")
    for cmd in sub.choices.values():
        if cmd.prog.split()[-1] != "check":
            cmd.add_argument("--socket", default=None, help="the tree's control socket")
        if cmd.prog.split()[-1] not in ("check", "run"):
            cmd.add_argument("--server-uid", type=_uid, default=None, metavar="UID|USER",
                             help="trust a tree run by this user (default: only your own)")
    return parser


def _uid(text: str) -> int:
    """--server-uid: a uid number or a user name."""
    import pwd

    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text!r}") from None


def _configure_logging(json_lines: bool) -> None:
    from loguru import logger

    from .tree.logsink import stderr_sink

    # Not sys.stderr: a write there waits for the reader, and the tree's loop with it.
    sink = stderr_sink()
    logger.remove()
    if json_lines:
        logger.add(sink, serialize=True, level="INFO")
    else:
        logger.add(sink, level="INFO", colorize=sink.isatty(),
                   format="{time:HH:mm:ss.SSS} | {level: <7} | {message}")


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        return _COMMANDS[args.command](args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except SupervisorError as exc:
        print(f"error: {type(exc).__name__}: {str(exc).splitlines()[0]}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    from .config import load
    from .service.root import run_tree

    spec = load(args.tree)
    _configure_logging(args.log_json)
    return run_tree(spec, args.socket)


def _check(args: argparse.Namespace) -> int:
    from .config import format_tree, load

    print(format_tree(load(args.tree)))
    return EXIT_OK


def _connect(args: argparse.Namespace) -> Any:
    from . import telemetry
    from .app import connect

    telemetry.detach(telemetry.DEFAULT_REPORTER)  # a control command prints, not logs
    return connect(args.socket, server_uid=args.server_uid)


def _split(path: str) -> tuple[str, str]:
    parent, _, child_id = path.strip("/").rpartition("/")
    if not child_id:
        raise ConfigError("expected a child path such as 'jobs/sleeper'", field="PATH")
    return parent, child_id


def _child_command(args: argparse.Namespace) -> int:
    """start / stop / restart PATH: OTP's restart_child and terminate_child."""
    parent, child_id = _split(args.path)
    with _connect(args) as app:
        if args.command in ("stop", "restart"):
            app.terminate_child(parent, child_id)
        if args.command == "stop":
            print(f"{args.path}: stopped")
            return EXIT_OK
        pid = app.restart_child(parent, child_id)
    print(f"{args.path}: {args.command}ed (pid {pid})")  # started / restarted
    return EXIT_OK


def _call(args: argparse.Namespace) -> int:
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expected a JSON array, got {args.args!r}: {exc}",
                          field="JSON-ARGS") from None
    if not isinstance(call_args, list):
        raise ConfigError(f"expected a JSON array, got {args.args!r}", field="JSON-ARGS")
    app = _connect(args)
    with app:
        result = app.call(args.path, args.method, *call_args, timeout=args.timeout)
    print(json.dumps(result, default=repr))
    return EXIT_OK


def _shutdown(args: argparse.Namespace) -> int:
    # A refused request raises (exit 1 or 2 with the server's reason); only a tree that
    # reported its exit is "stopped".
    app = _connect(args)
    app.stop(timeout=60)
    print(f"tree stopped ({app.wait(0)})")
    return EXIT_OK


def _status(args: argparse.Namespace) -> int:
    app = _connect(args)
    with app:
        tree = app.status()
    if args.json:
        print(json.dumps(tree, indent=2))
        return EXIT_OK
    print(format_status(tree))
    return EXIT_OK


def format_status(tree: dict[str, Any]) -> str:
    """The status tree as a table: one row per node (and a REASON column, when a child
    was abandoned, saying why)."""
    header = ("PATH", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "CIRCUIT")
    nodes = list(_walk(tree, 0))
    reasons = any(node.get("reason") for node, _ in nodes)
    if reasons:
        header += ("REASON",)
    rows = [header]
    for node, depth in nodes:
        row = (
            ("  " * depth) + (node["path"] or "/"), node["kind"], node["state"],
            str(node["pid"] or "-"), _duration(node.get("uptime")),
            str(node.get("restarts", 0)), _mib(node.get("memory_mb")),
            _circuit(node),
        )
        rows.append(row + (node.get("reason") or "-",) if reasons else row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


def _walk(node: dict[str, Any], depth: int):
    yield node, depth
    for child_node in node.get("children", ()):
        yield from _walk(child_node, depth + 1)


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def _mib(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}M"


def _circuit(node: dict[str, Any]) -> str:
    circuit = node.get("circuit")
    if circuit in (None, "closed"):
        return "-" if node["kind"] == "supervisor" else "closed"
    retry_at = node.get("retry_at")
    if circuit == "open" and retry_at:
        return f"open (trial in {max(0.0, retry_at - time.time()):.0f}s)"
    return circuit


_COMMANDS = {
    "run": _run,
    "check": _check,
    "status": _status,
    "start": _child_command,
    "stop": _child_command,
    "restart": _child_command,
    "call": _call,
    "shutdown": _shutdown,
}
