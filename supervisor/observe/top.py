"""`python -m supervisor top`: a live terminal view of a running tree (the `ui` extra).

    ┌ PATH  KIND  STATE  PID  UPTIME  RESTARTS  CPU%  RSS  CIRCUIT  INTENSITY  LAST FAILURE ┐
    │ one row per node, refreshed every second; the cursor selects a child                 │
    ├ the latest events, as they arrive                                                     ┤
    └ keys: r restart, s stop, t start, q quit                                              ┘

Threads: the screen (textual's loop) never waits on the tree, and nothing waits on the
screen. A daemon thread reads the tree's status every `interval` (one `GetStatus` per
supervisor, CPU % from psutil between two reads) and leaves the rows in `latest`; the
connection's reader thread queues events (a telemetry handler must not block it); a key
starts a daemon thread for its request, which leaves its outcome in `notice`. The screen
picks all three up on its own 0.25 s timer. Daemon threads, because a request to a tree
that stopped answering may wait up to its timeout, and quitting must not wait for it.

The last failure's category and decision come from the `child.failure` events: those the
service root kept (its last 500, read once at start) and every one since.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Mapping
from typing import Any

import psutil
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
        self.procs: dict[int, psutil.Process] = {}  # the reader thread's alone
        self.failures: dict[str, str] = {}
        self.inbox: collections.deque[dict[str, Any]] = collections.deque(maxlen=1000)
        # Left by the threads, taken by the screen's timer (one reference swap each).
        self.history: list[dict[str, Any]] | None = None
        self.latest: tuple[dict[str, Any], dict[str, Any]] | None = None
        self.notice: str | None = None
        self.kept: set[tuple] | None = None  # the history's event keys, once it is shown
        self.wake = threading.Event()  # read the tree now (after a key's request)
        self.done = threading.Event()

    def compose(self) -> ComposeResult:
        yield Static("connecting...", id="info")
        yield DataTable(cursor_type="row", zebra_stripes=True)
        yield Log(max_lines=500)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one(DataTable).add_columns(*COLUMNS)
        telemetry.attach(_HANDLER, [("supervisor",)], self._on_event)
        threading.Thread(target=self._read_tree, name="top-reader", daemon=True).start()
        self.set_interval(0.25, self._update)

    def on_unmount(self) -> None:
        self.done.set()
        self.wake.set()
        telemetry.detach(_HANDLER)

    # threads -----------------------------------------------------------------------
    def _on_event(self, name: tuple[str, ...], measurements: Mapping[str, Any],
                  metadata: Mapping[str, Any]) -> None:
        # The connection's reader thread: queue only (see the module docstring).
        self.inbox.append({"name": ".".join(name[1:]), "time": measurements.get("time"),
                           "path": metadata.get("path", ""),
                           "measurements": dict(measurements), "metadata": dict(metadata)})

    def _read_tree(self) -> None:
        try:
            self.history = self.supervised.link.request(P.RecentEvents(id=0), timeout=10.0)
        except (SupervisorError, OSError) as exc:
            self.history = []
            self.notice = f"no event history: {exc}"
        while not self.done.is_set():
            try:
                doc, raws = collect(self.supervised.link.request)
            except (SupervisorError, OSError) as exc:
                self.notice = f"cannot read the tree: {exc}"
            else:
                self.latest = (doc, {node["path"]: self._cpu(node["pid"])
                                     for node, _ in walk(doc)}), raws
            self.wake.wait(self.interval)
            self.wake.clear()

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

    def _control(self, action: str, path: str) -> None:
        parent, _, child_id = path.rpartition("/")
        try:
            if action in ("stop", "restart"):
                self.supervised.terminate_child(parent, child_id)
            if action != "stop":
                self.supervised.restart_child(parent, child_id)
            self.notice = f"{path}: {action} done"
        except (SupervisorError, OSError) as exc:
            self.notice = f"{path}: {action} refused: {str(exc).splitlines()[0]}"
        self.wake.set()

    # the screen --------------------------------------------------------------------
    def _update(self) -> None:
        if self.kept is None and self.history is not None:
            for record in self.history:
                self._write(record)
            self.kept = {event_key(record) for record in self.history}
        if self.kept is not None:  # the history first: live events wait until it is shown
            while self.inbox:
                record = self.inbox.popleft()
                if event_key(record) in self.kept:  # delivered live and kept both
                    self.kept.discard(event_key(record))
                    continue
                self._write(record)
        latest, self.latest = self.latest, None
        if latest is not None:
            self._show(*latest)
        notice, self.notice = self.notice, None
        if notice is not None:
            self.query_one("#info", Static).update(notice)

    def _write(self, record: dict[str, Any]) -> None:
        if record["name"] == "child.failure":
            meta = record["metadata"]
            self.failures[record["path"]] = f"{meta.get('category')} -> {meta.get('action')}"
        self.query_one(Log).write_line(format_event(record, as_json=False))

    def _show(self, read: tuple[dict[str, Any], dict[str, str]],
              raws: dict[str, Any]) -> None:
        doc, cpu = read
        table = self.query_one(DataTable)
        selected = self.paths[table.cursor_row] if 0 <= table.cursor_row < len(self.paths) \
            else None
        table.clear()
        self.paths = []
        for node, depth in walk(doc):
            path = node["path"]
            raw = raws.get(path) if node["kind"] == "supervisor" else None
            self.paths.append(path)
            table.add_row(
                ("  " * depth) + (path or "/"), node["kind"], node["state"],
                str(node["pid"] or "-"), duration(node.get("uptime")),
                str(node.get("restarts", 0)), cpu.get(path, "-"),
                "-" if node.get("memory_mb") is None else f"{node['memory_mb']:.1f}M",
                circuit_text(node), intensity(raw) if raw else "",
                self.failures.get(path, ""), key=path or "/")
        if selected in self.paths:
            table.move_cursor(row=self.paths.index(selected))
        self.query_one("#info", Static).update(
            f"tree {doc['id']!r}  root pid {doc['pid']}  {time.strftime('%H:%M:%S')}  "
            f"{len(self.paths)} nodes")

    # keys --------------------------------------------------------------------------
    def action_child(self, action: str) -> None:
        table = self.query_one(DataTable)
        if not 0 <= table.cursor_row < len(self.paths) or not self.paths[table.cursor_row]:
            self.query_one("#info", Static).update("select a child (not the root) first")
            return
        threading.Thread(target=self._control, args=(action, self.paths[table.cursor_row]),
                         name="top-control", daemon=True).start()
