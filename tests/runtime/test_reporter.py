"""The default reporter: detaching it before a tree starts sticks."""

from __future__ import annotations

import pytest

from supervisor import Supervisor, child, telemetry
from workers.echo import Echo

pytestmark = pytest.mark.integration


@pytest.fixture
def restore_reporter():
    attached = telemetry.DEFAULT_REPORTER in telemetry.handlers()
    yield
    telemetry.detach(telemetry.DEFAULT_REPORTER)
    if attached:
        telemetry.attach_default_reporter(force=True)


def test_detaching_the_default_reporter_before_start_sticks(start_tree, restore_reporter):
    telemetry.detach(telemetry.DEFAULT_REPORTER)
    start_tree(Supervisor("root", children=[child("echo", Echo)]))
    assert telemetry.DEFAULT_REPORTER not in telemetry.handlers()
    telemetry.attach_default_reporter(force=True)
    assert telemetry.DEFAULT_REPORTER in telemetry.handlers()
