"""Whole-process guarantees: the tree dies with its App, atexit, __main__ workers, threads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from .._procs import wait_gone

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

PRELUDE = """
import json, os, sys, threading
import supervisor
from supervisor import Supervisor, child, Worker
from workers.echo import Echo

def family(app):
    import psutil
    root = psutil.Process(app.pid)
    return [app.pid] + [p.pid for p in root.children(recursive=True)]
"""


def run_script(tmp_path, body: str, *, wait: bool = True):
    script = tmp_path / "script.py"
    script.write_text(PRELUDE + textwrap.dedent(body))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=os.getcwd())
    if not wait:
        return proc
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    return [json.loads(line) for line in out.splitlines() if line.startswith(('[', '{', '"'))]


def test_worker_defined_in_the_callers_main_module(tmp_path):
    (result,) = run_script(tmp_path, """
        class Local(Worker):
            def hello(self, name):
                return f"hello {name} from {__name__}"

        if __name__ == "__main__":
            with supervisor.start(Supervisor("root", children=[child("w", Local)])) as app:
                print(json.dumps(app.call("w", "hello", "you")))
    """)
    assert result == "hello you from __mp_main__"


def test_interpreter_exit_without_stop_leaves_no_process(tmp_path):
    (pids,) = run_script(tmp_path, """
        app = supervisor.start(Supervisor("root", children=[
            child("a", Echo), Supervisor("s", children=[child("b", Echo)])]))
        print(json.dumps(family(app)), flush=True)
        # no app.stop(): the atexit hook must take the tree down
    """)
    assert len(pids) == 4
    assert wait_gone(pids, timeout=5) == []


def test_tree_dies_with_a_killed_app_process(tmp_path):
    proc = run_script(tmp_path, """
        app = supervisor.start(Supervisor("root", children=[
            child("a", Echo), Supervisor("s", children=[child("b", Echo)])]))
        print(json.dumps(family(app)), flush=True)
        threading.Event().wait()
    """, wait=False)
    try:
        pids = json.loads(proc.stdout.readline())
        assert len(pids) == 4
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert wait_gone(pids, timeout=1.0) == []
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_tree_outlives_the_thread_that_started_it(tmp_path):
    (result,) = run_script(tmp_path, """
        box = {}
        t = threading.Thread(target=lambda: box.update(
            app=supervisor.start(Supervisor("root", children=[child("a", Echo)]))))
        t.start(); t.join()
        app = box["app"]
        # PR_SET_PDEATHSIG is per thread: the starter thread is gone, the tree must not be.
        print(json.dumps([app.call("a", "ping"), app.wait(timeout=0.5)]))
        app.stop()
        print(json.dumps(app.wait(timeout=5)))
    """)[:1]
    assert result == ["pong", None]


def test_stop_is_idempotent_and_wait_reports_normal(start_tree):
    from supervisor import Supervisor, child
    from supervisor.app import live_apps
    from workers.echo import Echo

    app = start_tree(Supervisor("root", children=[child("a", Echo)]))
    assert app in live_apps  # stopped at interpreter exit if the user forgets
    app.stop()
    app.stop()
    assert app.wait() == "normal"
    assert app.wait(timeout=0) == "normal"
    assert app not in live_apps


def test_a_plain_worker_runs_one_thread_and_holds_only_its_channels(start_tree):
    # No control thread (the serving loop reads the control channel), no wake-up pair, no
    # epoll descriptor: stdio, the control channel and one channel per caller.
    import psutil

    from supervisor import Supervisor, child
    from workers.echo import Echo

    app = start_tree(Supervisor("root", children=[child("w", Echo)]))
    assert app.call("w", "echo", 1) == 1
    (info,) = app.which_children("")
    proc = psutil.Process(info.pid)
    assert proc.num_threads() == 1
    assert proc.num_fds() <= 5, os.listdir(f"/proc/{info.pid}/fd")
    app.stop()  # the Stop, read by the serving loop
    assert app.wait(timeout=10) == "normal"


def test_a_worker_with_heartbeats_keeps_its_control_thread(start_tree):
    # A Ping must be answered while a command runs: that takes a thread of its own.
    import psutil

    from supervisor import Supervisor, child
    from workers.echo import Echo

    app = start_tree(Supervisor("root", children=[child("w", Echo, heartbeat=5.0)]))
    assert app.call("w", "echo", 1) == 1
    (info,) = app.which_children("")
    assert psutil.Process(info.pid).num_threads() == 2
