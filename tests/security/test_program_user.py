"""An external program run as another user, with its own group and umask (a root-run
service dropping privileges for one child)."""

from __future__ import annotations

import psutil
import pytest

from supervisor import Supervisor, program
from supervisor.errors import StartError

pytestmark = pytest.mark.integration


def umask_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise AssertionError("no Umask line in /proc/PID/status")


def test_a_program_runs_as_its_user_and_group_with_its_umask(other_user, start_tree):
    app = start_tree(Supervisor("root", children=[
        program("job", ["sleep", "60"], user=other_user.name, umask="027",
                start_seconds=0)]))
    (info,) = app.which_children()
    proc = psutil.Process(info.pid)
    assert (proc.uids().real, proc.uids().effective) == (other_user.uid, other_user.uid)
    assert (proc.gids().real, proc.gids().effective) == (other_user.gid, other_user.gid)
    assert umask_of(info.pid) == 0o027


def test_an_unknown_user_is_a_start_failure_naming_it(start_tree):
    with pytest.raises(StartError, match=r"child 'job' failed to start \(initialization_error\)"
                                         r": KeyError: .*no-such-user"):
        start_tree(Supervisor("root", children=[
            program("job", ["sleep", "60"], user="no-such-user", start_seconds=0)]))
