"""The pre-forked standby (supervisor/tree/standby.py): a supervisor that restarted a
worker keeps one process forked ahead, and hands the next restart of a worker to it.

A standby is found as the supervisor's child process titled ``standby: <path>``: it is no
child of the tree (not in which_children or status), so `ps` is where a test sees it.
"""

from __future__ import annotations

import importlib
import os
import signal
import stat
import sys
import textwrap
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import attrs
import psutil
import pytest

from supervisor import Supervisor, Worker, child, program
from supervisor.tree.standby import REFILL_DELAY
from tests._procs import wait_gone
from workers.echo import Echo

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


class Probe(Worker):
    """Reports what its process looks like from inside."""

    def pid(self) -> int:
        return os.getpid()

    def env(self, name: str) -> str | None:
        return os.environ.get(name)

    def fds(self) -> list[str]:
        """Its open fds (but the listing's own), by number: "pipe" / "socket" / "other",
        with "!" appended to one above 2 that would survive an exec."""
        found = {}
        for name in os.listdir("/proc/self/fd"):
            fd = int(name)
            try:
                mode = os.fstat(fd).st_mode
            except OSError:  # the listing's own fd, closed by now
                continue
            kind = "pipe" if stat.S_ISFIFO(mode) else "socket" if stat.S_ISSOCK(mode) \
                else "other"
            found[fd] = kind + ("!" if fd > 2 and os.get_inheritable(fd) else "")
        return [found[fd] for fd in sorted(found)]

    def title(self) -> str:
        with open("/proc/self/cmdline", "rb") as fh:
            return fh.read().replace(b"\0", b" ").decode().strip()


def _titled(pid: int) -> dict[int, str]:
    """The child processes of `pid` that are alive (not zombies), with their titles."""
    found = {}
    for proc in psutil.Process(pid).children():
        try:
            if proc.status() != psutil.STATUS_ZOMBIE:
                found[proc.pid] = " ".join(proc.cmdline()).strip()
        except psutil.NoSuchProcess:  # left since it was listed
            continue
    return found


def _standbys(sup_pid: int) -> list[int]:
    return [pid for pid, title in _titled(sup_pid).items() if title.startswith("standby:")]


def _wait_standby(sup_pid: int, other_than: int | None = None, timeout: float = 15.0) -> int:
    """The pid of the standby of the supervisor `sup_pid` (not `other_than`), once it is
    there. There is no event for a fork, so /proc is read until it shows or time is up."""
    deadline = time.monotonic() + timeout
    while True:
        found = [pid for pid in _standbys(sup_pid) if pid != other_than]
        if found:
            assert len(found) == 1, f"more than one standby: {found}"
            return found[0]
        if time.monotonic() > deadline:
            raise AssertionError(f"no standby under pid {sup_pid} within {timeout}s: "
                                 f"{_titled(sup_pid)}")
        time.sleep(0.01)


def _kill_and_wait_restart(app, events, path: str, *, count: int) -> int:
    """SIGKILL the worker at `path`; the pid of its replacement once it is restarted."""
    parent, _, child_id = path.rpartition("/")
    (old,) = [c.pid for c in app.which_children(parent) if c.id == child_id]
    os.kill(old, signal.SIGKILL)
    events.wait_count("restarted", count, path)
    (new,) = [c.pid for c in app.which_children(parent) if c.id == child_id]
    assert new != old
    return new


def test_no_standby_before_the_first_restart(start_tree):
    app = start_tree(Supervisor("root", children=[child(f"w{i}", Echo) for i in range(3)]))
    assert [app.call(f"w{i}", "echo", i) for i in range(3)] == [0, 1, 2]
    workers = {c.pid for c in app.which_children("")}
    # The initial start forks no standby: an idle tree has exactly its children.
    assert set(_titled(app.pid)) == workers


