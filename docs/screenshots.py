"""Make docs/top.png and docs/web.png from a real run of the demo tree.

    .venv/bin/python docs/screenshots.py      # needs the ui and metrics extras, tmux, chromium

It runs `python -m supervisor run examples/demo.toml --metrics 127.0.0.1:0` with a token
file, makes a few calls, SIGKILLs `echo` and `jobs/helper` (a one_for_all group restart),
then photographs `top` in a tmux terminal (its screen, colours included, rendered to SVG by
rich and to PNG by headless Chromium) and the web page in headless Chromium.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.observe._browser import Browser, find_browser  # noqa: E402
from tests.observe._tmux import Tmux, rows  # noqa: E402

PY = sys.executable


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="screenshots-"))
    sock, token = tmp / "ctl.sock", tmp / "web.token"
    log = open(tmp / "run.log", "w+")
    service = subprocess.Popen([PY, "-m", "supervisor", "run", "examples/demo.toml",
                                "--socket", str(sock), "--metrics", "127.0.0.1:0",
                                "--metrics-token-file", str(token)], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=log)
    term = None
    try:
        url = _wait_url(log)
        ctl = ["--socket", str(sock)]

        def cli(*args: str) -> str:
            return subprocess.run([PY, "-m", "supervisor", *args, *ctl], cwd=ROOT, check=True,
                                  capture_output=True, text=True).stdout

        for n in range(5):
            cli("call", "counter", "incr", f"[{n}]")
        status = json.loads(cli("status", "--json"))
        pids = {node["path"]: node["pid"] for node in _nodes(status)}
        os.kill(pids["echo"], signal.SIGKILL)
        time.sleep(1.0)
        os.kill(pids["jobs/helper"], signal.SIGKILL)
        time.sleep(2.0)

        term = Tmux(tmp, [PY, "-m", "supervisor", "top", *ctl], cwd=ROOT, width=132,
                    height=30)
        term.wait_for(lambda s: len(rows(s)) == len(pids) and "helper" in s, "top's rows")
        term.keys("Down")
        term.keys("Down")
        time.sleep(2.5)  # two refreshes: CPU % needs an interval
        ansi = term._tmux("capture-pane", "-e", "-p")
        _terminal_png(ansi, ROOT / "docs" / "top.png", width=132)

        with Browser(find_browser(), width=1320, height=800) as browser:
            tab = browser.open(url)
            tab.wait(f"sessionStorage.setItem('supervisor-token', "
                     f"{json.dumps(token.read_text().strip())})")
            tab.until("document.querySelectorAll('#tree tr').length >= 7 && "
                      "document.querySelector('#events').childElementCount > 5")
            tab.screenshot(str(ROOT / "docs" / "web.png"))
        print("wrote docs/top.png and docs/web.png")
        return 0
    finally:
        if term is not None:
            term.close()
        service.send_signal(signal.SIGTERM)
        service.wait(30)
        log.close()


def _wait_url(log) -> str:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        log.seek(0)
        found = re.search(r"serving (http://\S+/) ", log.read())
        if found:
            return found.group(1)
        time.sleep(0.1)
    raise SystemExit("the tree did not start: " + log.read())


def _nodes(node: dict) -> list[dict]:
    return [node] + [n for child in node.get("children", ()) for n in _nodes(child)]


def _terminal_png(ansi: str, out: Path, width: int) -> None:
    """A terminal screen (text with ANSI colours) as a PNG: rich's SVG, Chromium's pixels."""
    from rich.console import Console
    from rich.text import Text

    console = Console(record=True, width=width, force_terminal=True, color_system="truecolor",
                      file=open(os.devnull, "w"))
    for line in ansi.rstrip("\n").split("\n"):
        console.print(Text.from_ansi(line), no_wrap=True, crop=True)
    svg = console.export_svg(title="python -m supervisor top")
    box = re.search(r'viewBox="0 0 ([\d.]+) ([\d.]+)"', svg)
    w, h = (int(float(box.group(1))) + 1, int(float(box.group(2))) + 1)
    page = out.with_suffix(".html")
    page.write_text(f"<html><body style='margin:0'>{svg}</body></html>")
    try:
        subprocess.run([find_browser(), "--headless=new", "--no-sandbox", "--disable-gpu",
                        "--hide-scrollbars", f"--window-size={w},{h}",
                        f"--screenshot={out}", page.as_uri()], check=True,
                       capture_output=True, timeout=60)
    finally:
        page.unlink()


if __name__ == "__main__":
    raise SystemExit(main())
