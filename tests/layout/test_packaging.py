"""Every package of the source tree is one the built distribution ships."""

from __future__ import annotations

import fnmatch
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _packages() -> set[str]:
    found = set()
    for top in ("supervisor", "strategies", "workers"):
        for init in (ROOT / top).rglob("__init__.py"):
            found.add(".".join(init.parent.relative_to(ROOT).parts))
    return found


def test_every_folder_of_python_code_is_a_package():
    for top in ("supervisor", "strategies", "workers"):
        for path in (ROOT / top).rglob("*.py"):
            assert (path.parent / "__init__.py").exists(), f"{path.parent} has no __init__.py"


def test_pyproject_ships_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    include = config["tool"]["setuptools"]["packages"]["find"]["include"]
    shipped = {p for p in _packages() if any(fnmatch.fnmatch(p, pat) for pat in include)}
    assert shipped == _packages()
    assert {"supervisor.wire", "supervisor.tree", "supervisor.pool"} <= shipped
