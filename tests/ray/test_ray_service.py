"""`python -m supervisor run tree.toml` with Ray children: status shows their node, and
shutting the service down leaves no actor alive."""

from __future__ import annotations

import json

import pytest

from .._service import ROOT, running
from .conftest import NO_RAY, NO_RAY_REASON

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120),
              pytest.mark.skipif(NO_RAY, reason=NO_RAY_REASON)]

TREE = """
[tree]
id = "svc"
directory = "{root}"          # where tests.ray._workers imports from (also on the cluster)
ray_address = "{address}"

[[tree.children]]
id = "local"
worker = "tests.ray._workers:Counter"

[[tree.children]]
id = "models"
type = "pool"
worker = "tests.ray._workers:Counter"
size = 2
backend = "ray"
ray_options = {{ num_cpus = 0.5, start_timeout = 60 }}
"""


def test_service_mode_runs_ray_children_and_status_shows_their_node(ray_cluster, tmp_path):
    with running(tmp_path) as start:
        svc = start(TREE.format(root=ROOT, address=ray_cluster.address))
        svc.wait_line("tree 'svc' is up", timeout=90)
        out = svc.cmd("call", "models/models-0", "incr", "[4]")
        assert (out.returncode, out.stdout.strip()) == (0, "4")
        status = svc.cmd("status", "--json")
        assert status.returncode == 0, status.stderr
        doc = json.loads(status.stdout)
        by_path = {}

        def visit(node):
            by_path[node["path"]] = node
            for sub in node.get("children", ()):
                visit(sub)

        visit(doc)
        assert "node" not in by_path["local"]
        for path in ("models/models-0", "models/models-1"):
            assert by_path[path]["node"]["ip"] == "127.0.0.1"
            assert len(by_path[path]["node"]["id"]) == 56  # Ray's hex node id
        table = svc.cmd("status").stdout
        assert "NODE" in table.splitlines()[0]
        names = [f"{p}@{by_path[p]['pid']}" for p in ("models/models-0", "models/models-1")]
        assert set(names) <= set(ray_cluster.ctl("names"))
        assert svc.cmd("shutdown").returncode == 0
        assert svc.finish(60) == 0
    for name in names:
        assert ray_cluster.ctl("wait_dead", name=name)
