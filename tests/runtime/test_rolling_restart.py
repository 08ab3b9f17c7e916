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
from collections.abc import Callable
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


class Load:
    """One thread per step, each running ``step(n)`` for n = 1, 2, ... until the block
    ends; a step that raises ends its thread and is kept in `failures`. `went_round()`
    waits (on a condition, never a sleep) until every thread has finished one more step
    since the call, or one failed."""

    def __init__(self, *steps: Callable[[int], None]) -> None:
        self.steps = steps
        self.counts = [0] * len(steps)
        self.failures: list[BaseException] = []
        self.cond = threading.Condition()
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._loop, args=(i,), daemon=True)
                        for i in range(len(steps))]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(60)

    def _loop(self, i: int) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            try:
                self.steps[i](n)
            except BaseException as exc:  # every failure is the test's finding
                with self.cond:
                    self.failures.append(exc)
                    self.cond.notify_all()
                return
            with self.cond:
                self.counts[i] += 1
                self.cond.notify_all()

    def went_round(self) -> None:
        with self.cond:
            since = list(self.counts)
            assert self.cond.wait_for(lambda: self.failures or all(
                c > s for c, s in zip(self.counts, since, strict=True)), timeout=60)


def test_a_pool_under_load_is_replaced_one_at_a_time_without_a_failed_call(start_tree, code):
    app = start_tree(Supervisor("root", children=[Pool("p", code.worker, size=4)]))
    pool = app.pool("p")
    reassigning = pool.options(on_lost="reassign")
    before = _pids(app, "p")

    def submit(n: int) -> None:
        futures = [pool.submit("echo", (n, i)) for i in range(200)]
        assert [f.result(30) for f in futures] == [[n, i] for i in range(200)]

    def call(n: int) -> None:
        assert pool.call("echo", n) == n

    def map_(n: int) -> None:
        assert list(pool.map("echo", range(40), timeout=30)) == list(range(40))

    def session(n: int) -> None:  # moved to a live worker, it keeps going (fresh state)
        assert n in reassigning.call("tally", n, session="s1")

    with Load(submit, submit, call, call, map_, session) as load:
        load.went_round()  # the load runs ...
        replaced = app.rolling_restart("p")  # ... through the whole roll ...
        load.went_round()  # ... and on after it, on the new workers
    assert not load.failures, load.failures
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

    def call(n: int) -> None:
        assert app.call("w", "echo", n) == n

    with Load(call, call, call, call) as load:
        for _ in range(3):
            load.went_round()
            app.rolling_restart("w")
        load.went_round()
    assert not load.failures, load.failures