def test_only_a_process_worker_restart_makes_a_standby(start_tree, events):
    app = start_tree(Supervisor("root", children=[
        program("prog", [sys.executable, "-c", "import time; time.sleep(600)"]),
        Supervisor("sub", children=[child("w", Echo)]),
    ]))
    sub = next(c.pid for c in app.which_children("") if c.id == "sub")
    prog = next(c.pid for c in app.which_children("") if c.id == "prog")
    os.kill(prog, signal.SIGKILL)
    events.wait_count("restarted", 1, "prog")
    os.kill(sub, signal.SIGKILL)
    events.wait_count("restarted", 1, "sub")
    sub = next(c.pid for c in app.which_children("") if c.id == "sub")
    # A standby would be forked REFILL_DELAY after the restart: wait well past it (no
    # event marks a fork that does not happen), then ask the root (a loop round trip).
    time.sleep(REFILL_DELAY * 5)
    app.which_children("")
    assert _standbys(app.pid) == []
    assert _standbys(sub) == []  # the restarted sub started its worker: a first start


def test_a_restart_is_handed_to_the_standby(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, children=[
        child("w", Probe, env={"STANDBY_TEST": "yes"}, stable_after=0), child("other", Echo)]))
    _kill_and_wait_restart(app, events, "w", count=1)  # the first: a plain fork
    forked_fds = app.call("w", "fds")
    standby = _wait_standby(app.pid)
    assert _titled(app.pid)[standby] == "standby: (root)"
    # Not a child of the tree: the tree's views do not show it.
    assert {c.pid for c in app.which_children("")} == set(_titled(app.pid)) - {standby}
    assert app.count_children("")["workers"] == 2
    assert len(app.status()["children"]) == 2

    replacement = _kill_and_wait_restart(app, events, "w", count=2)
    assert replacement == standby
    (info,) = [c for c in app.which_children("") if c.id == "w"]
    assert (info.state, info.restarts) == ("running", 2)
    assert app.call("w", "pid") == standby
    assert app.call("w", "env", "STANDBY_TEST") == "yes"
    assert app.call("w", "title") == "worker: w"
    # The same descriptors as a forked worker's (its stdout and stderr the supervisor's
    # pipes, nothing of the standby's channel left, nothing that survives an exec); the
    # numbers may differ.
    assert app.call("w", "fds") == forked_fds
    assert [c.pid for c in app.which_children("") if c.id == "other"]  # untouched

    # A new standby is made after that restart, and the one after uses it; each use
    # leaves the supervisor with the descriptors it had.
    following = _wait_standby(app.pid, other_than=standby)
    fds = psutil.Process(app.pid).num_fds()
    assert _kill_and_wait_restart(app, events, "w", count=3) == following
    _wait_standby(app.pid, other_than=following)
    assert psutil.Process(app.pid).num_fds() == fds
    assert events.named("start_failed") == []


def test_a_killed_standby_is_not_used_the_restart_forks(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, children=[child("w", Probe, stable_after=0)]))
    _kill_and_wait_restart(app, events, "w", count=1)
    standby = _wait_standby(app.pid)
    fds = psutil.Process(app.pid).num_fds()
    os.kill(standby, signal.SIGKILL)
    assert wait_gone([standby], timeout=10) == []
    # Killed, then the worker at once: whether the supervisor has reaped the dead standby
    # yet or not, the restart must fork, succeed and count once.
    replacement = _kill_and_wait_restart(app, events, "w", count=2)
    assert replacement != standby
    assert app.call("w", "pid") == replacement
    assert events.named("start_failed") == []
    assert [c.restarts for c in app.which_children("")] == [2]
    # The dead standby was reaped (no zombie), and a new one is made after that restart.
    following = _wait_standby(app.pid, other_than=standby)
    assert standby not in {p.pid for p in psutil.Process(app.pid).children()}
    assert psutil.Process(app.pid).num_fds() == fds
    assert _kill_and_wait_restart(app, events, "w", count=3) == following


