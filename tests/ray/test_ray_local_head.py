"""A tree with Ray children and no cluster named (no `ray_address`, no RAY_ADDRESS) runs
its own local Ray head, as its first child `ray-head`; stopping the tree stops it and
leaves no Ray process behind.

This module runs no cluster of its own (the other modules' clusters are gone by now: they
are module-scoped), so the head started here is the only one on the machine.
"""

from __future__ import annotations

import os

import psutil
import pytest

from supervisor import Supervisor, child

from ._workers import Counter
from .conftest import NO_RAY, NO_RAY_REASON

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180),
              pytest.mark.skipif(NO_RAY, reason=NO_RAY_REASON)]


def _ray_processes(tmp: str) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if any(tmp in part for part in proc.info["cmdline"] or ()):
                found.append(proc)
        except psutil.Error:
            continue
    return found


def test_a_tree_without_a_cluster_runs_its_own_head(start_tree, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    app = start_tree(Supervisor("root", strategy="one_for_one", children=[
        child("local", Counter),
        child("remote", Counter, backend="ray", kwargs={"start": 10}),
    ]))
    children = app.which_children()
    assert [c.id for c in children] == ["ray-head", "local", "remote"]
    assert app.call("remote", "incr", 5) == 15  # served by an actor on the local head
    head = next(c for c in children if c.id == "ray-head")
    cmdline = psutil.Process(head.pid).cmdline()
    assert "start" in cmdline and "--head" in cmdline and "--block" in cmdline
    tmp = next(part.split("=", 1)[1] for part in cmdline if part.startswith("--temp-dir="))
    assert os.path.isdir(tmp)
    assert _ray_processes(tmp)  # the head's daemons run with its directory
    app.stop(timeout=60)
    _, alive = psutil.wait_procs(_ray_processes(tmp), timeout=30)
    assert not alive, [p.info for p in alive]
    assert not os.path.exists(tmp)  # the root removed the head's directory


def test_a_named_cluster_is_joined_and_no_head_is_added():
    from supervisor.tree.rayhead import LocalRay

    tree = Supervisor("root", children=[child("remote", Counter, backend="ray")],
                      ray_address="10.0.0.1:6379")
    assert LocalRay().apply(tree) is tree
    plain = Supervisor("root", children=[child("local", Counter)])
    assert LocalRay().apply(plain) is plain
