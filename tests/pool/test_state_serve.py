"""`PoolState.serve` hands freed room to queued blocking callers, first come first served,
without looking at every one of thousands of queued callers on each check-in."""

from __future__ import annotations

from supervisor.pool.state import Effects, PoolState, Waiter


def _state(slots: int) -> PoolState:
    state = PoolState("p", lambda path: 1)
    for i in range(slots):
        state.add_slot(state.new_slot(f"p-{i}", overflow=False))
    return state


def _count_picks(state: PoolState, monkeypatch) -> list[int]:
    calls = [0]
    pick = state._pick

    def counted(*args):
        calls[0] += 1
        return pick(*args)

    monkeypatch.setattr(state, "_pick", counted)
    return calls


def test_a_check_in_with_thousands_queued_looks_at_the_first_only(monkeypatch):
    state = _state(2)
    with state.lock:
        busy = [state.checkout(None, 1, "fail", i, b"")[0] for i in range(2)]
        queued = [state.checkout(None, 1, "fail", 100 + i, b"") for i in range(5000)]
    assert all(type(w) is Waiter for w in queued)
    picks = _count_picks(state, monkeypatch)
    with state.lock:
        state.serve(Effects())  # nothing is free: one look, not 5,000
    assert picks[0] == 1
    with state.lock:
        state.checkin(busy[0], Effects())  # one slot free: the first caller gets it
    assert queued[0].slot is busy[0] and all(w.slot is None for w in queued[1:])
    assert picks[0] == 3  # the first caller's pick, then the second finds nothing
    assert len(state.waiters) == 4999


def test_a_caller_tied_to_a_session_may_go_ahead_of_one_waiting_for_any(monkeypatch):
    state = _state(2)
    with state.lock:
        first = state.checkout(None, 1, "fail", 1, b"")[0]
        state.checkout("s", 1, "fail", 2, b"")  # the session is bound to the other slot
        anyone = state.checkout(None, 1, "fail", 3, b"")
        bound = state.checkout("s", 1, "fail", 4, b"")
    assert type(anyone) is Waiter and type(bound) is Waiter
    with state.lock:
        state.checkin(first, Effects())
    # The free slot goes to the first caller that can take it: `anyone`; `bound` waits
    # for its session's worker.
    assert anyone.slot is first and bound.slot is None
    assert state.session_waiters == 1 and dict(state.waiter_limits) == {1: 1}
