"""Child options: `autostart` and a worker's `env`."""

from __future__ import annotations

import os

import pytest

from supervisor import Supervisor, child

from ._workers import Environ

pytestmark = pytest.mark.integration


def test_a_child_with_autostart_false_is_declared_stopped_until_started(start_tree):
    app = start_tree(Supervisor("root", children=[
        child("first", Environ), child("later", Environ, autostart=False),
        child("last", Environ)]))
    states = {info.id: (info.state, info.pid) for info in app.which_children()}
    assert states["later"] == ("stopped", None)
    assert states["first"][0] == states["last"][0] == "running"
    pid = app.restart_child("", "later")
    assert app.call("later", "get", "HOME") == os.environ.get("HOME")
    assert {info.id: info.pid for info in app.which_children()}["later"] == pid


def test_a_workers_env_is_added_to_the_environment_it_inherits(start_tree, monkeypatch):
    monkeypatch.setenv("INHERITED", "from the caller")
    app = start_tree(Supervisor("root", children=[
        child("w", Environ, env={"MODE": "test", "INHERITED": "overridden"}),
        child("plain", Environ)]))
    assert app.call("w", "get", "MODE") == "test"
    assert app.call("w", "get", "INHERITED") == "overridden"
    assert app.call("plain", "get", "INHERITED") == "from the caller"
    assert app.call("plain", "get", "MODE") is None
