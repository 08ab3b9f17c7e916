"""The web page in a real headless Chromium (driven over its DevTools pipe): the tree is
rendered, a kill shows up without reloading, a button without the right token is refused."""

from __future__ import annotations

import json
import os
import signal

import pytest

from .._procs import wait_gone
from .._service import running
from ._browser import Browser, find_browser
from ._observe import PATHS, TREE, pid_of, served

BROWSER = find_browser()
pytestmark = [
    pytest.mark.integration, pytest.mark.timeout(120),
    pytest.mark.skipif(BROWSER is None, reason="no Chromium found (apt-get install chromium)"),
]


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


def _row(path: str) -> str:
    """JS: the text cells of the page's row for `path`."""
    return (f"Array.from(document.querySelectorAll('#tree tr')).filter(r => r.dataset.path "
            f"=== {json.dumps(path)}).map(r => Array.from(r.cells).map(c => c.textContent))[0]")


def test_the_page_shows_the_tree_and_a_kill_without_reloading(service):
    svc = service(TREE, "--metrics", "127.0.0.1:0")
    url = served(svc)
    with Browser(BROWSER) as browser:
        tab = browser.open(url)
        shown = tab.until("document.querySelectorAll('#tree tr').length === 5",
                          "Array.from(document.querySelectorAll('#tree tr'))"
                          ".map(r => r.dataset.path)")
        assert shown == PATHS
        pid = pid_of(svc, "jobs/calc")
        cells = tab.until(f"({_row('jobs/calc')})[3] === '{pid}'", _row("jobs/calc"))
        assert cells[1:4] == ["worker", "running", str(pid)]
        assert tab.wait(_row("jobs"))[8] == "0/3 in 5s"  # intensity used in the window
        tab.wait("window.loadedOnce = true")  # gone if the page were reloaded

        os.kill(pid, signal.SIGKILL)
        cells = tab.until(f"({_row('jobs/calc')})[3] !== '{pid}' && "
                          f"({_row('jobs/calc')})[2] === 'running' && "
                          f"({_row('jobs/calc')})[5] === '1'", _row("jobs/calc"))
        assert cells[9] == "connection_error \u2192 restart"  # the last failure's decision
        assert tab.wait(_row("jobs"))[8] == "1/3 in 5s"
        events = tab.until("document.querySelector('#events').innerText.includes("
                           "'child.restarted jobs/calc')",
                           "document.querySelector('#events').innerText")
        assert "child.exited jobs/calc" in events
        assert tab.wait("window.loadedOnce") is True
        assert tab.wait("document.querySelectorAll('button').length") == 0  # read-only


def test_a_button_without_the_right_token_is_refused(service, tmp_path):
    token_file = tmp_path / "web.token"
    svc = service(TREE, "--metrics", "127.0.0.1:0", "--metrics-token-file", str(token_file))
    url = served(svc)
    pid = pid_of(svc, "talker")
    click = ("document.querySelector('#tree tr[data-path=\"talker\"] "
             "button[data-action=\"restart\"]').click()")
    with Browser(BROWSER) as browser:
        tab = browser.open(url)
        tab.until("document.querySelectorAll('button[data-action=\"restart\"]').length === 4")
        tab.wait("document.querySelector('#token').value = 'not-the-token'")
        tab.wait(click)
        result = tab.until("document.querySelector('#result').textContent !== ''",
                           "document.querySelector('#result').textContent")
        assert result == "refused: missing or wrong X-Supervisor-Token header"
        assert pid_of(svc, "talker") == pid

        token = token_file.read_text().strip()
        tab.wait(f"document.querySelector('#result').textContent = ''; "
                 f"document.querySelector('#token').value = {json.dumps(token)}")
        tab.wait(click)
        result = tab.until("document.querySelector('#result').textContent !== ''",
                           "document.querySelector('#result').textContent")
        assert result == "talker: restart done"
        assert wait_gone([pid], 10) == []
        assert pid_of(svc, "talker") not in (None, pid)