def test_no_standby_outlives_its_supervisor(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, children=[
        Supervisor("sub", children=[child("w", Echo, stable_after=0)])]))
    (sub,) = [c.pid for c in app.which_children("")]
    _kill_and_wait_restart(app, events, "sub/w", count=1)
    standby = _wait_standby(sub)
    os.kill(sub, signal.SIGKILL)
    # Its parent death signal takes it down with its supervisor; the root reaps it.
    assert wait_gone([standby], timeout=10) == []
    events.wait_count("restarted", 1, "sub")
    new_sub = next(c.pid for c in app.which_children("") if c.id == "sub")
    assert app.call("sub/w", "echo", 1) == 1
    assert _standbys(new_sub) == []  # a fresh supervisor: no restart yet, no standby
    assert standby not in {p.pid for p in psutil.Process(app.pid).children(recursive=True)}


def test_a_stopped_tree_leaves_no_standby(start_tree, events):
    app = start_tree(Supervisor("root", max_restarts=10, children=[
        child("w", Echo), Supervisor("sub", children=[child("w", Echo)])]))
    _kill_and_wait_restart(app, events, "w", count=1)
    _kill_and_wait_restart(app, events, "sub/w", count=1)
    sub = next(c.pid for c in app.which_children("") if c.id == "sub")
    standbys = [_wait_standby(app.pid), _wait_standby(sub)]
    app.stop(timeout=10)
    assert wait_gone(standbys, timeout=10) == []


_SOURCE = '''
import os

from supervisor import Worker

VERSION = {version!r}


class Versioned(Worker):
    def version(self):
        return VERSION

    def pid(self):
        return os.getpid()
'''


@pytest.fixture
def module(tmp_path, monkeypatch):
    """write(version) -> "module:Versioned", a worker module on disk the tree imports."""
    name = f"standby_{uuid.uuid4().hex[:10]}"
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{ROOT}")
    monkeypatch.setattr(sys, "dont_write_bytecode", True)

    def write(version: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(_SOURCE.format(version=version)))
        return f"{name}:Versioned"

    write.name = name
    return write


def test_a_standby_forked_before_a_code_reload_is_replaced(start_tree, events, module):
    """A standby runs the code its supervisor had imported when it was forked: after a
    re-import (`rolling_restart`) it is discarded, and the one forked next runs the new
    code."""
    app = start_tree(Supervisor("root", max_restarts=10, children=[
        child("w", module("v1"), stable_after=0)]))
    _kill_and_wait_restart(app, events, "w", count=1)
    stale = _wait_standby(app.pid)

    module("v2.0")  # another size: a cached bytecode file is not taken for it
    [(_, _, rolled)] = app.rolling_restart("w")
    assert rolled != stale
    assert app.call("w", "version") == "v2.0"
    assert wait_gone([stale], timeout=10) == []  # discarded, not kept for later

    fresh = _wait_standby(app.pid, other_than=stale)  # forked after the re-import
    assert _kill_and_wait_restart(app, events, "w", count=2) == fresh
    assert app.call("w", "version") == "v2.0"


def test_a_reimport_makes_what_a_standby_inherited_stale(module):
    """The rule, in this process: after a re-import, what a standby forked before it
    inherited no longer matches, whichever child it would become."""
    from supervisor.tree import standby
    from supervisor.tree.reimport import Reimport

    module("v1")
    spec = child("w", importlib.import_module(module.name).Versioned)
    before = standby._inherited()
    assert standby._inherited() == before  # stable while nothing changes
    assert Reimport().spec(spec) is not spec
    assert standby._inherited() != before


def test_a_standby_fits_only_the_very_spec_and_matrix_it_inherited():
    from supervisor.tree import standby

    spec, matrix = child("w", Probe), {"errors": "its own"}
    spare = standby._Spare(pid=0, sock=None, pidfd=None, known={"w": (spec, matrix)},
                           inherited=standby._inherited())

    def slot(path: str, spec: object, matrix: object) -> SimpleNamespace:
        return SimpleNamespace(path=path, spec=spec, matrix=matrix)

    assert spare.fits(slot("w", spec, matrix))
    assert not spare.fits(slot("w", attrs.evolve(spec), matrix))  # equal, not the same
    assert not spare.fits(slot("w", spec, dict(matrix)))
    assert not spare.fits(slot("v", spec, matrix))  # a child added since its fork
