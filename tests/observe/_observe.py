"""Helpers for the observe tests: a service run with `--metrics`, HTTP requests to it."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from typing import Any

from .._service import Service
from ..cli.test_cli import TREE as CLI_TREE

# The CLI tests' tree, its program reported started at once (start_seconds = 0): the
# observe tests read the start order.
TREE = CLI_TREE.replace('  shutdown = 1.0\n', '  shutdown = 1.0\n  start_seconds = 0\n', 1)
assert TREE != CLI_TREE
PATHS = ["", "talker", "jobs", "jobs/sleeper", "jobs/calc"]


def served(svc: Service) -> str:
    """The URL the service's HTTP server announced (``http://127.0.0.1:PORT/``)."""
    line = svc.lines[svc.wait_line("serving http://")]
    return re.search(r"serving (http://\S+/) ", line).group(1)


def http(url: str, *, body: Any = None, headers: dict[str, str] | None = None,
         method: str | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; HTTP errors are answers too."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data=data, headers=headers or {}, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def get_json(url: str) -> Any:
    status, body = http(url)
    assert status == 200, body
    return json.loads(body)


def pid_of(svc: Service, path: str) -> int:
    tree = json.loads(svc.cmd("status", "--json").stdout)
    return _find(tree, path)["pid"]


def _find(node: dict, path: str) -> dict:
    if node["path"] == path:
        return node
    for child in node.get("children", ()):
        if path == child["path"] or path.startswith(child["path"] + "/"):
            return _find(child, path)
    raise KeyError(path)
