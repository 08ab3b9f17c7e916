"""Reloading a service's tree file: `python -m supervisor reload`, and SIGHUP.

    Reload request / SIGHUP ─▶ Reloader.reload(dry_run)
        load_service(file)         the whole file validated as `run` validates it; a bad
                                   one raises ConfigError and nothing changes
        refuse what cannot change  the root's id, its simple_one_for_one-ness, the [metrics]
                                   table while it is in effect (restart `run` for those)
        plan(running spec, new)    tree.reload: added, removed, changed, updated, unchanged
        apply                      tree.reconfigure, from the root down; the answer goes
                                   back only once everything is applied

The file is the one `run` was started with, read again from the same path. A reload is
the file's difference, not a restart: unchanged children keep their processes.
"""

from __future__ import annotations

import os
import time
from typing import Any

import attrs
import msgspec
from loguru import logger

from strategies.matrix import DEFAULT_MATRIX

from ..config import load_service
from ..errors import ConfigError
from ..tree.reload import check_live, differing, plan
from ..wire import messages as P
from ..wire.reload import ReloadReport

__all__ = ["TreeFile", "Reloader"]


@attrs.frozen
class TreeFile:
    """The file a service runs: `path`, and its ``[metrics]`` table as `run` read it
    (`metrics_in_effect`: no ``--metrics`` on the command line overrode it)."""

    path: str
    metrics: Any = None
    metrics_in_effect: bool = True


class Reloader:
    """Reloads of the service root `sup` from `source` (see the module doc)."""

    def __init__(self, sup: Any, source: TreeFile) -> None:
        self.sup = sup
        self.source = source

    def reload(self, dry_run: bool = False) -> ReloadReport:
        """Read the file again and apply its difference to the running tree (`dry_run`:
        only plan it). Raises ConfigError, with the file and the key, for a bad file or a
        setting that cannot change while the tree runs; the tree is then unchanged."""
        file = self.source.path
        spec, metrics = load_service(file)
        if self.sup.local_ray is not None:
            spec = self.sup.local_ray.apply(spec)  # the same local Ray head, if any
        try:
            check_live(self.sup.spec, spec)
            if self.source.metrics_in_effect and metrics != self.source.metrics:
                raise ConfigError("the HTTP server's settings cannot change while the tree "
                                  "runs; restart `run` to change them", field="metrics")
        except ConfigError as exc:
            raise ConfigError(exc.message, field=exc.field, value=exc.value,
                              file=file) from None
        changes, unchanged = plan(self.sup.spec, spec)
        own = [name for name in differing(self.sup.spec, spec) if name != "children"]
        report = ReloadReport(file=file, dry_run=dry_run, changes=changes,
                              unchanged=unchanged, fields=own)
        if dry_run:
            return report
        outcomes = self.sup.reconfigure.apply(spec, DEFAULT_MATRIX)
        report = msgspec.structs.replace(report, outcomes=outcomes)
        self._announce(report)
        return report

    def _announce(self, report: ReloadReport) -> None:
        failed = report.failed
        log = logger.warning if failed else logger.info
        log("reloaded {}: {}", report.file, report.summary())
        for outcome in failed:
            log("reload: {} {} failed to start ({}); it stays stopped: `start {}` tries "
                "again", outcome.action, outcome.path, outcome.message, outcome.path)
        counts = {"unchanged": report.unchanged, "failed": len(failed)}
        for change in report.changes:
            counts[change.action] = counts.get(change.action, 0) + 1
        self.sup.uplink.send(P.Event(
            name=["supervisor", "reload", "applied"],
            measurements={"time": time.time()},
            metadata={"path": "", "id": self.sup.spec.id, "pid": os.getpid(),
                      "supervisor": None, "reason": None, "category": None,
                      "restarts": None, "file": report.file, "fields": report.fields,
                      **counts}))

    # ------------------------------------------------------------------ the two ways in
    def request(self, msg: P.Reload, conn: Any) -> None:
        """A client's Reload: answered with the report once applied, or the refusal."""
        uplink = self.sup.uplink
        try:
            report = self.reload(msg.dry_run)
        except ConfigError as exc:
            logger.error("reload refused, the tree is unchanged: {}", exc)
            uplink.reply_error(conn, msg.id, "ConfigError", exc.message, field=exc.field,
                               file=exc.file, line=exc.line)
            return
        except Exception as exc:  # a bug: answered, logged, and the root keeps running
            logger.opt(exception=exc).error("reload failed: bug: {}: {}",
                                            type(exc).__name__, exc)
            uplink.reply_error(conn, msg.id, "WorkerError", f"the reload failed: "
                               f"{type(exc).__name__}: {exc}", category="system_error",
                               path="", remote_type=type(exc).__name__,
                               remote_message=str(exc))
            return
        uplink.relay(conn, P.Response(id=msg.id, value=report))

    def hangup(self) -> None:
        """SIGHUP: the same reload; a bad file is logged and changes nothing."""
        logger.info("SIGHUP: reloading {}", self.source.path)
        try:
            self.reload()
        except ConfigError as exc:
            logger.error("SIGHUP: reload refused, the tree is unchanged: {}", exc)

