"""The command line: ``python -m supervisor COMMAND`` (or ``otp-supervisor COMMAND``).

    run TREE.toml        the tree in the foreground (SIGTERM / Ctrl-C stop it gracefully;
                         SIGHUP reloads the file, as `reload` does)
    reload [--dry-run]   re-read the running tree's file and apply the difference (added,
                         removed, changed children; unchanged ones keep running)
    check TREE.toml      validate the file and print the tree, starting nothing
    status [PATH]        the running tree (or one subtree): path, kind, state, pid, uptime,
                         restarts, RSS, circuit (and why, for an abandoned child)
    start|stop|restart PATH
    restart --rolling PATH   replace the workers under PATH one at a time, on fresh code
    signal PATH SIGNAL   a signal to a running child (a program: its process group)
    call PATH METHOD [JSON-ARGS]   (an array of arguments, or an object of keyword ones)
    shutdown
    top                  a live view of the running tree (needs the ui extra)
    events [-f] [--json] the tree's telemetry events (-f: keep following)
    logs PATH [-n N] [-f] [--json]   one child's output (-f: keep following)
    completion SHELL     a completion script for bash, zsh or tcsh (needs the completion
                         extra)

`run --metrics HOST:PORT` (or a `[metrics]` table) serves Prometheus metrics, the status
as JSON and a web page of the tree from a thread of the service root (see observe.web);
`check --graph` prints the tree as Graphviz DOT text.

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
import os
import sys
from pathlib import Path
from typing import Any

from .errors import ConfigError, SupervisorError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


# Each command: its one-line help, and an example for its --help.
_HELP = {
    "run": ("run a tree in the foreground",
            "python -m supervisor run examples/demo.toml --metrics 9464"),
    "check": ("validate a tree file and print the tree, starting nothing",
              "python -m supervisor check examples/demo.toml --graph | dot -Tsvg > tree.svg"),
    "status": ("show the running tree, or one subtree",
               "python -m supervisor status jobs --json"),
    "start": ("start a stopped or abandoned child (OTP's restart_child)",
              "python -m supervisor start jobs/ticker"),
    "stop": ("stop a child; it stays listed, stopped (OTP's terminate_child)",
             "python -m supervisor stop jobs/ticker"),
    "restart": ("stop a child, then start it again; --rolling: replace the workers under "
                "PATH one at a time, each new one ready before the old one leaves",
                "python -m supervisor restart --rolling jobs"),
    "call": ("call a worker's command; prints the result as JSON",
             "python -m supervisor call counter incr '[5]'\n"
             "  python -m supervisor call echo echo '{\"value\": \"hi\"}' --timeout 2"),
    "signal": ("send a signal to a running child (a program: to its process group)",
               "python -m supervisor signal jobs/sleeper SIGHUP"),
    "shutdown": ("stop the running tree (children in reverse order)",
                 "python -m supervisor shutdown"),
    "top": ("a live view of the running tree (needs the ui extra)", "python -m supervisor top"),
    "events": ("print the tree's telemetry events", "python -m supervisor events -f --json"),
    "reload": ("re-read the running tree's file and apply the difference (SIGHUP does "
               "the same)", "python -m supervisor reload --dry-run"),
    "logs": ("print the last lines of one worker's or program's output, and follow it",
             "python -m supervisor logs jobs/job-1 -n 100 -f"),
    "completion": ("print a shell completion script for otp-supervisor (needs the "
                   "completion extra)",
                   "python -m supervisor completion bash > "
                   "~/.local/share/bash-completion/completions/otp-supervisor"),
}

_SHELLS = ("bash", "zsh", "tcsh")
# The options whose value is a path: their completion offers files.
_PATH_OPTIONS = ("tree", "socket", "metrics_token_file", "svg", "log_dir", "log_file")


def _parser(prog: str = "python -m supervisor") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Erlang/OTP-style supervision trees for Python workers and programs.")
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s (otp-supervisor {_version()})")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str) -> argparse.ArgumentParser:
        text, example = _HELP[name]
        return sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".",
                              epilog=f"example:\n  {example.replace('python -m supervisor', prog)}",
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    run = command("run")
    run.add_argument("tree", help="the tree's TOML file")
    run.add_argument("--log-json", action="store_true", help="one JSON object per log line")
    run.add_argument("--log-dir", default=None, metavar="DIR",
                     help="write each worker's and program's output to DIR/<path>.log "
                          "(the [logs] table's dir)")
    run.add_argument("--log-file", default=None, metavar="FILE",
                     help="write the supervisor's own log to FILE too (the [logs] "
                          "table's file)")
    run.add_argument("--metrics", default=None, metavar="HOST:PORT",
                     help="serve /metrics, /api/status and a web page of the tree there")
    run.add_argument("--metrics-token-file", default=None, metavar="PATH",
                     help="enable the web page's start/stop/restart buttons with the token "
                          "in PATH (made, random and 0600, when missing)")
    check = command("check")
    check.add_argument("tree", help="the tree's TOML file")
    check.add_argument("--graph", action="store_true",
                       help="print the tree as Graphviz DOT text instead")
    check.add_argument("--svg", default=None, metavar="FILE",
                       help="write the graph as SVG to FILE (needs Graphviz's dot)")
    status = command("status")
    status.add_argument("path", nargs="?", default="",
                        help="a supervisor's path, e.g. jobs (default: the whole tree)")
    status.add_argument("--json", action="store_true", help="print the status as JSON")
    for name in ("start", "stop"):
        command(name).add_argument("path", help="the child's path, e.g. jobs/sleeper")
    restart = command("restart")
    restart.add_argument("path", help="the child's path, e.g. jobs/sleeper; with --rolling "
                         "also a supervisor or pool, or / for the whole tree")
    restart.add_argument("--rolling", action="store_true",
                         help="replace every running worker under PATH one at a time on "
                              "freshly imported code, without failing a call")
    call = command("call")
    call.add_argument("path", help="the worker's path, e.g. jobs/job-1")
    call.add_argument("method", help="the command to run")
    call.add_argument("args", nargs="?", default="[]", metavar="JSON-ARGS",
                      help="a JSON array of arguments, or a JSON object of keyword arguments "
                           "(default: [])")
    call.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                      help="give up after SECONDS (default: the worker's call_timeout). A "
                           "call that times out is CallTimeout, and with the default "
                           "on_timeout='restart' its worker is replaced: its state is "
                           "unknown after a call it did not finish")
    sig = command("signal")
    sig.add_argument("path", help="the child's path, e.g. jobs/sleeper")
    sig.add_argument("signal", help="a signal name (SIGHUP, HUP) or number")
    command("shutdown")
    top = command("top")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    events = command("events")
    events.add_argument("-f", "--follow", action="store_true",
                        help="keep printing new events until the tree stops")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    reload = command("reload")
    reload.add_argument("--dry-run", action="store_true",
                        help="print the plan (added, removed, changed, unchanged) and "
                             "change nothing")
    reload.add_argument("--json", action="store_true", help="print the report as JSON")
    logs = command("logs")
    logs.add_argument("path", help="the worker's or program's path, e.g. jobs/job-1")
    logs.add_argument("-n", "--lines", type=_count, default=50, metavar="N",
                      help="how many of the last lines to print (default 50; at most the "
                           "500 the supervisor keeps)")
    logs.add_argument("-f", "--follow", action="store_true",
                      help="keep printing new lines until the tree stops")
    logs.add_argument("--json", action="store_true", help="one JSON object per line")
    command("completion").add_argument("shell", choices=_SHELLS, help="the shell")
    for cmd in sub.choices.values():
        if cmd.prog.split()[-1] == "completion":
            continue
        if cmd.prog.split()[-1] != "check":
            cmd.add_argument("--socket", default=None, help="the tree's control socket")
        if cmd.prog.split()[-1] not in ("check", "run"):
            cmd.add_argument("--server-uid", type=_uid, default=None, metavar="UID|USER",
                             help="trust a tree run by this user (default: only your own)")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("otp-supervisor")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "not installed"


def _uid(text: str) -> int:
    """--server-uid: a uid number or a user name."""
    import pwd

    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid
    except KeyError:
        raise argparse.ArgumentTypeError(f"no such user: {text!r}") from None


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"expected a number of lines >= 0, got {text!r}")
    return int(text)


def _configure_logging(json_lines: bool) -> None:
    from loguru import logger

    from .tree.logfiles import text_format
    from .tree.logsink import stderr_sink

    # Not sys.stderr: a write there waits for the reader, and the tree's loop with it.
    sink = stderr_sink()
    logger.remove()
    if json_lines:
        logger.add(sink, serialize=True, level="INFO")
    else:
        # A child's stdout and stderr lines carry their stream after the level.
        logger.add(sink, level="INFO", colorize=sink.isatty(), format=text_format())


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (see the module docstring)."""
    # `otp-supervisor ...` (the console script) and `python -m supervisor ...` are the same.
    prog = "otp-supervisor" if Path(sys.argv[0]).name == "otp-supervisor" else \
        "python -m supervisor"
    args = _parser(prog).parse_args(argv)
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
    from .config import load_service
    from .observe.options import MetricsOptions
    from .service.reload import TreeFile
    from .service.root import run_tree

    spec, metrics = load_service(args.tree)
    file_metrics = metrics
    if args.metrics is not None:  # the command line wins over the file's [metrics]
        token_file = args.metrics_token_file or (metrics.token_file if metrics else None)
        metrics = MetricsOptions(address=args.metrics, token_file=token_file)
    elif args.metrics_token_file is not None:
        if metrics is None:
            raise ConfigError("--metrics-token-file needs --metrics ADDR or a [metrics] "
                              "table", field="metrics")
        metrics = MetricsOptions(address=metrics.address, token_file=args.metrics_token_file)
    logs = _log_options(args)
    _configure_logging(args.log_json)
    from .tree.childlog import install

    install(logs)  # before any child starts: they inherit it
    source = TreeFile(os.path.abspath(args.tree), file_metrics, args.metrics is None)
    return run_tree(spec, args.socket, metrics, source)


