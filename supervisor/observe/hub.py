"""What the service root's loop publishes for its HTTP server: events and their counts.

The root's loop thread calls `Hub.publish` for every telemetry event of the tree; the HTTP
server's threads read copies (`since`, `counters`, `last_failures`). One lock guards it,
held only to append or copy, never across I/O.

Fork safety: the loop thread forks children while an HTTP thread may hold this lock; the
child then inherits a held lock. That is harmless because no child ever touches the hub:
it is reachable only from the service root's uplink, and a forked child runs worker or
supervisor code that never returns to the root's. (The rule the HTTP threads keep: they
hold no lock a forked child needs, i.e. they never log, never print, never attach
telemetry handlers.)
"""

from __future__ import annotations

import collections
import itertools
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["Hub"]


class Hub:
    """Recent events (at most `keep`) with a sequence number each, and running counts."""

    def __init__(self, keep: int = 500) -> None:
        self._lock = threading.Lock()
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=keep)
        self._seq = itertools.count(1)
        self._failures: collections.Counter[tuple[str, str, str]] = collections.Counter()
        self._counts: collections.Counter[str] = collections.Counter()
        self._last_failure: dict[str, dict[str, Any]] = {}

    def publish(self, name: list[str] | tuple[str, ...], measurements: Mapping[str, Any],
                metadata: Mapping[str, Any]) -> None:
        """Record one event (called on the root's loop thread)."""
        record = {"name": ".".join(name[1:]), "time": measurements.get("time"),
                  "path": metadata.get("path", ""), "measurements": dict(measurements),
                  "metadata": dict(metadata)}
        with self._lock:
            record["seq"] = next(self._seq)
            self._events.append(record)
            self._counts[record["name"]] += 1
            if record["name"] == "child.failure":
                key = (record["path"], str(metadata.get("category")),
                       str(metadata.get("action")))
                self._failures[key] += 1
                self._last_failure[record["path"]] = {
                    "category": metadata.get("category"), "action": metadata.get("action"),
                    "recovery": metadata.get("recovery"), "time": record["time"]}

    def since(self, seq: int = 0, limit: int = 500) -> list[dict[str, Any]]:
        """The kept events after sequence number `seq`, oldest first (at most `limit`)."""
        with self._lock:
            found = [e for e in self._events if e["seq"] > seq]
        return found[-limit:] if limit else []

    def counters(self) -> tuple[dict[tuple[str, str, str], int], dict[str, int]]:
        """(failures by (path, category, action), events by name) since the root started."""
        with self._lock:
            return dict(self._failures), dict(self._counts)

    def last_failures(self) -> dict[str, dict[str, Any]]:
        """Each failed child's last failure: category, action, recovery, time."""
        with self._lock:
            return {path: dict(fact) for path, fact in self._last_failure.items()}
