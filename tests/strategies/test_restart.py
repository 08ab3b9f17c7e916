"""Restart types and restart plans: OTP's truth table and restart/3 per strategy."""

import itertools

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from strategies.restart import (
    RESTART_DECISIONS,
    ExitKind,
    RestartPlan,
    RestartType,
    Strategy,
    exit_kind,
    is_clean_exit,
    plan_restart,
    plan_stop_order,
    should_restart,
)

CHILDREN = ("a", "b", "c", "d")

REASONS = {
    "normal": ExitKind.normal,
    "shutdown": ExitKind.shutdown,
    "shutdown:reached_max_restart_intensity": ExitKind.shutdown,
    ("shutdown", "bye"): ExitKind.shutdown,
    ("normal", 0): ExitKind.normal,
    "killed": ExitKind.abnormal,
    "crashed": ExitKind.abnormal,
    "": ExitKind.abnormal,
    "normally": ExitKind.abnormal,
    "shutdowns": ExitKind.abnormal,
    ("port_exited", 1): ExitKind.abnormal,
    (): ExitKind.abnormal,
    None: ExitKind.abnormal,
}


def test_enums_are_valued_as_their_names():
    assert ["one_for_one", "one_for_all", "rest_for_one", "simple_one_for_one"] == list(Strategy)
    assert ["permanent", "transient", "temporary"] == list(RestartType)


def test_decision_table_is_complete():
    assert set(itertools.product(RestartType, ExitKind)) == set(RESTART_DECISIONS)


@pytest.mark.parametrize(("reason", "kind"), list(REASONS.items()), ids=repr)
def test_exit_kind(reason, kind):
    assert kind == exit_kind(reason)
    assert (kind != ExitKind.abnormal) == is_clean_exit(reason)


@pytest.mark.parametrize(
    ("restart_type", "reason"), list(itertools.product(list(RestartType), list(REASONS))), ids=repr
)
def test_should_restart_follows_otp(restart_type, reason):
    abnormal = REASONS[reason] == ExitKind.abnormal
    expected = {"permanent": True, "transient": abnormal, "temporary": False}[restart_type]
    assert expected == should_restart(restart_type, reason)
    assert expected == should_restart(str(restart_type), reason)


def test_should_restart_rejects_unknown_restart_types():
    with pytest.raises(
        ValueError,
        match=r"^restart: expected one of permanent, transient, temporary, got 'sometimes'$",
    ):
        should_restart("sometimes", "killed")


@pytest.mark.parametrize(
    ("strategy", "failed", "stop", "start"),
    [
        ("one_for_one", "b", (), ("b",)),
        ("simple_one_for_one", "b", (), ("b",)),
        ("one_for_all", "b", ("d", "c", "a"), ("a", "b", "c", "d")),
        ("one_for_all", "a", ("d", "c", "b"), ("a", "b", "c", "d")),
        ("one_for_all", "d", ("c", "b", "a"), ("a", "b", "c", "d")),
        ("rest_for_one", "b", ("d", "c"), ("b", "c", "d")),
        ("rest_for_one", "a", ("d", "c", "b"), ("a", "b", "c", "d")),
        ("rest_for_one", "d", (), ("d",)),
    ],
)
def test_plan_restart_per_strategy(strategy, failed, stop, start):
    assert RestartPlan(stop=stop, start=start, remove=()) == plan_restart(
        strategy, CHILDREN, failed
    )


def test_temporary_bystanders_are_stopped_and_removed_not_restarted():
    plan = plan_restart("one_for_all", CHILDREN, "b", temporary={"c", "a"})
    assert RestartPlan(stop=("d", "c", "a"), start=("b", "d"), remove=("a", "c")) == plan
    plan = plan_restart("rest_for_one", CHILDREN, "b", temporary={"a", "d"})
    assert RestartPlan(stop=("d", "c"), start=("b", "c"), remove=("d",)) == plan


