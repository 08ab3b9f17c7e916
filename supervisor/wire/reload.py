"""The records of a configuration reload, as they cross the control socket.

    Change        one step of the plan: a child added, removed, changed (stopped, then
                  started from its new spec) or updated (a supervisor whose own settings or
                  children changed: the difference is applied inside it, recursively)
    Outcome       what applying one step did (started, stopped, failed, ...)
    ReloadReport  the answer to a `Reload` request: the file, the plan, the outcomes

They are maps inside a `Response.value`; rebuild one with
``msgspec.convert(value, ReloadReport)``.
"""

from __future__ import annotations

import msgspec

__all__ = ["ADDED", "REMOVED", "CHANGED", "UPDATED", "Change", "Outcome", "ReloadReport"]

# The four actions, as the plan and the telemetry events name them.
ADDED, REMOVED, CHANGED, UPDATED = "added", "removed", "changed", "updated"

# Outcome results. A child the file declares with autostart = false is "not_started".
STARTED, STOPPED, NOT_STARTED, FAILED, APPLIED = (
    "started", "stopped", "not_started", "failed", "applied")


class Change(msgspec.Struct, frozen=True):
    """One step of a reload plan. `path` is the child's path in the tree; `kind` its kind
    in the file ("worker", "program", "supervisor", "pool"); `fields` the spec fields
    that differ (for changed and updated children; "type" when its kind changed)."""

    action: str
    path: str
    kind: str
    fields: list[str] = msgspec.field(default_factory=list)


class Outcome(msgspec.Struct, frozen=True):
    """What applying one `Change` did: `result` is "started" (with the new `pid`),
    "stopped" (a removed child), "not_started" (autostart = false), "applied" (an updated
    supervisor) or "failed" (`message` says why: the child's start failure, or what went
    wrong inside a supervisor). A failed child stays listed, stopped, with its new spec:
    `start PATH` tries again."""

    action: str
    path: str
    result: str
    pid: int | None = None
    message: str | None = None


class ReloadReport(msgspec.Struct, frozen=True):
    """The answer to a reload: `changes` in the order they are (or would be) applied,
    `unchanged` the number of children of the file left as they were, and `outcomes`
    (empty for a dry run). `fields` are the root supervisor's own settings that changed."""

    file: str
    dry_run: bool
    changes: list[Change] = msgspec.field(default_factory=list)
    unchanged: int = 0
    fields: list[str] = msgspec.field(default_factory=list)
    outcomes: list[Outcome] = msgspec.field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        """The outcomes that failed."""
        return [o for o in self.outcomes if o.result == FAILED]

    def summary(self) -> str:
        """One line of counts: ``2 added, 1 removed, 1 changed, 0 updated, 5 unchanged``
        (then ``, 1 failed`` when a step failed, and ``; root: strategy`` when the root's
        own settings changed)."""
        counts = {action: 0 for action in (ADDED, REMOVED, CHANGED, UPDATED)}
        for change in self.changes:
            counts[change.action] += 1
        text = ", ".join(f"{n} {action}" for action, n in counts.items())
        text += f", {self.unchanged} unchanged"
        if self.failed:
            text += f", {len(self.failed)} failed"
        if self.fields:
            text += f"; root: {', '.join(self.fields)}"
        return text
