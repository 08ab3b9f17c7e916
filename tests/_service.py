"""Service mode under test: `python -m supervisor run TREE.toml --socket PATH` in a subprocess.

Its stderr (the tree's log) is collected line by line by a reader thread, so tests wait for
a log line on a condition, never with a sleep. `running(tmp_path)` hands out services and
stops every one it started when the test ends, passed or failed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


class CollectedLines:
    """The lines of a subprocess's text stream, collected by a reader thread as they come,
    so a test waits for a line on a condition (`wait_for`), never with a sleep."""

    def collect(self, stream: Any) -> None:
        self.lines: list[str] = []
        self.cond = threading.Condition()
        self.reader = threading.Thread(target=self._collect, args=(stream,), daemon=True)
        self.reader.start()

    def _collect(self, stream: Any) -> None:
        for line in stream:
            with self.cond:
                self.lines.append(line.rstrip("\n"))
                self.cond.notify_all()
        with self.cond:  # EOF: wake the waiters, no line will come any more
            self.cond.notify_all()

    def wait_for(self, matches: Callable[[str], Any], what: str, timeout: float,
                 start: int = 0) -> int:
        """Index of the first line from `start` on for which `matches` is true.

        Raises AssertionError naming `what`, with the last lines, after `timeout` or as
        soon as the stream is closed without such a line.
        """
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for i in range(start, len(self.lines)):
                    if matches(self.lines[i]):
                        return i
                remaining = deadline - time.monotonic()
                # The reader appends under this lock, so once it is dead every line it will
                # ever read has been searched above.
                if remaining <= 0 or not self.reader.is_alive():
                    tail = "\n".join(line[:200] for line in self.lines[-30:])
                    raise AssertionError(f"no line {what}; last lines:\n{tail}")
                self.cond.wait(remaining)


class Service(CollectedLines):
    """One `supervisor run` of `tree` (TOML text, dedented) with its control socket in
    `tmp_path`; `extra` are more arguments for `run` (e.g. ``--log-json``).

    `socket`: the ``--socket`` path, relative to `tmp_path` unless absolute; None runs
    without ``--socket`` (the default path, which `env` decides: TMPDIR,
    XDG_RUNTIME_DIR), and control commands then find the tree there too. `env` is the
    service's environment (and its control commands'). `own_group` starts it in a process
    group of its own, so that a signal can go to the whole group as a terminal's does.
    """

    def __init__(self, tmp_path: Path, tree: str, *extra: str, socket: str | None = "ctl.sock",
                 env: dict[str, str] | None = None, own_group: bool = False) -> None:
        self.toml = tmp_path / "tree.toml"
        self.toml.write_text(textwrap.dedent(tree))
        self.socket = None if socket is None else str(tmp_path / socket)
        self.env = env
        # stdout is not read by anyone: a pipe could fill and block the service. Workers'
        # output reaches us through the log on stderr. Undecodable bytes a worker wrote
        # must not kill the reader thread, hence errors="replace".
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor", "run", str(self.toml), *self._where(),
             *extra], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            text=True, errors="replace", process_group=0 if own_group else None)
        self.collect(self.proc.stderr)

    def wait_line(self, text: str, timeout: float = 20.0, start: int = 0) -> int:
        """Index of the first line of the log (stderr) from `start` on that contains
        `text` (see `wait_for`)."""
        return self.wait_for(lambda line: text in line, f"with {text!r}", timeout, start)

    def _where(self) -> list[str]:
        return [] if self.socket is None else ["--socket", self.socket]

    def cmd(self, *args: str) -> subprocess.CompletedProcess:
        """`python -m supervisor ARGS --socket PATH`, a control command to this service."""
        return subprocess.run([sys.executable, "-m", "supervisor", *args, *self._where()],
                              cwd=ROOT, env=self.env, capture_output=True, text=True,
                              timeout=60)

    def signal_group(self, signum: int) -> None:
        """Send `signum` to the service's own process group (see `own_group`), as a
        terminal does to its foreground group; only while the service is unreaped."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signum)

    def connect(self) -> socket.socket:
        """A raw connection to the control socket (for tests that write bytes themselves)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10.0)
        sock.connect(self.socket)
        return sock

    def finish(self, timeout: float = 30.0) -> int:
        """Wait for the service to exit on its own; its exit status, with every line read.

        Raises subprocess.TimeoutExpired if it is still running after `timeout`."""
        try:
            return self.proc.wait(timeout)
        finally:
            self.reader.join(5)

    def stop(self, grace: float = 15.0) -> int:
        """Stop the service if it still runs and reap it; its exit status.

        SIGTERM first (a graceful shutdown of the tree); SIGKILL, the last resort, when it
        has not exited after `grace` (its children die with it: parent-death signal).
        Signals go through the Popen, to the pid we started and only while it is unreaped.
        """
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    return self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
            return self.proc.wait(10)
        finally:
            self.reader.join(5)
            self.proc.stderr.close()


@contextlib.contextmanager
def running(tmp_path: Path) -> Iterator[Callable[..., Service]]:
    """Yields start(tree, *extra, **options) -> Service (options as for Service); on exit every service started is stopped
    (the last started first), each one even when stopping another raised."""
    with contextlib.ExitStack() as stack:

        def start(tree: str, *extra: str, **options: Any) -> Service:
            svc = Service(tmp_path, tree, *extra, **options)
            stack.callback(svc.stop)
            return svc

        yield start
