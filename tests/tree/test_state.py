"""A child's state machine: every move `become` allows is in TRANSITIONS, and no other."""

from __future__ import annotations

import itertools

import pytest

from supervisor.specs import child
from supervisor.tree.slot import TRANSITIONS, ChildSlot, ChildState, InvalidTransition
from workers.echo import Echo

S = ChildState


def slot_in(state: ChildState) -> ChildSlot:
    slot = ChildSlot(spec=child("w", Echo), path="w", matrix=None, launcher=None)
    slot.state = state
    return slot


@pytest.mark.parametrize(("before", "after"), list(itertools.product(S, S)))
def test_become_allows_exactly_the_table(before, after):
    slot = slot_in(before)
    if after is before or after in TRANSITIONS[before]:
        slot.become(after)
        assert slot.state is after
    else:
        with pytest.raises(InvalidTransition, match=rf"^w: {before} -> {after} is not a move"):
            slot.become(after)
        assert slot.state is before


def test_every_state_has_a_row_and_every_state_is_reachable_from_stopped():
    assert set(TRANSITIONS) == set(S)
    seen, todo = {S.STOPPED}, [S.STOPPED]
    while todo:
        for nxt in TRANSITIONS[todo.pop()]:
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    assert seen == set(S)


def test_the_circuit_is_derived_from_the_state_and_the_trial():
    slot = slot_in(S.CIRCUIT_OPEN)
    assert slot.circuit == "open"
    slot.become(S.STARTING)
    slot.trial = True
    assert slot.circuit == "half_open"
    slot.close_circuit()
    assert (slot.circuit, slot.retry_at) == ("closed", None)


def test_the_wire_record_carries_plain_strings():
    info = slot_in(S.RESTARTING).info()
    assert (type(info.state), info.state, info.circuit) == (str, "restarting", "closed")
