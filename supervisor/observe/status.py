"""The status document of a whole tree, built from `GetStatus` answers.

`collect(request)` walks the tree supervisor by supervisor; `request(msg)` sends one
control request and returns its answer (an App's, or the service root's own control
client in `observe.control`). The document is the one `status --json` prints; the raw
`GetStatus` answers come along for what the document leaves out (intensity limits).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec
import psutil

from ..wire import messages as P

__all__ = ["collect", "children_of", "intensity", "walk", "duration", "circuit_text",
           "rss_mb"]

Request = Callable[[Any], Any]


def collect(request: Request, path: str = "") -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(the status document of the supervisor at `path`, "" for the whole tree; the raw
    `GetStatus` answer of every running supervisor below by path). Raises what `request`
    raises (NoSuchChild for a path that is not a supervisor, or one that left meanwhile)."""
    raws: dict[str, dict[str, Any]] = {}
    return _node(request, path, raws), raws


def _node(request: Request, path: str, raws: dict[str, dict[str, Any]]) -> dict[str, Any]:
    raw = request(P.GetStatus(id=0, path=path))
    raws[path] = raw
    node = {"id": raw["id"], "path": path, "kind": "supervisor", "state": "running",
            "pid": raw["pid"], "strategy": raw["strategy"],
            "recent_restarts": raw["recent_restarts"], "recovery": raw["recovery"],
            "memory_mb": rss_mb(raw["pid"]), "children": []}
    for info in children_of(raw):
        if info.kind == "supervisor" and info.state == "running":
            sub = _node(request, info.path, raws)
            sub["restarts"] = info.restarts
            node["children"].append(sub)
            continue
        entry = {
            "id": info.id, "path": info.path, "kind": info.kind, "state": info.state,
            "pid": info.pid, "restarts": info.restarts, "memory_mb": rss_mb(info.pid),
            "uptime": (time.time() - info.started_at) if info.started_at else None,
            "circuit": info.circuit, "retry_at": info.retry_at, "reason": info.reason,
        }
        if info.node_ip is not None:  # a Ray child: where its actor runs
            entry["node"] = {"ip": info.node_ip, "id": info.node_id}
        node["children"].append(entry)
    return node


def children_of(raw: dict[str, Any]) -> list[P.ChildInfo]:
    """The children listed in a raw `GetStatus` answer."""
    return msgspec.convert(raw["children"], list[P.ChildInfo])


def rss_mb(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        return psutil.Process(pid).memory_info().rss / (1024 * 1024)
    except psutil.Error:  # exited since it was listed
        return None


def walk(node: dict[str, Any], depth: int = 0):
    """Every node of a status document with its depth, parents first."""
    yield node, depth
    for child in node.get("children", ()):
        yield from walk(child, depth + 1)


def intensity(raw: dict[str, Any]) -> str:
    """A supervisor's restart intensity used in its window: ``2/3 in 5s``."""
    return f"{raw['recent_restarts']}/{raw['max_restarts']} in {raw['max_seconds']:g}s"


def duration(seconds: float | None) -> str:
    """``3m07s``, ``2h05m``, or ``-`` for None."""
    if seconds is None:
        return "-"
    seconds = int(seconds)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def circuit_text(node: dict[str, Any]) -> str:
    """A node's circuit for a table: ``closed``, ``open (trial in 12s)``, ``-`` for a
    supervisor."""
    circuit = node.get("circuit")
    if circuit in (None, "closed"):
        return "-" if node["kind"] == "supervisor" else "closed"
    retry_at = node.get("retry_at")
    if circuit == "open" and retry_at:
        return f"open (trial in {max(0.0, retry_at - time.time()):.0f}s)"
    return circuit
