"""A terminal for `top`: a tmux server of the test's own (its own socket), read with
capture-pane. tmux daemonizes, so its server is not our descendant: `close()` kills it
(by its socket, never by name) and waits for the program in the pane to be gone."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from .._procs import wait_gone


class Tmux:
    def __init__(self, tmp_path: Path, command: list[str], cwd: Path, width: int = 170,
                 height: int = 45) -> None:
        self.socket = str(tmp_path / "tmux.sock")
        conf = tmp_path / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 100\n"
                        f"set -g default-size {width}x{height}\n")
        self._tmux("-f", str(conf), "new-session", "-d", "-x", str(width), "-y", str(height),
                   "-c", str(cwd), "-e", "TERM=xterm-256color",
                   # the size programs read from the environment first (textual does)
                   "-e", f"COLUMNS={width}", "-e", f"LINES={height}", *command)
        self.pane_pid = int(self._tmux("display-message", "-p", "#{pane_pid}").strip())

    def _tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True,
                              text=True, check=True, timeout=30).stdout

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p")

    def keys(self, *keys: str) -> None:
        self._tmux("send-keys", *keys)

    def wait_for(self, predicate: Callable[[str], object], what: str,
                 timeout: float = 30.0) -> str:
        """The screen once `predicate(screen)` holds. The screen has no change event to
        wait on: it is read every 0.1 s until then (bounded by `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; the screen:\n{screen}")
            time.sleep(0.1)

    def close(self) -> None:
        subprocess.run(["tmux", "-S", self.socket, "kill-server"], capture_output=True,
                       timeout=30)
        wait_gone([self.pane_pid], 10)


def have_tmux() -> bool:
    return shutil.which("tmux") is not None


def rows(screen: str) -> dict[str, list[str]]:
    """The table rows of `top`'s screen by path: the cells split on blanks."""
    found = {}
    for line in screen.splitlines():
        cells = line.split()
        if len(cells) >= 4 and cells[1] in ("worker", "supervisor"):
            found["" if cells[0] == "/" else cells[0]] = cells
    return found
