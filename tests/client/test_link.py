"""The caller's link to its root: which copy of the package the root imports."""

from __future__ import annotations

import os

import supervisor
from supervisor.client import link


def test_the_root_imports_this_very_copy_of_the_package():
    # The root is started with this directory first on its sys.path: it must be the one
    # that holds the `supervisor` package we run (a wrong level would put the package's
    # own folder there and make its modules importable as top-level names).
    parent = link._PACKAGE_PARENT
    assert os.path.join(parent, "supervisor", "__init__.py") == supervisor.__file__
