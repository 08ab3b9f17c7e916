"""`python -m supervisor events [-f] [--json]`: the tree's telemetry events on stdout.

Without `-f`: the events the service root kept (its last 500), then exit. With `-f`: the
same, then every new event as it happens, until the tree stops (exit 0) or Ctrl-C. One line
per event, flushed at once (for pipes and log shippers): ``HH:MM:SS.mmm event path facts``,
or with `--json` one JSON object per line with `event`, `time`, `path`, `measurements` and
`metadata`.
"""

from __future__ import annotations

import json
import queue
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

from .. import telemetry
from ..wire import messages as P

__all__ = ["stream", "format_event", "event_key"]

_HANDLER = "supervisor-events-command"


def format_event(record: Mapping[str, Any], as_json: bool) -> str:
    """One output line for a record (`name`, `time`, `path`, `measurements`, `metadata`)."""
    if as_json:
        return json.dumps({"event": record["name"], "time": record["time"],
                           "path": record["path"], "measurements": record["measurements"],
                           "metadata": record["metadata"]}, default=repr)
    when = record["time"]
    clock = (time.strftime("%H:%M:%S", time.localtime(when)) + f".{int(when % 1 * 1000):03d}"
             if when else "--:--:--.---")
    facts = " ".join(f"{key}={value}" for key, value in record["metadata"].items()
                     if value is not None and key not in ("path", "id", "supervisor"))
    return f"{clock} {record['name']} {record['path'] or '/'} {facts}".rstrip()


def event_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    """What tells one event from another (an event may arrive both live and kept)."""
    return (record["name"], record["time"], record["path"], record["metadata"].get("pid"))


def stream(app: Any, *, follow: bool, as_json: bool, out: TextIO = sys.stdout) -> int:
    """Print the kept events, then (with `follow`) the new ones until the tree stops."""
    live: queue.Queue[dict[str, Any]] = queue.Queue()

    def on_event(name: tuple[str, ...], measurements: Mapping[str, Any],
                 metadata: Mapping[str, Any]) -> None:
        live.put({"name": ".".join(name[1:]), "time": measurements.get("time"),
                  "path": metadata.get("path", ""), "measurements": dict(measurements),
                  "metadata": dict(metadata)})

    if follow:  # before asking: no event falls between the kept ones and the live ones
        telemetry.attach(_HANDLER, [("supervisor",)], on_event)
    try:
        kept = app.link.request(P.RecentEvents(id=0))
        seen = {event_key(record) for record in kept}
        for record in kept:
            print(format_event(record, as_json), file=out, flush=True)
        while follow:
            try:
                record = live.get(timeout=0.5)
            except queue.Empty:
                if app.wait(0) is not None:  # the tree stopped, or the connection ended
                    return 0
                continue
            if event_key(record) in seen:  # delivered live and also among the kept ones
                seen.discard(event_key(record))
                continue
            print(format_event(record, as_json), file=out, flush=True)
    finally:
        telemetry.detach(_HANDLER)
    return 0
