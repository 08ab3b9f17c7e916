"""Reload plans: what differs between the spec tree that runs and the one a file now
declares. Pure: specs in, plans out; nothing here touches a process.

    level(old, new)       one supervisor's steps, in the order they are applied
    plan(old, new)        the whole tree's changes, flattened in that order, and the number
                          of the file's children left as they were (a dry run prints it)
    check_live(old, new)  refuses root settings that cannot change while the tree runs

Children are matched by id. One supervisor's steps, as OTP would apply a changed child
list: removals first, in reverse start order; then, in the file's order, each added child
(started), each changed one (stopped, then started from its new spec) and each updated
one. "Updated" is a supervisor whose own settings or children changed while it stays the
same kind of supervisor: the difference is applied inside it, recursively, and its
unchanged children keep running. A supervisor that becomes another kind (a pool, a
worker, simple_one_for_one or back) is changed instead: restarted whole.

    old  a b c d          new  a c' e d  ->  remove b; change c; add e   (a, d unchanged)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import attrs

from ..errors import ConfigError
from ..specs import PoolSpec, ProgramSpec, SupervisorSpec
from ..wire.reload import ADDED, CHANGED, REMOVED, UPDATED, Change

__all__ = ["Step", "Level", "level", "plan", "check_live", "kind_of", "differing"]

SIMPLE = "simple_one_for_one"


@attrs.frozen
class Step:
    """One step at one supervisor: `spec` is the new spec (None for a removal), `old` the
    spec the file had (None for an addition), `fields` what differs between them."""

    action: str
    id: str
    spec: Any
    old: Any
    fields: tuple[str, ...] = ()


@attrs.frozen
class Level:
    """The steps of one supervisor, in the order they are applied; `order` is the file's
    order of its children (its child list afterwards), `unchanged` the ids left as they
    were, `fields` the supervisor's own settings that changed (strategy, intensity, ...)."""

    steps: tuple[Step, ...]
    order: tuple[str, ...]
    unchanged: tuple[str, ...]
    fields: tuple[str, ...]


def kind_of(spec: Any) -> str:
    """A spec's kind as the file names it: worker, program, supervisor or pool."""
    if isinstance(spec, PoolSpec):
        return "pool"
    if isinstance(spec, SupervisorSpec):
        return "supervisor"
    if isinstance(spec, ProgramSpec):
        return "program"
    return "worker"


def differing(old: Any, new: Any) -> tuple[str, ...]:
    """The names of the spec fields that differ, in the spec's field order; ``("type",)``
    when the two are different kinds of spec. A pool's workers follow from its size and
    its worker options, so a pool reports those options (``kwargs``), not ``children``."""
    if type(old) is not type(new):
        return ("type",)
    names: list[str] = []
    for field in attrs.fields(type(old)):
        if not field.init or not field.eq:
            continue
        before, after = getattr(old, field.name), getattr(new, field.name)
        if before == after:
            continue
        if isinstance(new, PoolSpec) and field.name == "children":
            continue
        if field.name == "worker_template" and before is not None and after is not None:
            names.extend(n for n in differing(before, after) if n != "id" and n not in names)
            continue
        names.append(field.name)
    return tuple(names)


def _same_supervisor(old: Any, new: Any) -> bool:
    """Whether `new` can be applied inside the running supervisor of `old`."""
    return (type(old) is type(new) and isinstance(new, SupervisorSpec)
            and (old.strategy == SIMPLE) == (new.strategy == SIMPLE))


def level(old: SupervisorSpec, new: SupervisorSpec) -> Level:
    """The steps that turn the children of `old` into those of `new` (see the module doc)."""
    before = {spec.id: spec for spec in old.children}
    after = {spec.id: spec for spec in new.children}
    steps = [Step(REMOVED, spec.id, None, spec)
             for spec in reversed(old.children) if spec.id not in after]
    unchanged = []
    for spec in new.children:
        was = before.get(spec.id)
        if was is None:
            steps.append(Step(ADDED, spec.id, spec, None))
        elif was == spec:
            unchanged.append(spec.id)
        else:
            action = UPDATED if _same_supervisor(was, spec) else CHANGED
            steps.append(Step(action, spec.id, spec, was, differing(was, spec)))
    own = tuple(name for name in differing(old, new) if name != "children")
    return Level(tuple(steps), tuple(after), tuple(unchanged), own)


def plan(old: SupervisorSpec, new: SupervisorSpec, path: str = "") -> tuple[list[Change], int]:
    """(every change of the tree in the order it is applied, an updated supervisor's own
    changes right after it; how many children of the file stay as they are, counting
    every node of an unchanged subtree)."""
    steps = level(old, new)
    changes: list[Change] = []
    unchanged = sum(_size(spec) for spec in new.children if spec.id in steps.unchanged)
    for step in steps.steps:
        where = f"{path}/{step.id}" if path else step.id
        spec = step.spec if step.spec is not None else step.old
        changes.append(Change(step.action, where, kind_of(spec), list(step.fields)))
        if step.action == UPDATED:
            below, same = plan(step.old, step.spec, where)
            changes.extend(below)
            unchanged += same
    return changes, unchanged


def _size(spec: Any) -> int:
    return 1 + sum(_size(child) for child in _children(spec))


def _children(spec: Any) -> Iterator[Any]:
    return iter(spec.children) if isinstance(spec, SupervisorSpec) else iter(())


def check_live(old: SupervisorSpec, new: SupervisorSpec) -> None:
    """Refuse a root that cannot replace the running one in place. Raises ConfigError
    naming the key: ``tree.id`` (it names the tree and its default control socket), or
    ``tree.strategy`` to or from simple_one_for_one (the root is not restarted by a
    reload, and such a supervisor keeps no child list of its own)."""
    if new.id != old.id:
        raise ConfigError(f"the root's id cannot change while the tree runs ({old.id!r} "
                          f"-> {new.id!r}): it names the tree and its control socket; "
                          "restart `run` to change it", field="tree.id", value=new.id)
    if (old.strategy == SIMPLE) != (new.strategy == SIMPLE):
        raise ConfigError(f"the root cannot change to or from {SIMPLE} while the tree runs "
                          f"({old.strategy!r} -> {new.strategy!r}); restart `run` to change "
                          "it", field="tree.strategy", value=new.strategy)
