"""Suite-wide guards: no test may leave a process behind.

Every test is checked: any descendant of the test process that a test started and did not
clean up is killed (only pids that are our descendants, never by name) and the test fails.
At the end of the session the same check runs once more.
"""

from __future__ import annotations

import os
import threading
import time

import psutil
import pytest


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _reap_strays(before: set[int], grace: float = 3.0) -> list[str]:
    """Wait up to `grace` for processes that were leaving anyway, then kill the rest."""
    stray = [p for p in _descendants() if p.pid not in before]
    if not stray:
        return []
    gone, alive = psutil.wait_procs(stray, timeout=grace)
    described = []
    for proc in alive:
        try:
            described.append(f"{proc.pid} {' '.join(proc.cmdline())[:80]!r} ({proc.status()})")
            proc.kill()
        except psutil.NoSuchProcess:
            continue
    psutil.wait_procs(alive, timeout=3.0)
    _reap_zombies()
    return described


def _reap_zombies() -> None:
    # Children of this process that exited (e.g. an App's root after a test-made kill)
    # are reaped here so they are not counted as leaks by the next test.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


@pytest.fixture(autouse=True)
def no_leaked_processes(request):
    before = {p.pid for p in _descendants()}
    yield
    # Apps stopped by the test have already waited for their trees; anything left is a leak.
    leaked = _reap_strays(before)
    if leaked:
        pytest.fail(f"test left processes behind: {leaked}", pytrace=False)


def pytest_sessionfinish(session, exitstatus):
    leaked = _reap_strays(set(), grace=5.0)
    if leaked:
        print(f"\nsession left processes behind: {leaked}")
        session.exitstatus = 1


class EventLog:
    """Records telemetry events; tests wait on them instead of sleeping."""

    def __init__(self) -> None:
        self.events: list[tuple[tuple[str, ...], dict, dict]] = []
        self.cond = threading.Condition()

    def __call__(self, event, measurements, metadata) -> None:
        with self.cond:
            self.events.append((tuple(event), dict(measurements), dict(metadata)))
            self.cond.notify_all()

    def named(self, suffix: str, path: str | None = None) -> list[dict]:
        with self.cond:
            return [meta for name, _, meta in self.events
                    if name[-1] == suffix and (path is None or meta.get("path") == path)]

    def wait_for(self, predicate, timeout: float = 10.0, what: str = "event"):
        """Wait until `predicate(log)` is truthy. The predicate runs under the log's lock:
        it must only read the log (an App request there would deadlock the reader)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                result = predicate(self)
                if result:
                    return result
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    names = [(n[-1], m.get("path")) for n, _, m in self.events]
                    raise AssertionError(f"timed out waiting for {what}; events: {names}")
                self.cond.wait(remaining)

    def wait_count(self, suffix: str, count: int, path: str | None = None,
                   timeout: float = 10.0) -> list[dict]:
        return self.wait_for(lambda log: len(log.named(suffix, path)) >= count and
                             log.named(suffix, path), timeout, f"{count} x {suffix} {path}")

    def clear(self) -> None:
        with self.cond:
            self.events.clear()


@pytest.fixture
def events():
    from supervisor import telemetry

    log = EventLog()
    handler_id = f"test-{id(log)}"
    telemetry.attach(handler_id, [("supervisor",)], log)
    yield log
    telemetry.detach(handler_id)


@pytest.fixture
def start_tree():
    """start_tree(spec) -> App; every App is stopped at teardown, even on failure."""
    import supervisor

    apps = []

    def _start(spec, **kwargs):
        app = supervisor.start(spec, **kwargs)
        apps.append(app)
        return app

    yield _start
    for app in apps:
        app.stop(timeout=10)