def _log_options(args: argparse.Namespace) -> Any:
    """The [logs] table, with --log-dir, --log-file and --log-json on top."""
    import attrs

    from .config import load_logs
    from .logoptions import LogOptions

    logs = load_logs(args.tree)
    given = {key: value for key, value in (("dir", args.log_dir), ("file", args.log_file))
             if value is not None}
    if given:
        logs = attrs.evolve(logs or LogOptions(), **given)
    if args.log_json and logs is not None:
        logs = attrs.evolve(logs, format="json")
    return logs


def _check(args: argparse.Namespace) -> int:
    from .config import format_tree, load_logs, load_service

    spec, _ = load_service(args.tree)
    load_logs(args.tree)  # a bad [logs] table is reported here too
    if not args.graph and args.svg is None:  # --svg FILE implies --graph
        print(format_tree(spec))
        return EXIT_OK
    from .observe.graph import to_dot, to_svg

    dot = to_dot(spec)
    if args.svg is None:
        sys.stdout.write(dot)
        return EXIT_OK
    svg = to_svg(dot)
    if svg is None:
        print("error: --svg needs Graphviz's dot program (e.g. apt-get install graphviz)",
              file=sys.stderr)
        return EXIT_USAGE
    with open(args.svg, "wb") as out:
        out.write(svg)
    print(f"wrote {args.svg}")
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
    if getattr(args, "rolling", False):
        return _rolling_restart(args)
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


