"""Restart decisions as OTP makes them: whether a child is restarted, and what a restart touches.

Two questions, two tables:

1. Is the exited child restarted at all?  ``RESTART_DECISIONS[(restart_type, exit_kind)]``
   (OTP's ``do_restart`` clauses): permanent always, transient only after an abnormal exit,
   temporary never.
2. If so, which children are stopped and started?  ``plan_restart`` (OTP's ``restart/3`` per
   strategy): one_for_one touches the failed child only, one_for_all every child, rest_for_one
   the failed child and every child started after it. Bystanders stop in reverse start order,
   the group starts again in start order, temporary children are dropped instead of restarted.

The supervisor calls `plan_restart` only when `should_restart` said yes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Collection, Sequence

import attrs

__all__ = [
    "Strategy",
    "RestartType",
    "ExitKind",
    "RESTART_DECISIONS",
    "RESTART_GROUP",
    "exit_kind",
    "is_clean_exit",
    "should_restart",
    "RestartPlan",
    "plan_restart",
    "plan_stop_order",
]


class Strategy(enum.StrEnum):
    """Supervisor restart strategies, as in OTP."""

    one_for_one = "one_for_one"
    one_for_all = "one_for_all"
    rest_for_one = "rest_for_one"
    simple_one_for_one = "simple_one_for_one"


class RestartType(enum.StrEnum):
    """Child restart types, as in OTP: when an exited child is restarted."""

    permanent = "permanent"
    transient = "transient"
    temporary = "temporary"


class ExitKind(enum.StrEnum):
    """How a child exited, as far as restarting is concerned."""

    normal = "normal"
    shutdown = "shutdown"
    abnormal = "abnormal"


RESTART_DECISIONS: dict[tuple[RestartType, ExitKind], bool] = {
    (RestartType.permanent, ExitKind.normal): True,
    (RestartType.permanent, ExitKind.shutdown): True,
    (RestartType.permanent, ExitKind.abnormal): True,
    (RestartType.transient, ExitKind.normal): False,
    (RestartType.transient, ExitKind.shutdown): False,
    (RestartType.transient, ExitKind.abnormal): True,
    (RestartType.temporary, ExitKind.normal): False,
    (RestartType.temporary, ExitKind.shutdown): False,
    (RestartType.temporary, ExitKind.abnormal): False,
}
"""OTP's truth table: is a child of this restart type restarted after this kind of exit?"""


def exit_kind(reason: object) -> ExitKind:
    """Classify an exit reason: "normal"; "shutdown", "shutdown:<why>" or ("shutdown", term)
    (OTP's ``{shutdown, Term}``); anything else is abnormal. Never raises."""
    if isinstance(reason, tuple) and reason:
        reason = reason[0]
    if reason == ExitKind.normal:
        return ExitKind.normal
    if reason == ExitKind.shutdown or (isinstance(reason, str) and reason.startswith("shutdown:")):
        return ExitKind.shutdown
    return ExitKind.abnormal


def is_clean_exit(reason: object) -> bool:
    """True for "normal" and shutdown reasons: such an exit is not a failure. Never raises."""
    return exit_kind(reason) is not ExitKind.abnormal


def should_restart(restart_type: RestartType | str, reason: object) -> bool:
    """Whether a child of `restart_type` that exited with `reason` is restarted (OTP rules).

    Raises ValueError for an unknown restart type.
    """
    return RESTART_DECISIONS[(_restart_type(restart_type), exit_kind(reason))]


def _restart_type(value: RestartType | str) -> RestartType:
    try:
        return RestartType(value)
    except ValueError:
        expected = ", ".join(RestartType)
        raise ValueError(f"restart: expected one of {expected}, got {value!r}") from None


@attrs.frozen(kw_only=True)
class RestartPlan:
    """What to do, in order, to restart after a child failed.

    1. stop `stop` one at a time, in this order (reverse start order; never the failed child,
       which is already dead; only running children when the caller said which run);
    2. drop the children in `remove` from the child table (temporary children of the group:
       never restarted, in start order);
    3. start `start` one at a time, in this order (start order; never a temporary child).
    """

    stop: tuple[str, ...] = ()
    start: tuple[str, ...] = ()
    remove: tuple[str, ...] = ()


def _only_failed(children: Sequence[str], index: int) -> Sequence[str]:
    return children[index : index + 1]


def _everyone(children: Sequence[str], index: int) -> Sequence[str]:
    return children


def _failed_and_later(children: Sequence[str], index: int) -> Sequence[str]:
    return children[index:]


RESTART_GROUP: dict[Strategy, Callable[[Sequence[str], int], Sequence[str]]] = {
    Strategy.one_for_one: _only_failed,
    Strategy.simple_one_for_one: _only_failed,
    Strategy.one_for_all: _everyone,
    Strategy.rest_for_one: _failed_and_later,
}
"""Which children a restart touches, per strategy (OTP's restart/3 clauses as data):
``RESTART_GROUP[strategy](children, index_of_failed)``."""


def plan_restart(
    strategy: Strategy | str,
    children: Sequence[str],
    failed: str,
    *,
    temporary: Collection[str] = (),
    running: Collection[str] | None = None,
) -> RestartPlan:
    """Plan the restart after `failed` (one of `children`, given in start order) died.

    `temporary` names the temporary children (dropped, never restarted); `running`, when
    given, names the children still running (only those are stopped; one already down is
    still started). Call it only when `should_restart` said the failed child is restarted.
    Raises ValueError for an unknown strategy, duplicate ids, or `failed` not in `children`.
    """
    strategy = _strategy(strategy)
    children = tuple(children)
    if len(set(children)) != len(children):
        raise ValueError(f"children: duplicate ids in {list(children)!r}")
    try:
        index = children.index(failed)
    except ValueError:
        raise ValueError(
            f"failed: {failed!r} is not one of the children {list(children)!r}"
        ) from None
    group = RESTART_GROUP[strategy](children, index)
    temporary = frozenset(temporary)
    bystanders = [c for c in group if c != failed]
    if running is not None:
        running = frozenset(running)
        bystanders = [c for c in bystanders if c in running]
    return RestartPlan(
        stop=plan_stop_order(bystanders),
        start=tuple(c for c in group if c not in temporary),
        remove=tuple(c for c in group if c in temporary),
    )


def _strategy(value: Strategy | str) -> Strategy:
    try:
        return Strategy(value)
    except ValueError:
        expected = ", ".join(Strategy)
        raise ValueError(f"strategy: expected one of {expected}, got {value!r}") from None


def plan_stop_order(children: Sequence[str]) -> tuple[str, ...]:
    """The order to stop `children` (given in start order) in: the reverse. Never raises."""
    return tuple(reversed(tuple(children)))
