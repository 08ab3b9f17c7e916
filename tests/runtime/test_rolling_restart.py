"""Rolling restart: `app.rolling_restart(path)` replaces the running workers under `path`
one at a time on freshly imported code; each replacement is ready before the worker it
replaces leaves, so callers lose no call.

The workers here live in a module written into `tmp_path` for each test (the tree's
processes find it through PYTHONPATH), so a test can change its code on disk and see the
new code answer after the roll.
"""

from __future__ import annotations

import os
import sys
import textwrap
import threading
import uuid
from pathlib import Path

import pytest

from supervisor import Pool, Supervisor, child
from supervisor.errors import ConfigError, NoSuchChild, StartError, SupervisorError

ROOT = Path(__file__).resolve().parents[2]

_SOURCE = '''
import os
from supervisor import Worker


class Versioned(Worker):
    VERSION = {version!r}

    def init(self):
        {init}

    def version(self):
        return self.VERSION

    def pid(self):
        return os.getpid()

    def echo(self, value):
        return value

    def tally(self, n):
        self.session[n] = True  # the session's state lives in this process
        return sorted(self.session)
'''


class Code:
    """A worker module on disk that a test rewrites."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.name = f"rolling_{uuid.uuid4().hex[:10]}"
        self.file = tmp_path / f"{self.name}.py"
        self.write("v1")
        monkeypatch.syspath_prepend(str(tmp_path))
        monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")
        # No stale bytecode: the rewritten file has another size anyway (see `write`).
        monkeypatch.setattr(sys, "dont_write_bytecode", True)

    @property
    def worker(self) -> str:
        return f"{self.name}:Versioned"

    def write(self, version: str, init: str = "pass", extra: str = "") -> None:
        # The version string's length changes with each rewrite: an import checks a
        # cached bytecode file by the source's mtime (whole seconds) and size.
        self.file.write_text(textwrap.dedent(_SOURCE.format(version=version, init=init))
                             + extra)


@pytest.fixture
def code(tmp_path, monkeypatch):
    return Code(tmp_path, monkeypatch)


def _pids(app, path: str) -> dict[str, int]:
    return {c.id: c.pid for c in app.which_children(path)}


def test_a_pool_under_load_is_replaced_one_at_a_time_without_a_failed_call(start_tree, code):
    app = start_tree(Supervisor("root", children=[Pool("p", code.worker, size=4)]))
    pool = app.pool("p")
    reassigning = pool.options(on_lost="reassign")
    before = _pids(app, "p")
    stop = threading.Event()
    failures: list[BaseException] = []
    counts = {"submit": 0, "call": 0, "map": 0, "session": 0}
    progress = threading.Condition()

    def every_loop_went_round(since: dict[str, int]) -> None:
        with progress:
            assert progress.wait_for(
                lambda: failures or all(counts[k] > since[k] for k in counts), timeout=60)

    def loop(kind: str) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                if kind == "submit":
                    futures = [pool.submit("echo", (n, i)) for i in range(200)]
                    assert [f.result(30) for f in futures] == [[n, i] for i in range(200)]
                elif kind == "call":
                    assert pool.call("echo", n) == n
                elif kind == "map":
                    assert list(pool.map("echo", range(40), timeout=30)) == list(range(40))
                else:  # a session moved to a live worker keeps going (fresh state there)
                    assert n in reassigning.call("tally", n, session="s1")
            except BaseException as exc:  # every failure is the test's finding
                with progress:
                    failures.append(exc)
                    progress.notify_all()
                return
            with progress:
                counts[kind] += 1
                progress.notify_all()

    threads = [threading.Thread(target=loop, args=(kind,), daemon=True)
               for kind in ("submit", "submit", "call", "call", "map", "session")]
    for t in threads:
        t.start()
    try:
        every_loop_went_round(dict.fromkeys(counts, 0))  # the load runs ...
        replaced = app.rolling_restart("p")  # ... through the whole roll ...
        every_loop_went_round(dict(counts))  # ... and on after it, on the new workers
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
    after = _pids(app, "p")
    assert [r[0] for r in replaced] == [f"p/p-{i}" for i in range(4)]  # start order
    assert {path: old for path, old, _ in replaced} == {f"p/{k}": v for k, v in before.items()}
    assert {path: new for path, _, new in replaced} == {f"p/{k}": v for k, v in after.items()}
    assert not set(before.values()) & set(after.values())


def test_the_new_code_answers_after_the_roll(start_tree, code, events):
    app = start_tree(Supervisor("root", children=[
        Pool("p", code.worker, size=2),
        Supervisor("sub", children=[child("w", code.worker)]),
    ]))
    assert app.pool("p").call("version") == "v1"
    assert app.call("sub/w", "version") == "v1"
    code.write("v2-new")
    replaced = app.rolling_restart()
    assert [r[0] for r in replaced] == ["p/p-0", "p/p-1", "sub/w"]
    assert {app.pool("p").call("version") for _ in range(4)} == {"v2-new"}
    assert app.call("sub/w", "version") == "v2-new"
    assert len(events.named("replaced")) == 3
    assert not events.named("failure")  # a replacement is not a failure
    # Later starts run the new code too: a crash restarts the worker from the new spec.
    app.signal_child("sub", "w", "SIGKILL")
    events.wait_for(lambda log: len(log.named("restarted", "sub/w")) == 1, timeout=30)
    assert app.call("sub/w", "version") == "v2-new"


def test_one_worker_and_a_supervisor_path(start_tree, code):
    app = start_tree(Supervisor("root", children=[
        Supervisor("sub", strategy="one_for_all", max_restarts=1, max_seconds=60,
                   children=[child("a", code.worker), child("b", code.worker)]),
    ]))
    before = _pids(app, "sub")
    [(path, old, new)] = app.rolling_restart("sub/b")
    assert (path, old) == ("sub/b", before["b"])
    assert _pids(app, "sub") == {"a": before["a"], "b": new}  # one_for_all not triggered
    # Two more replacements than the intensity allows: none of them counts.
    app.rolling_restart("sub")
    app.rolling_restart("/sub/")
    assert app.status()["children"][0]["state"] == "running"
    with pytest.raises(NoSuchChild):
        app.rolling_restart("sub/nope")


def test_a_module_that_does_not_import_replaces_nothing(start_tree, code):
    app = start_tree(Supervisor("root", children=[Pool("p", code.worker, size=2)]))
    before = _pids(app, "p")
    code.write("v2", extra="\ndef broken(:\n")
    with pytest.raises(ConfigError, match=rf"cannot re-import '{code.name}': SyntaxError"):
        app.rolling_restart("p")
    assert _pids(app, "p") == before
    assert app.pool("p").call("version") == "v1"


def test_a_replacement_that_fails_to_start_stops_the_roll_and_the_old_worker_serves(
        start_tree, code):
    app = start_tree(Supervisor("root", children=[Pool("p", code.worker, size=3)]))
    before = _pids(app, "p")
    code.write("v2", init="raise RuntimeError('bad deploy')")
    with pytest.raises(StartError, match="bad deploy") as info:
        app.rolling_restart("p")
    assert info.value.path == "p/p-0"
    assert _pids(app, "p") == before  # the first one kept serving; the others untouched
    assert {app.pool("p").call("pid") for _ in range(6)} <= set(before.values())
    assert app.pool("p").call("version") == "v1"


def test_restart_rolling_from_the_command_line(tmp_path, code):
    from tests._service import running

    with running(tmp_path) as start:
        service = start(f"""
            [tree]
            id = "svc"

            [[tree.children]]
            id = "p"
            type = "pool"
            worker = "{code.worker}"
            size = 2
        """, env=dict(os.environ))
        service.wait_line("tree 'svc' is up")
        code.write("v2-cli")
        out = service.cmd("restart", "--rolling", "p")
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[-1] == "p: 2 worker(s) replaced"
        assert [line.split(":")[0] for line in lines[:-1]] == ["p/p-0", "p/p-1"]
        called = service.cmd("call", "p/p-1", "version")
        assert called.stdout.strip() == '"v2-cli"', called.stderr
        code.write("v3-cli", init="raise RuntimeError('bad deploy')")
        failed = service.cmd("restart", "--rolling", "p")
        assert failed.returncode == 1 and "bad deploy" in failed.stderr, failed.stderr
        code.write("v3", extra="\nthis is not python\n")
        refused = service.cmd("restart", "--rolling", "/")
        assert refused.returncode == 2 and "cannot re-import" in refused.stderr
        assert service.cmd("call", "p/p-0", "version").stdout.strip() == '"v2-cli"'


def test_errors_are_supervisor_errors(start_tree, code):
    app = start_tree(Supervisor("root", children=[child("w", code.worker)]))
    with pytest.raises(SupervisorError):
        app.rolling_restart("w/x")


def test_threads_calling_one_worker_directly_lose_nothing_when_it_is_replaced(start_tree,
                                                                               code):
    """Several threads share the App's one channel to a worker. When it is replaced, the
    thread that reads NotRun first lets the channel go; the others' replies (or NotRun)
    are still read for them, never turned into WorkerCrashed."""
    app = start_tree(Supervisor("root", children=[child("w", code.worker)]))
    stop = threading.Event()
    failures: list[BaseException] = []
    counts = [0] * 4
    progress = threading.Condition()

    def loop(i: int) -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                assert app.call("w", "echo", (i, n)) == [i, n]
            except BaseException as exc:
                with progress:
                    failures.append(exc)
                    progress.notify_all()
                return
            with progress:
                counts[i] += 1
                progress.notify_all()

    def went_round(since: list[int]) -> None:
        with progress:
            assert progress.wait_for(
                lambda: failures or all(c > s for c, s in zip(counts, since, strict=True)),
                timeout=60)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(4)]
    for t in threads:
        t.start()
    try:
        for _ in range(3):
            went_round(list(counts))
            app.rolling_restart("w")
        went_round(list(counts))
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    assert not failures, failures
