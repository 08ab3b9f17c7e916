"""Reload plans (`supervisor.tree.reload`): pure, specs in and steps out."""

from __future__ import annotations

import itertools
import re

import pytest

from supervisor import ConfigError, Pool, Supervisor, child, program
from supervisor.tree.reload import check_live, differing, level, plan
from supervisor.wire.reload import Change, ReloadReport

ECHO = "workers.echo:Echo"


def w(child_id: str, **options):
    return child(child_id, ECHO, **options)


def actions(steps):
    return [(s.action, s.id, s.fields) for s in steps.steps]


def test_nothing_changed_is_no_step():
    tree = Supervisor("root", [w("a"), Supervisor("jobs", [w("x")])])
    steps = level(tree, Supervisor("root", [w("a"), Supervisor("jobs", [w("x")])]))
    assert (steps.steps, steps.unchanged, steps.fields) == ((), ("a", "jobs"), ())
    assert plan(tree, tree) == ([], 3)


def test_removals_first_in_reverse_start_order_then_the_files_order():
    old = Supervisor("root", [w("a"), w("b"), w("c"), w("d"), w("e")])
    new = Supervisor("root", [w("f"), w("a"), w("c", kwargs={"prefix": "> "}), w("e")])
    steps = level(old, new)
    assert actions(steps) == [
        ("removed", "d", ()), ("removed", "b", ()),
        ("added", "f", ()), ("changed", "c", ("kwargs",)),
    ]
    assert steps.order == ("f", "a", "c", "e")
    assert steps.unchanged == ("a", "e")


def test_every_field_that_differs_is_named_in_field_order():
    old = w("a")
    new = w("a", kwargs={"prefix": "x"}, restart="transient", shutdown=1.0, heartbeat=2.0)
    assert differing(old, new) == ("kwargs", "restart", "shutdown", "heartbeat")
    assert differing(old, old) == ()


def test_a_child_that_becomes_another_kind_is_changed_as_a_type_change():
    old = Supervisor("root", [w("a"), Supervisor("b", [w("x")])])
    new = Supervisor("root", [program("a", ["sleep", "1"]), Pool("b", ECHO, size=2)])
    assert actions(level(old, new)) == [("changed", "a", ("type",)),
                                         ("changed", "b", ("type",))]


def test_a_supervisor_that_stays_one_is_updated_not_restarted():
    old = Supervisor("root", [Supervisor("jobs", [w("x"), w("y")])])
    new = Supervisor("root", [Supervisor("jobs", [w("x"), w("z")], strategy="rest_for_one",
                                         max_restarts=9)])
    assert actions(level(old, new)) == [
        ("updated", "jobs", ("children", "strategy", "max_restarts"))]
    changes, unchanged = plan(old, new)
    assert changes == [
        Change("updated", "jobs", "supervisor", ["children", "strategy", "max_restarts"]),
        Change("removed", "jobs/y", "worker"),
        Change("added", "jobs/z", "worker"),
    ]
    assert unchanged == 1  # jobs/x


@pytest.mark.parametrize(("before", "after"), [("one_for_one", "simple_one_for_one"),
                                               ("simple_one_for_one", "one_for_all")])
def test_simple_one_for_one_or_back_is_a_new_supervisor(before, after):
    def sup(strategy):
        if strategy == "simple_one_for_one":
            return Supervisor("jobs", strategy=strategy, template=w("job"))
        return Supervisor("jobs", [w("x")], strategy=strategy)

    steps = level(Supervisor("root", [sup(before)]), Supervisor("root", [sup(after)]))
    assert [s.action for s in steps.steps] == ["changed"]


def test_a_pool_is_updated_and_names_its_worker_options():
    old = Supervisor("root", [Pool("py", ECHO, size=2)])
    new = Supervisor("root", [Pool("py", ECHO, size=3, kwargs={"prefix": "p"})])
    assert actions(level(old, new)) == [("updated", "py", ("size", "kwargs"))]
    changes, unchanged = plan(old, new)
    assert [(c.action, c.path) for c in changes] == [
        ("updated", "py"), ("changed", "py/py-0"), ("changed", "py/py-1"), ("added", "py/py-2")]
    assert unchanged == 0


def test_the_roots_own_settings_are_listed_apart_from_its_children():
    old = Supervisor("root", [w("a")])
    new = Supervisor("root", [w("a")], strategy="one_for_all", max_seconds=9.0)
    steps = level(old, new)
    assert (steps.steps, steps.fields) == ((), ("strategy", "max_seconds"))


def test_unchanged_counts_every_node_of_an_unchanged_subtree():
    tree = [w("a"), Supervisor("jobs", [w("x"), Supervisor("deep", [w("y")])])]
    old = Supervisor("root", tree)
    new = Supervisor("root", [*tree, w("b")])
    assert plan(old, new) == ([Change("added", "b", "worker")], 5)


def test_plans_of_every_pair_of_small_trees_rebuild_the_new_list():
    """Whatever the two child lists, the plan's removals and additions turn the old ids
    into the new ones, and each id is touched at most once."""
    pool = [w("a"), w("b"), w("c"), w("b", kwargs={"prefix": "!"})]
    lists = []
    for size in range(4):
        for combo in itertools.permutations(pool, size):
            if len({spec.id for spec in combo}) == size:
                lists.append(combo)
    for old_children, new_children in itertools.product(lists, repeat=2):
        steps = level(Supervisor("r", old_children), Supervisor("r", new_children))
        ids = [spec.id for spec in old_children]
        for step in steps.steps:
            if step.action == "removed":
                ids.remove(step.id)
            elif step.action == "added":
                ids.append(step.id)
        assert sorted(ids) == sorted(steps.order)
        assert steps.order == tuple(spec.id for spec in new_children)
        touched = [s.id for s in steps.steps]
        assert len(touched) == len(set(touched))
        assert not set(touched) & set(steps.unchanged)


def test_the_roots_id_and_simple_one_for_one_cannot_change_live():
    old = Supervisor("root", [w("a")])
    with pytest.raises(ConfigError, match=r"^tree\.id: the root's id cannot change"):
        check_live(old, Supervisor("other", [w("a")]))
    simple = Supervisor("root", strategy="simple_one_for_one", template=w("job"))
    with pytest.raises(ConfigError, match=r"^tree\.strategy: the root cannot change"):
        check_live(old, simple)
    check_live(old, Supervisor("root", [w("b")], strategy="rest_for_one"))  # fine


def test_the_report_summary_counts_each_action():
    report = ReloadReport(file="t.toml", dry_run=True, unchanged=3, fields=["strategy"],
                          changes=[Change("added", "a", "worker"),
                                   Change("added", "b", "worker"),
                                   Change("removed", "c", "worker")])
    assert re.fullmatch(r"2 added, 1 removed, 0 changed, 0 updated, 3 unchanged; "
                        r"root: strategy", report.summary())