def _rolling_restart(args: argparse.Namespace) -> int:
    with _connect(args) as app:
        replaced = app.rolling_restart(args.path)
    for path, old, new in replaced:
        print(f"{path}: pid {old} -> {new}")
    print(f"{args.path}: {len(replaced)} worker(s) replaced")
    return EXIT_OK


def _signal(args: argparse.Namespace) -> int:
    from ._validate import check_signal

    parent, child_id = _split(args.path)
    number = check_signal("SIGNAL", args.signal)
    with _connect(args) as app:
        pid = app.signal_child(parent, child_id, number)
    print(f"{args.path}: sent {signal_name(number)} (pid {pid})")
    return EXIT_OK


def signal_name(number: int) -> str:
    import signal

    return signal.Signals(number).name


def _call(args: argparse.Namespace) -> int:
    expected = "a JSON array of arguments or a JSON object of keyword arguments"
    try:
        call_args = json.loads(args.args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"expected {expected}, got {args.args!r}: {exc}",
                          field="JSON-ARGS") from None
    if isinstance(call_args, list):
        positional, keywords = call_args, {}
    elif isinstance(call_args, dict):
        positional, keywords = [], call_args
    else:
        raise ConfigError(f"expected {expected}, got {args.args!r}", field="JSON-ARGS")
    reserved = sorted(set(keywords) & {"timeout", "retry", "idempotent", "session"})
    if reserved:
        raise ConfigError(f"{', '.join(reserved)}: reserved by the call itself (use "
                          "--timeout); pass such an argument by position", field="JSON-ARGS")
    app = _connect(args)
    with app:
        result = app.call(args.path, args.method, *positional, timeout=args.timeout,
                          **keywords)
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
    from .observe.status import collect

    app = _connect(args)
    with app:
        tree = collect(app.link.request, args.path.strip("/"))[0]
    if args.json:
        print(json.dumps(tree, indent=2))
        return EXIT_OK
    print(format_status(tree))
    return EXIT_OK