def test_a_failed_temporary_child_is_removed_not_restarted():
    assert RestartPlan(remove=("b",)) == plan_restart("one_for_one", CHILDREN, "b", temporary=["b"])
    plan = plan_restart(Strategy.one_for_all, CHILDREN, "b", temporary=["b"])
    assert RestartPlan(stop=("d", "c", "a"), start=("a", "c", "d"), remove=("b",)) == plan


def test_children_already_down_are_not_stopped_but_still_started():
    plan = plan_restart("one_for_all", CHILDREN, "b", running={"a", "d", "b"})
    assert RestartPlan(stop=("d", "a"), start=CHILDREN) == plan
    plan = plan_restart("rest_for_one", CHILDREN, "a", running=())
    assert RestartPlan(stop=(), start=CHILDREN) == plan


def test_plan_restart_accepts_any_sequence_and_the_enum():
    plan = plan_restart(Strategy.rest_for_one, list(CHILDREN), "c")
    assert RestartPlan(stop=("d",), start=("c", "d")) == plan


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ("one_for_one", CHILDREN, "z"),
            r"^failed: 'z' is not one of the children \['a', 'b', 'c', 'd'\]$",
        ),
        (("one_for_one", ("a", "b", "a"), "a"), r"^children: duplicate ids in \['a', 'b', 'a'\]$"),
        (
            ("all_for_one", CHILDREN, "a"),
            r"^strategy: expected one of one_for_one, one_for_all, rest_for_one, simple_one_for_one, got 'all_for_one'$",
        ),
    ],
)
def test_plan_restart_rejects_bad_input(args, message):
    with pytest.raises(ValueError, match=message):
        plan_restart(*args)


def test_plan_stop_order_is_the_reverse_of_start_order():
    assert ("d", "c", "b", "a") == plan_stop_order(CHILDREN)
    assert ("y", "x") == plan_stop_order(iter(["x", "y"]))
    assert () == plan_stop_order([])


def test_restart_plan_is_frozen():
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        plan_restart("one_for_one", CHILDREN, "a").start = ()


# -- properties ------------------------------------------------------------------------------


def is_subsequence(sub, seq):
    items = iter(seq)
    return all(any(x == y for y in items) for x in sub)


@st.composite
def restart_cases(draw):
    children = draw(
        st.lists(st.text("abcdefgh", min_size=1, max_size=2), min_size=1, max_size=8, unique=True)
    )
    failed = draw(st.sampled_from(children))
    temporary = draw(st.sets(st.sampled_from(children)))
    running = draw(st.none() | st.sets(st.sampled_from(children)))
    strategy = draw(st.sampled_from(list(Strategy)))
    return strategy, children, failed, temporary, running


@given(restart_cases())
def test_plan_properties(case):
    strategy, children, failed, temporary, running = case
    plan = plan_restart(strategy, children, failed, temporary=temporary, running=running)
    index = children.index(failed)
    group = {
        Strategy.one_for_one: [failed],
        Strategy.simple_one_for_one: [failed],
        Strategy.one_for_all: children,
        Strategy.rest_for_one: children[index:],
    }[strategy]

    assert is_subsequence(plan.stop, reversed(children))  # reverse start order
    assert is_subsequence(plan.start, children)  # start order
    assert is_subsequence(plan.remove, children)
    assert failed not in plan.stop  # already dead
    assert not set(plan.start) & temporary  # temporaries never restart
    assert set(plan.remove) <= temporary
    assert set(plan.start) | set(plan.remove) == set(group)  # the whole group, nothing more
    assert not set(plan.start) & set(plan.remove)
    expected_stop = [
        c for c in reversed(group) if c != failed and (running is None or c in running)
    ]
    assert expected_stop == list(plan.stop)
    if strategy == Strategy.one_for_all:
        assert set(children) == set(plan.start) | set(plan.remove) | {failed}
