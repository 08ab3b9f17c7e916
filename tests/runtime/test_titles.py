"""Every process of a tree shows its role and path in `ps` (process titles)."""

from __future__ import annotations

import psutil
import pytest

from supervisor import Pool, Supervisor, child
from workers.echo import Echo

pytestmark = pytest.mark.integration


def title(pid: int) -> str:
    return " ".join(psutil.Process(pid).cmdline()).strip()


def test_supervisors_and_workers_show_their_role_and_path(start_tree):
    app = start_tree(Supervisor("root", children=[
        child("echo", Echo),
        Supervisor("jobs", children=[child("job-1", Echo)]),
        Pool("py", Echo, size=1),
    ]))
    titles = {info.path: title(info.pid) for info in app.which_children("jobs")}
    titles.update({info.path: title(info.pid) for info in app.which_children("")
                   if info.kind == "worker"})
    titles[""] = title(app.pid)
    titles["jobs"] = title(app.status()["children"][1]["pid"])
    assert titles == {
        "": "supervisor: root",
        "echo": "worker: echo",
        "jobs": "supervisor: jobs",
        "jobs/job-1": "worker: jobs/job-1",
    }
    assert title(app.call("py/py-0", "pid")) == "worker: py/py-0"
