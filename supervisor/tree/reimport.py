"""Fresh code for a rolling restart: worker modules re-imported in this supervisor process,
and specs whose worker classes are the re-imported ones.

A worker is forked from its supervisor and runs the code that supervisor imported. To start
workers on new code, each supervisor that forks them re-imports the module that defines
each worker class (`importlib.reload`, once per module) and keeps specs naming the new
classes for every later start. A class defined in ``__main__`` cannot be re-imported: it
stays as it was, and is reported as kept.
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any

import attrs

from ..specs import ChildSpec, PoolSpec, SupervisorSpec

__all__ = ["Reimport", "ReimportError", "generation"]

# Modules re-imported in this process so far: what a process forked before a re-import
# runs may be stale (a pre-forked standby checks it, see `tree.standby`).
_generation = 0


def generation() -> int:
    """How many times a module was (or began to be) re-imported in this process."""
    return _generation


class ReimportError(Exception):
    """A module could not be re-imported, or no longer defines a worker class."""


class Reimport:
    """One re-import pass: `spec(s)` returns `s` with its worker classes (nested specs
    included) taken from freshly re-imported modules. `modules` lists the modules
    re-imported; `kept` the classes that stay as they were (``module:Class``)."""

    def __init__(self) -> None:
        self._done: dict[str, ModuleType] = {}
        self.kept: set[str] = set()
        importlib.invalidate_caches()  # a module file written since the last import is seen

    @property
    def modules(self) -> list[str]:
        return sorted(self._done)

    def spec(self, spec: Any) -> Any:
        if isinstance(spec, ChildSpec):
            fresh = self._class(spec.worker_class)
            if fresh is spec.worker_class:
                return spec
            # An import string resolves again, from the re-imported module.
            return attrs.evolve(spec, worker=spec.worker if isinstance(spec.worker, str)
                                else fresh)
        if isinstance(spec, SupervisorSpec):
            changes: dict[str, Any] = {"children": tuple(self.spec(c) for c in spec.children)}
            if spec.template is not None:
                changes["template"] = self.spec(spec.template)
            if isinstance(spec, PoolSpec) and spec.worker_template is not None:
                changes["worker_template"] = self.spec(spec.worker_template)
            return attrs.evolve(spec, **changes)
        return spec  # an external program: nothing of ours to re-import

    def _class(self, cls: type) -> type:
        name, qualname = cls.__module__, cls.__qualname__
        if name == "__main__" or name not in sys.modules or "<locals>" in qualname:
            self.kept.add(f"{name}:{qualname}")
            return cls
        module = self._done.get(name)
        if module is None:
            global _generation
            # Counted before the reload runs: a module whose new code raises half way is
            # changed all the same (its namespace is updated in place).
            _generation += 1
            try:
                module = importlib.reload(sys.modules[name])
            except Exception as exc:  # the new code's own error (SyntaxError, ImportError...)
                raise ReimportError(f"cannot re-import {name!r}: {type(exc).__name__}: "
                                    f"{exc}") from exc
            self._done[name] = module
        found: Any = module
        for part in qualname.split("."):
            found = getattr(found, part, None)
            if found is None:
                raise ReimportError(f"module {name!r} no longer defines {qualname!r}")
        if not isinstance(found, type):
            raise ReimportError(f"{name}:{qualname} is no longer a class")
        return found
