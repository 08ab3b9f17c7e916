"""A headless Chromium driven over its DevTools pipe (`--remote-debugging-pipe`).

No driver library: Chromium reads JSON commands from fd 3 and writes answers and events to
fd 4, each message ended by a NUL byte. `Browser.open(url)` makes a tab and attaches to it;
`tab.wait(js)` evaluates an expression that may return a Promise and waits for its value.
"""

from __future__ import annotations

import base64
import fcntl
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import time
from typing import Any

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "chrome")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    """One headless browser process; a context manager that ends it (by its pid)."""

    def __init__(self, executable: str, width: int = 1200, height: int = 700) -> None:
        self.profile = tempfile.TemporaryDirectory(prefix="observe-browser-")
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def child_fds() -> None:
            # The browser's fd 3 is what we write, its fd 4 what it writes. Copied above
            # 4 first, so that neither dup2 overwrites the other's source.
            high_r = fcntl.fcntl(to_browser_r, fcntl.F_DUPFD, 10)
            high_w = fcntl.fcntl(from_browser_w, fcntl.F_DUPFD, 10)
            os.dup2(high_r, 3)
            os.dup2(high_w, 4)

        self.proc = subprocess.Popen(
            [executable, "--headless=new", "--remote-debugging-pipe", "--no-sandbox",
             "--disable-gpu", "--no-first-run", "--no-default-browser-check",
             "--disable-extensions", "--disable-dev-shm-usage",
             f"--user-data-dir={self.profile.name}", f"--window-size={width},{height}",
             "about:blank"],
            pass_fds=(3, 4, to_browser_r, from_browser_w), preexec_fn=child_fds, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        for fd in (to_browser_r, from_browser_w):
            os.close(fd)
        self._ids = itertools.count(1)
        self._buffer = b""
        self._pending: list[dict[str, Any]] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30.0) -> dict[str, Any]:
        """One DevTools command; its result. Raises RuntimeError for an error answer,
        TimeoutError when none comes."""
        mid = next(self._ids)
        msg: dict[str, Any] = {"id": mid, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        os.write(self._to_browser, json.dumps(msg).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            for answer in self._read(deadline):
                if answer.get("id") == mid:
                    if "error" in answer:
                        raise RuntimeError(f"{method}: {answer['error']}")
                    return answer["result"]

    def _read(self, deadline: float) -> list[dict[str, Any]]:
        import select

        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the browser did not answer in time")
        ready, _, _ = select.select([self._from_browser], [], [], remaining)
        if not ready:
            raise TimeoutError("the browser did not answer in time")
        data = os.read(self._from_browser, 1 << 20)
        if not data:
            raise RuntimeError("the browser exited")
        self._buffer += data
        *complete, self._buffer = self._buffer.split(b"\0")
        return [json.loads(part) for part in complete if part]

    def open(self, url: str) -> Tab:
        """A new tab showing `url`, loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget",
                            {"targetId": target, "flatten": True})["sessionId"]
        tab = Tab(self, session)
        self.send("Page.navigate", {"url": url}, session)  # returns once committed
        tab.until(f"location.href === {json.dumps(url)} && document.readyState === 'complete'")
        return tab

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        os.close(self._to_browser)
        os.close(self._from_browser)
        self.profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Tab:
    def __init__(self, browser: Browser, session: str) -> None:
        self.browser = browser
        self.session = session

    def wait(self, expression: str, timeout: float = 20.0) -> Any:
        """The value of `expression` (awaited when it is a Promise)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                result = self.browser.send("Runtime.evaluate", {
                    "expression": expression, "awaitPromise": True, "returnByValue": True,
                    }, self.session, timeout=timeout + 5)
                break
            except RuntimeError as exc:
                # A navigation replaced the document the expression ran in: run it in
                # the new one (bounded by the same deadline).
                if "context was destroyed" not in str(exc) or time.monotonic() > deadline:
                    raise
        if "exceptionDetails" in result:
            raise AssertionError(f"in the page: {result['exceptionDetails']}")
        return result["result"].get("value")

    def until(self, condition: str, value: str = "true", timeout: float = 20.0) -> Any:
        """Wait until the JS `condition` is truthy in the page (checked every 100 ms by
        the page itself, which keeps updating meanwhile); then the value of `value`."""
        return self.wait(
            "new Promise((resolve, reject) => { const t0 = Date.now(); const check = () => {"
            f" let ok = false; try {{ ok = ({condition}); }} catch (e) {{}}"
            f" if (ok) resolve({value});"
            f" else if (Date.now() - t0 > {int(timeout * 1000)}) reject(new Error("
            f"'timed out: ' + {json.dumps(condition)} + ' | ' + document.body.innerText));"
            " else setTimeout(check, 100); }; check(); })", timeout)

    def screenshot(self, path: str) -> None:
        data = self.browser.send("Page.captureScreenshot", {"format": "png"}, self.session)
        with open(path, "wb") as out:
            out.write(base64.b64decode(data["data"]))
