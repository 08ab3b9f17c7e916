"""`python -m supervisor logs PATH [-n N] [-f] [--json]`: one child's output on stdout.

The lines come from the tail the child's supervisor keeps (`tree.childlog`), whether or
not log files are configured. Without `-f`: the last N lines, then exit. With `-f`: then
every new line, asked for with `Logs(wait=True)` (each request parked by the supervisor
until a line arrives), until the tree stops (exit 0) or Ctrl-C. Lines that fell out of the
kept tail before they were asked for are one marker line: ``-- 12 lines dropped --``.

When the supervisor keeping the output is restarted (or stopped) meanwhile, the request
fails; the reader waits for the tree's next child event and asks again: a new supervisor
process keeps a new tail (a new epoch), read from its start.
"""

from __future__ import annotations

import sys
import threading
from typing import Any, TextIO

import msgspec

from .. import telemetry
from ..errors import CallTimeout, NoSuchChild, WorkerCrashed, WorkerError
from ..logoptions import format_line
from ..wire import messages as P

__all__ = ["show", "dropped_marker"]

_HANDLER = "supervisor-logs-command"
RETRY_WAIT = 30.0  # seconds a follower waits for a child event before asking again


def dropped_marker(count: int, as_json: bool, path: str) -> str:
    """The line that stands for `count` lines a reader missed."""
    if as_json:
        import json

        return json.dumps({"child": path, "dropped": count})
    return f"-- {count} lines dropped (they left the kept tail before they were read) --"


def _ask(app: Any, msg: P.Logs) -> P.LogChunk:
    value = app.link.request(msg, timeout=P.LOGS_WAIT + 30.0)
    return msgspec.convert(value, P.LogChunk)


def _print(chunk: P.LogChunk, path: str, as_json: bool, out: TextIO) -> None:
    if chunk.dropped:
        print(dropped_marker(chunk.dropped, as_json, path), file=out)
    for line in chunk.lines:
        out.write(format_line("json" if as_json else "text", path, line.time, line.stream,
                              line.level, line.message))
    out.flush()


def show(app: Any, path: str, *, lines: int, follow: bool, as_json: bool,
         out: TextIO = sys.stdout) -> int:
    """Print the last `lines` lines of the child at `path`, then (with `follow`) the new
    ones until the tree stops. Raises NoSuchChild for an unknown path (or a supervisor's),
    a WorkerError when the request cannot be answered at first."""
    path = path.strip("/")
    changed = threading.Event()  # a child started or exited somewhere, or the tree is gone
    if follow:
        telemetry.attach(_HANDLER, [("supervisor", "child")], lambda *_: changed.set())
        app.link.after_gone(changed.set)
    try:
        chunk = _ask(app, P.Logs(id=0, path=path, lines=lines))
        _print(chunk, path, as_json, out)
        while follow:
            changed.clear()
            try:
                chunk = _ask(app, P.Logs(id=0, path=path, after=chunk.next, wait=True,
                                         epoch=chunk.epoch))
            except CallTimeout:  # the parked request outlived its bound: ask again
                continue
            except WorkerCrashed:
                # The connection ended: the tree stopped. The link fails what waits before
                # it records the end, so give it a moment to do that.
                if app.wait(5.0) is not None:
                    return 0
                raise
            except NoSuchChild as exc:  # deleted meanwhile (a dynamic child)
                print(f"logs: {path} is gone: {exc}", file=sys.stderr)
                return 0
            except WorkerError:
                # The supervisor keeping its output is restarting or stopping: wait for the
                # tree to change, then ask the new one (or learn that the tree is gone).
                if app.wait(0) is not None:
                    return 0
                changed.wait(RETRY_WAIT)
                if app.wait(0) is not None:
                    return 0
                continue
            _print(chunk, path, as_json, out)
        return 0
    finally:
        if follow:
            telemetry.detach(_HANDLER)
