"""`python -m supervisor top`: a live terminal view of a running tree (the `ui` extra).

    ┌ PATH  KIND  STATE  PID  UPTIME  RESTARTS  CPU%  RSS  CIRCUIT  INTENSITY  LAST FAILURE ┐
    │ one row per node, refreshed every second; the cursor selects a child                 │
    ├ the latest events, as they arrive                                                     ┤
    └ keys: r restart, s stop, t start, q quit                                              ┘

The table comes from the tree's status (one `GetStatus` per supervisor, asked from a
worker thread so the screen never waits on the tree); CPU % from psutil between two
refreshes; the last failure's category and decision from the `child.failure` events seen
since `top` started. Events reach us on the connection's reader thread and are queued;
the screen drains the queue on its own timer (a handler must not block that thread).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Mapping
from typing import Any

import psutil
from textual import work
from textual.app import App as TextualApp
from textual.app import ComposeResult
from textual.binding import Binding
from textual.widgets import DataTable, Footer, Log, Static

from .. import telemetry
from ..errors import SupervisorError
from ..wire import messages as P
from .events import event_key, format_event
from .status import circuit_text, collect, duration, intensity, walk

__all__ = ["Top"]

_HANDLER = "supervisor-top"
COLUMNS = ("PATH", "KIND", "STATE", "PID", "UPTIME", "RESTARTS", "CPU%", "RSS", "CIRCUIT",
           "INTENSITY", "LAST FAILURE")


class Top(TextualApp):
    """The `top` screen over a connected App (`supervisor.connect`)."""

    CSS = """
    DataTable { height: 2fr; }
    Log { height: 1fr; border-top: solid $accent; }
    #info { height: 1; background: $boost; }
    """
    BINDINGS = [
        Binding("r", "child('restart')", "restart"),
        Binding("s", "child('stop')", "stop"),
        Binding("t", "child('start')", "start"),
        Binding("q", "quit", "quit"),
    ]

    def __init__(self, tree: Any, interval: float = 1.0) -> None:
        super().__init__()
        self.supervised = tree
        self.interval = interval
        self.paths: list[str] = []
        self.procs: dict[int, psutil.Process] = {}
        self.failures: dict[str, str] = {}
        self.inbox: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        self.kept: set[tuple] | None = None  # the history's event keys, once it is shown

    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="info")
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield Log(max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        telemetry.attach(_HANDLER, [("supervisor",)], self._on_event)
        self.set_interval(0.25, self._drain)
        self.set_interval(self.interval, self.refresh_tree)
        self.load_history()
        self.refresh_tree()

    def on_unmount(self) -> None:
        telemetry.detach(_HANDLER)

    # the tree ----------------------------------------------------------------------
    def _on_event(self, name: tuple[str, ...], measurements: Mapping[str, Any],
                  metadata: Mapping[str, Any]) -> None:
        # The connection's reader thread: queue only (see the module docstring).
        self.inbox.append({"name": ".".join(name[1:]), "time": measurements.get("time"),
                           "path": metadata.get("path", ""),
                           "measurements": dict(measurements), "metadata": dict(metadata)})

    @work(thread=True, group="history")
    def load_history(self) -> None:
        """The events the service root kept (failures before `top` started included)."""
        try:
            kept = self.supervised._request(P.RecentEvents(id=0), timeout=10.0)
        except (SupervisorError, OSError) as exc:
            kept = []
            self.call_from_thread(self._show_info, f"no event history: {exc}")
        self.call_from_thread(self._show_history, kept)

    def _show_history(self, kept: list[dict[str, Any]]) -> None:
        for record in kept:
            self._write(record)
        self.kept = {event_key(record) for record in kept}
        self._drain()

    def _drain(self) -> None:
        if self.kept is None:
            return  # the history first: live events wait until it is shown
        while self.inbox:
            record = self.inbox.popleft()
            if event_key(record) in self.kept:  # delivered live and kept both
                self.kept.discard(event_key(record))
                continue
            self._write(record)

    def _write(self, record: dict[str, Any]) -> None:
        if record["name"] == "child.failure":
            meta = record["metadata"]
            self.failures[record["path"]] = f"{meta.get('category')} -> {meta.get('action')}"
        self.query_one(Log).write_line(format_event(record, as_json=False))

    @work(thread=True, exclusive=True, group="refresh")
    def refresh_tree(self) -> None:
        try:
            doc, raws = collect(self.supervised._request)
        except (SupervisorError, OSError) as exc:
            self.call_from_thread(self._show_info, f"cannot read the tree: {exc}")
            return
        rows = [self._row(node, depth, raws) for node, depth in walk(doc)]
        self.call_from_thread(self._show, doc, rows)

    def _row(self, node: dict[str, Any], depth: int, raws: dict[str, Any]) -> tuple:
        path = node["path"]
        raw = raws.get(path) if node["kind"] == "supervisor" else None
        return (path, ("  " * depth) + (path or "/"), node["kind"], node["state"],
                str(node["pid"] or "-"), duration(node.get("uptime")),
                str(node.get("restarts", 0)), self._cpu(node["pid"]),
                "-" if node.get("memory_mb") is None else f"{node['memory_mb']:.1f}M",
                circuit_text(node), intensity(raw) if raw else "",
                self.failures.get(path, ""))

    def _cpu(self, pid: int | None) -> str:
        if pid is None:
            return "-"
        proc = self.procs.get(pid)
        try:
            if proc is None:
                proc = self.procs[pid] = psutil.Process(pid)
                proc.cpu_percent(None)  # the first reading only starts the interval
                return "0.0"
            return f"{proc.cpu_percent(None):.1f}"
        except psutil.Error:  # it exited since the status was taken
            self.procs.pop(pid, None)
            return "-"

    def _show(self, doc: dict[str, Any], rows: list[tuple]) -> None:
        table = self.query_one(DataTable)
        selected = self.paths[table.cursor_row] if 0 <= table.cursor_row < len(self.paths) \
            else None
        table.clear()
        self.paths = [row[0] for row in rows]
        for row in rows:
            table.add_row(*row[1:], key=row[0] or "/")
        if selected in self.paths:
            table.move_cursor(row=self.paths.index(selected))
        self._show_info(f"tree {doc['id']!r}  root pid {doc['pid']}  "
                        f"{time.strftime('%H:%M:%S')}  {len(rows)} nodes")

    def _show_info(self, text: str) -> None:
        self.query_one("#info", Static).update(text)

    # keys --------------------------------------------------------------------------
    def action_child(self, action: str) -> None:
        table = self.query_one(DataTable)
        if not 0 <= table.cursor_row < len(self.paths) or not self.paths[table.cursor_row]:
            self._show_info("select a child (not the root) first")
            return
        self._control(action, self.paths[table.cursor_row])

    @work(thread=True, group="control")
    def _control(self, action: str, path: str) -> None:
        parent, _, child_id = path.rpartition("/")
        try:
            if action in ("stop", "restart"):
                self.supervised.terminate_child(parent, child_id)
            if action != "stop":
                self.supervised.restart_child(parent, child_id)
            text = f"{path}: {action} done"
        except SupervisorError as exc:
            text = f"{path}: {action} refused: {str(exc).splitlines()[0]}"
        self.call_from_thread(self._show_info, text)
        self.call_from_thread(self.refresh_tree)

