"""What a supervisor does about one failed child: the matrix turned into a step.

The steps of "How a failed child is handled" (the README's matrix section), after the
restart type said the child is restarted at all and intensity counted the restart:

    recovery (after the severity rules)  budget left   ->  action
    immediate_retry / backoff_retry      yes               restart after the row's delay
                                         no                escalate (give up as if intensity)
    circuit_break                        yes               restart after the row's delay
                                         no                open the child's circuit
    failover                             -                 restart at once (calls go to the
                                                           fallback meanwhile)
    abandon                              -                 give up at once

The step is the original design's decision, unchanged. `contain` then says what the
supervisor does with a step that gives up, after the row's `on_exhausted`:

    step action           on_exhausted   ->  supervisor's action
    restart/open_circuit  any                the same
    escalate / abandon    abandon (default)  abandon: this child stays down, siblings run
    escalate / abandon    escalate           escalate: the supervisor gives up (OTP's way)

Restart intensity stays the one other reason a supervisor gives up because of its
children; it is counted before any step (the runtime's job).

`failures` is the child's count of consecutive failures, this one included (the runtime
resets it once the child has run `stable_after` seconds). The budget is left while
``failures <= max_retries``. The first restart after a healthy run (failures == 1) is always
immediate, as in OTP: a worker that crashes once a day must be back in milliseconds.
"""

from __future__ import annotations

import enum
import random
from collections.abc import Mapping

import attrs

from strategies.matrix import (
    DEFAULT_MATRIX,
    Decision,
    ErrorCategory,
    OnExhausted,
    Recovery,
    Rule,
    decide,
    retry_delay,
    rule_for,
)

__all__ = ["Action", "Step", "ACTIONS", "CONTAINED", "next_step", "contain"]


class Action(enum.StrEnum):
    restart = "restart"
    escalate = "escalate"
    open_circuit = "open_circuit"
    abandon = "abandon"


# (recovery, retry budget left) -> action
ACTIONS: Mapping[tuple[Recovery, bool], Action] = {
    (Recovery.immediate_retry, True): Action.restart,
    (Recovery.immediate_retry, False): Action.escalate,
    (Recovery.backoff_retry, True): Action.restart,
    (Recovery.backoff_retry, False): Action.escalate,
    (Recovery.circuit_break, True): Action.restart,
    (Recovery.circuit_break, False): Action.open_circuit,
    (Recovery.failover, True): Action.restart,
    (Recovery.failover, False): Action.restart,
    (Recovery.abandon, True): Action.abandon,
    (Recovery.abandon, False): Action.abandon,
}


@attrs.frozen(kw_only=True)
class Step:
    """The decided action, the delay before a restart (0 otherwise) and the decision."""

    action: Action
    delay: float
    decision: Decision


def next_step(
    category: ErrorCategory | str,
    failures: int,
    *,
    affecting_all: bool = False,
    matrix: Mapping[ErrorCategory, Rule] = DEFAULT_MATRIX,
    base_delay: float = 1.0,
    max_delay: float = 30.0,
    rng: random.Random | None = None,
) -> Step:
    """The step for a child's `failures`-th consecutive failure of `category`.

    Raises MatrixError for an unknown category and ValueError for failures < 1.
    """
    decision = decide(category, failures, affecting_all=affecting_all, matrix=matrix)
    action = ACTIONS[(decision.recovery, failures <= decision.max_retries)]
    delay = 0.0
    if action is Action.restart and failures > 1 and decision.recovery != Recovery.failover:
        delay = retry_delay(decision, failures, base_delay=base_delay, max_delay=max_delay,
                            rng=rng)
    return Step(action=action, delay=delay, decision=decision)


# (step action, the row's on_exhausted) -> what the supervisor does
CONTAINED: Mapping[tuple[Action, OnExhausted], Action] = {
    **{(action, choice): action for action in (Action.restart, Action.open_circuit)
       for choice in OnExhausted},
    (Action.escalate, OnExhausted.abandon): Action.abandon,
    (Action.escalate, OnExhausted.escalate): Action.escalate,
    (Action.abandon, OnExhausted.abandon): Action.abandon,
    (Action.abandon, OnExhausted.escalate): Action.escalate,
}


def contain(step: Step, matrix: Mapping[ErrorCategory, Rule] = DEFAULT_MATRIX) -> Action:
    """What the supervisor does with `step`: a step that gives up on the child (escalate,
    abandon) abandons only that child, unless its row says ``on_exhausted="escalate"``."""
    rule = rule_for(step.decision.category, matrix)
    return CONTAINED[(step.action, rule.on_exhausted)]
