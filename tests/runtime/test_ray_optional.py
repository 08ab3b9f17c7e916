"""Ray stays optional: the core never imports it, and a Ray child without a cluster fails
its start with a clear reason instead of starting one by surprise."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from supervisor import StartError, Supervisor, child
from workers.echo import Echo

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

CHECK = """
import sys
import supervisor
from supervisor import Supervisor, child, Worker
from workers.echo import Echo

class Probe(Worker):
    def ray_loaded(self) -> bool:
        return "ray" in sys.modules

if __name__ == "__main__":
    with supervisor.start(Supervisor("root", children=[
            child("echo", Echo), child("probe", Probe)])) as app:
        assert app.call("echo", "ping") == "pong"
        print(app.call("probe", "ray_loaded"), "ray" in sys.modules)
"""


def test_the_core_and_a_tree_without_ray_children_never_import_ray(tmp_path):
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = tmp_path / "check.py"  # a file: the tree resolves Probe from this __main__
    script.write_text(CHECK)
    out = subprocess.run([sys.executable, str(script)], cwd=root, capture_output=True,
                         text=True, timeout=50, env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["False", "False"]  # in the worker and in the caller


def test_a_ray_child_without_a_cluster_fails_its_start_clearly(start_tree, monkeypatch):
    """Where the root cannot add a local Ray head (a simple_one_for_one root has no static
    children), a Ray child with no cluster named fails its start saying so."""
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    app = start_tree(Supervisor("root", strategy="simple_one_for_one",
                                template=child("remote", Echo, backend="ray")))
    with pytest.raises(StartError, match=r"^child 'remote-1' failed to start "
                                      r"\(initialization_error\): NoRayCluster: no Ray "
                                      r"cluster to join: set ray_address on the tree"):
        app.start_child("")
