"""The observe room keeps the house's rules: what runs in the operator's process (`top`,
`events`, `check --graph`, the status walk) imports no supervisor- or worker-process code,
and the optional libraries are imported only where they are used."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ..layout.test_imports import GRAPH, MODULES, OTHER_PROCESSES, _in, _reachable

OPERATOR_SIDE = ["supervisor.observe.top", "supervisor.observe.events",
                 "supervisor.observe.status", "supervisor.observe.graph",
                 "supervisor.observe.options"]


@pytest.mark.parametrize("module", OPERATOR_SIDE)
def test_the_operators_side_imports_no_process_code(module):
    assert module in MODULES
    assert sorted(m for m in _reachable(module) if _in(m, *OTHER_PROCESSES)) == []


def test_the_service_root_reaches_the_server_but_the_server_not_the_root():
    assert "supervisor.observe.web" in _reachable("supervisor.service.root")
    assert not any(_in(m, "supervisor.service", "supervisor.tree")
                   for m in _reachable("supervisor.observe.web"))
    assert "supervisor.observe.web" in GRAPH


def test_importing_the_package_and_running_a_tree_needs_no_optional_library():
    code = ("import sys, supervisor, supervisor.cli, supervisor.config, supervisor.app, "
            "supervisor.service.root, supervisor.observe.web; "
            "print(sorted(m for m in ('textual', 'prometheus_client', 'matplotlib', 'rich') "
            "if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert (done.returncode, done.stdout) == (0, "[]\n"), done.stderr