def format_status(tree: dict[str, Any]) -> str:
    """The status tree as a table: one row per node (a NODE column when a child runs on
    a Ray cluster, and a REASON column, when a child was abandoned, saying why)."""
    from .observe.status import circuit_text, duration, walk

    header = ("PATH", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "RSS", "CIRCUIT")
    nodes = list(walk(tree, 0))
    placed = any(node.get("node") for node, _ in nodes)
    if placed:
        header += ("NODE",)
    reasons = any(node.get("reason") for node, _ in nodes)
    if reasons:
        header += ("REASON",)
    rows = [header]
    for node, depth in nodes:
        memory = node.get("memory_mb")
        row = (
            ("  " * depth) + (node["path"] or "/"), node["kind"], node["state"],
            str(node["pid"] or "-"), duration(node.get("uptime")),
            str(node.get("restarts", 0)), "-" if memory is None else f"{memory:.1f}M",
            circuit_text(node),
        )
        if placed:
            where = node.get("node")
            row += (f"{where['ip']} {where['id'][:12]}" if where else "-",)
        rows.append(row + (node.get("reason") or "-",) if reasons else row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True))
                     .rstrip() for row in rows)


# ---------------------------------------------------------------------- observing
def _top(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("textual") is None:
        print("error: top needs the ui extra: pip install 'otp-supervisor[ui]'",
              file=sys.stderr)
        return EXIT_USAGE
    from .observe.top import Top

    with _connect(args) as app:
        Top(app, interval=args.interval).run()
    return EXIT_OK


def _events(args: argparse.Namespace) -> int:
    from .observe.events import stream

    with _connect(args) as app:
        try:
            return stream(app, follow=args.follow, as_json=args.json)
        except KeyboardInterrupt:
            return EXIT_OK


def _reload(args: argparse.Namespace) -> int:
    """reload [--dry-run] [--json]: exit 0 applied (or planned), 1 a child failed to
    start (the rest is applied), 2 a bad file (nothing changed)."""
    import msgspec

    with _connect(args) as app:
        report = app.reload(dry_run=args.dry_run)
    if args.json:
        print(msgspec.json.encode(report).decode())
    else:
        print(_reload_text(report))
    return EXIT_FAILED if report.failed else EXIT_OK


def _reload_text(report: Any) -> str:
    if report.dry_run:
        lines = [f"plan for {report.file} (dry run, nothing changed): {report.summary()}"]
        lines += [f"  {c.action:<8} {c.path}" + (f" ({', '.join(c.fields)})" if c.fields
                                                  else "") for c in report.changes]
        return "\n".join(lines)
    lines = [f"reloaded {report.file}: {report.summary()}"]
    for outcome in report.outcomes:
        line = f"  {outcome.action:<8} {outcome.path}: {outcome.result.replace('_', ' ')}"
        if outcome.pid is not None:
            line += f" (pid {outcome.pid})"
        if outcome.message:
            line += f": {outcome.message}"
        lines.append(line)
    return "\n".join(lines)


def _logs(args: argparse.Namespace) -> int:
    from .errors import NoSuchChild
    from .observe.logs import show

    with _connect(args) as app:
        try:
            return show(app, args.path, lines=args.lines, follow=args.follow,
                        as_json=args.json)
        except NoSuchChild as exc:  # a typo in PATH, or a supervisor's path: usage
            print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            return EXIT_OK
        except BrokenPipeError:  # `logs -f | head`: the reader has what it wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return EXIT_OK


def _completion(args: argparse.Namespace) -> int:
    try:
        import shtab
    except ImportError:
        print("error: completion needs the completion extra: "
              "pip install 'otp-supervisor[completion]'", file=sys.stderr)
        return EXIT_USAGE
    # The script completes the console script's name, whichever way it was asked for.
    parser = _parser("otp-supervisor")
    for action in _actions(parser):
        if action.dest in _PATH_OPTIONS:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
    print(shtab.complete(parser, shell=args.shell))
    return EXIT_OK


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """Every action of the parser and of its subcommands."""
    found = []
    for action in parser._actions:
        found.append(action)
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_actions(sub))
    return found


_COMMANDS = {
    "run": _run,
    "check": _check,
    "status": _status,
    "start": _child_command,
    "stop": _child_command,
    "restart": _child_command,
    "call": _call,
    "signal": _signal,
    "shutdown": _shutdown,
    "top": _top,
    "events": _events,
    "reload": _reload,
    "logs": _logs,
    "completion": _completion,
}
