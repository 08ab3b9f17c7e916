"""The recovery step table, exhaustively over categories, failure counts and all-down."""

from __future__ import annotations

import itertools

import pytest

from strategies.matrix import (
    DEFAULT_MATRIX,
    ErrorCategory,
    OnExhausted,
    Recovery,
    decide,
    override_matrix,
)
from strategies.recovery import ACTIONS, CONTAINED, Action, contain, next_step


def test_every_recovery_and_budget_has_an_action():
    assert set(ACTIONS) == set(itertools.product(Recovery, (True, False)))


@pytest.mark.parametrize("category, failures, affecting_all", list(itertools.product(
    ErrorCategory, range(1, 8), (False, True))))
def test_step_follows_the_decision(category, failures, affecting_all):
    step = next_step(category, failures, affecting_all=affecting_all)
    decision = decide(category, failures, affecting_all=affecting_all)
    assert step.decision == decision
    budget_left = failures <= decision.max_retries
    assert step.action == ACTIONS[(decision.recovery, budget_left)]
    if step.action != Action.restart or failures == 1 or decision.recovery == Recovery.failover:
        assert step.delay == 0.0
    else:
        assert step.delay > 0 or decision.backoff == "none" or \
            decision.recovery == Recovery.immediate_retry


def test_connection_errors_back_off_then_abandon_on_the_fourth_failure():
    steps = [next_step("connection_error", n) for n in range(1, 5)]
    assert [(s.action, s.delay) for s in steps] == [
        (Action.restart, 0.0), (Action.restart, 2.0), (Action.restart, 4.0),
        (Action.abandon, 0.0)]  # attempt 4: major -> critical, and critical > 2 abandons


def test_resource_error_opens_the_circuit_once_its_budget_is_used():
    assert next_step("resource_error", 1).action == Action.restart
    assert next_step("resource_error", 2).action == Action.open_circuit


def test_initialization_error_is_abandoned_before_its_circuit_budget_runs_out():
    # The rules on top of the table: critical on attempt > 2 abandons, and the row's
    # budget is 3, so with the default matrix the circuit of an init failure never opens.
    assert [next_step("initialization_error", n).action for n in (1, 2, 3)] == [
        Action.restart, Action.restart, Action.abandon]


def test_overriding_the_row_gives_a_circuit_for_init_failures():
    matrix = override_matrix(DEFAULT_MATRIX, {"initialization_error": {
        "severity": "minor", "max_retries": 1, "backoff": "none"}})
    assert next_step("initialization_error", 1, matrix=matrix).action == Action.restart
    assert next_step("initialization_error", 2, matrix=matrix).action == Action.open_circuit


def test_immediate_retry_uses_the_immediate_table_and_escalates_after_budget():
    delays = [next_step("communication_error", n).delay for n in (1, 2, 3)]
    assert delays == [0.0, 0.1, 0.2]
    # attempt 4 upgrades major to critical and abandons before the escalation applies.
    assert next_step("communication_error", 4).action == Action.abandon
    matrix = override_matrix(DEFAULT_MATRIX, {"session_error": {"max_retries": 1}})
    assert next_step("session_error", 2, matrix=matrix).action == Action.escalate


def test_failover_restarts_at_once_and_system_error_abandons():
    assert next_step("python_error", 2) .delay == 0.0
    assert next_step("python_error", 2).action == Action.restart
    assert next_step("system_error", 1).action == Action.abandon


def test_failures_below_one_is_an_error():
    with pytest.raises(ValueError):
        next_step("connection_error", 0)


# ------------------------------------------------------------------ contain
@pytest.mark.parametrize("category, failures, affecting_all, escalate", list(itertools.product(
    ErrorCategory, range(1, 8), (False, True), (False, True))))
def test_contain_abandons_the_child_unless_the_row_escalates(category, failures,
                                                            affecting_all, escalate):
    matrix = override_matrix(DEFAULT_MATRIX, {str(category): {"on_exhausted": "escalate"}}) \
        if escalate else DEFAULT_MATRIX
    step = next_step(category, failures, affecting_all=affecting_all, matrix=matrix)
    action = contain(step, matrix)
    if step.action in (Action.restart, Action.open_circuit):
        assert action == step.action
    else:
        assert action == (Action.escalate if escalate else Action.abandon)


def test_contain_table_covers_every_action_and_choice():
    assert set(CONTAINED) == set(itertools.product(Action, OnExhausted))


def test_a_retry_row_out_of_budget_abandons_the_child_by_default():
    matrix = override_matrix(DEFAULT_MATRIX, {"session_error": {"max_retries": 1}})
    step = next_step("session_error", 2, matrix=matrix)
    assert (step.action, contain(step, matrix)) == (Action.escalate, Action.abandon)


def test_on_exhausted_does_not_change_the_decision():
    escalating = override_matrix(DEFAULT_MATRIX, {
        str(c): {"on_exhausted": "escalate"} for c in ErrorCategory})
    for category, attempt in itertools.product(ErrorCategory, range(1, 8)):
        assert decide(category, attempt, matrix=escalating) == decide(category, attempt)
