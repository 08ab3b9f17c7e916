"""Fixtures of the fault campaign, and the switch for its long runs.

Tests marked `slow` (the long chaos campaign) are skipped unless they are asked for with
``-m slow`` or ``SUPERVISOR_LONG=1``: the default run stays short.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from supervisor import WorkerError

from .._service import Service, running

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def long_runs_wanted(config: pytest.Config) -> bool:
    return os.environ.get("SUPERVISOR_LONG") == "1" or "slow" in (
        config.getoption("markexpr", default="") or "")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_runs_wanted(config):
        return
    skip = pytest.mark.skip(reason="long campaign: run with -m slow or SUPERVISOR_LONG=1")
    for item in items:
        # Only this folder's tests: the hook sees every collected item of the session.
        if HERE in item.path.parents and item.get_closest_marker("slow"):
            item.add_marker(skip)


# ------------------------------------------------------------------ the tree as it runs
WALK_WAIT = 1.0  # seconds a walk waits for a restarting supervisor before leaving it out


def walk(app, path: str = "", ancestors: tuple[int, ...] = ()) -> dict[str, dict]:
    """Every node below `path` that is running now: path -> {pid, kind, ancestors}.

    `ancestors` are the pids of the supervisors above the node (its own supervisor last),
    read in the same walk. A subtree whose supervisor is restarting while we look is left
    out (its `which_children` waits for it up to WALK_WAIT, then fails with a classified
    WorkerError).
    """
    nodes: dict[str, dict] = {}
    for info in app.which_children(path, timeout=WALK_WAIT):
        if info.state != "running" or info.pid is None:
            continue
        nodes[info.path] = {"pid": info.pid, "kind": info.kind, "ancestors": ancestors}
        if info.kind == "supervisor":
            try:
                nodes.update(walk(app, info.path, (*ancestors, info.pid)))
            except WorkerError:
                continue
    return nodes


@pytest.fixture
def raw_channel():
    """raw_channel(app, path) -> a CallChannel to the worker that the App does not share
    (`App._router._open`); its `.sock` is ours to write anything to. Closed at teardown."""
    opened = []

    def _open(app, path: str, timeout: float = 10.0):
        chan = app._router._open(path, time.monotonic() + timeout)
        opened.append(chan)
        return chan

    yield _open
    for chan in opened:
        chan.close()


# ------------------------------------------------------------------ service mode
@pytest.fixture
def service(tmp_path):
    """service(tree_toml, **options) -> a running Service (up and serving; options as for
    Service); stopped at teardown."""
    with running(tmp_path) as start:

        def _start(tree: str, **options) -> Service:
            svc = start(tree, **options)
            svc.wait_line("is up")
            return svc

        yield _start
