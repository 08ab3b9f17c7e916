"""Fixtures of the runtime tests: the same tree started statically or built dynamically."""

from __future__ import annotations

import attrs
import pytest


@pytest.fixture(params=["static", "dynamic"])
def start_as(request, start_tree):
    """start_as(spec) -> App, run twice: once with the root's children in its spec
    ("static"), once with the root started empty and the same children added one by one,
    in order, with `start_child` ("dynamic"). OTP supervises both alike, so every test
    written with this fixture must pass both ways. A nested supervisor is added whole (its
    own children stay in its spec: it must get them back when its parent restarts it)."""

    def _start(spec, **kwargs):
        if request.param == "static":
            return start_tree(spec, **kwargs)
        app = start_tree(attrs.evolve(spec, children=()), **kwargs)
        for child_spec in spec.children:
            assert app.start_child("", child_spec) == child_spec.id
        return app

    _start.mode = request.param
    return _start
