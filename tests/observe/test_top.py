"""`top` in a real terminal (tmux): every node shown, updated after a kill, a key restarts
the selected child, `q` quits; without the ui extra it says how to install it."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .._procs import wait_gone
from .._service import running
from ._observe import PATHS, TREE, pid_of
from ._tmux import Tmux, have_tmux, rows

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def service(tmp_path):
    with running(tmp_path) as start:
        yield start


@pytest.mark.integration
@pytest.mark.timeout(120)
@pytest.mark.skipif(not have_tmux(), reason="tmux is not installed (apt-get install tmux)")
def test_top_shows_the_tree_follows_a_kill_and_restarts_on_a_key(service, tmp_path):
    svc = service(TREE)
    svc.wait_line("tree 'svc' is up")
    calc, talker = pid_of(svc, "jobs/calc"), pid_of(svc, "talker")
    # Through a shell that writes top's exit status to a file (tmux's own record of it,
    # and what is left on the screen after the program restored it, are not reliable).
    command = shlex.join([sys.executable, "-m", "supervisor", "top", "--socket", svc.socket,
                          "--interval", "0.5"])
    status = tmp_path / "top.status"
    term = Tmux(tmp_path, ["sh", "-c", f"{command}; echo $? > {shlex.quote(str(status))}"],
                cwd=ROOT)
    try:
        # The table and the events pane are drawn from two answers: wait for both.
        screen = term.wait_for(lambda s: rows(s).get("jobs/calc", [""] * 4)[3] == str(calc)
                               and "child.started jobs/calc" in s,
                               "every node and the kept events")
        table = rows(screen)
        assert list(table) == PATHS
        assert table["jobs"][2:4] == ["running", str(pid_of(svc, "jobs"))]
        assert "0/3 in 5s" in " ".join(table["jobs"]), screen  # intensity used in the window
        assert "child.started jobs/calc" in screen  # the kept events, from before top

        os.kill(calc, signal.SIGKILL)
        screen = term.wait_for(
            lambda s: rows(s)["jobs/calc"][3] not in (str(calc), "-")
            and "connection_error -> restart" in s, "the restarted calc")
        cells = rows(screen)["jobs/calc"]
        assert cells[2] == "running" and cells[5] == "1"  # state, restarts
        assert cells[3] == str(pid_of(svc, "jobs/calc"))
        assert "1/3 in 5s" in " ".join(rows(screen)["jobs"])
        assert "child.restarted jobs/calc" in screen

        term.keys("Down")  # the cursor starts on the root's row: now on talker's
        term.keys("r")
        screen = term.wait_for(lambda s: rows(s)["talker"][3] not in (str(talker), "-"),
                               "talker restarted by the key")
        assert wait_gone([talker], 10) == []
        assert rows(screen)["talker"][3] == str(pid_of(svc, "talker"))

        term.keys("q")
        term.wait_for(lambda s: status.exists() and status.read_text() == "0\n",
                      "top to quit with status 0")
    finally:
        term.close()


def test_top_without_the_ui_extra_says_how_to_install_it():
    code = ("import sys; sys.modules['textual'] = None; from supervisor.cli import main; "
            "sys.exit(main(['top']))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == "error: top needs the ui extra: pip install 'otp-supervisor[ui]'\n"
