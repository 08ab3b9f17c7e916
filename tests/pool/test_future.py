"""PoolFuture is a concurrent.futures.Future with a lazily built Condition: every sequence
of operations must behave exactly as on a standard Future, and a waiter that arrives at
any moment around a settlement must be woken (no lost wake-up)."""

from __future__ import annotations

import random
import threading
from concurrent.futures import FIRST_COMPLETED, Future, as_completed, wait

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from supervisor.pool.results import PoolFuture

pytestmark = pytest.mark.timeout(120)

OPS = ("set_running_or_notify_cancel", "cancel", "set_result", "set_exception", "done",
       "running", "cancelled", "result", "exception", "add_done_callback")


def _apply(fut: Future, op: str, seen: list) -> object:
    """Run one operation; its return value or its exception's type name."""
    try:
        if op == "set_result":
            return fut.set_result(op)
        if op == "set_exception":
            return fut.set_exception(ValueError("boom"))
        if op in ("result", "exception"):
            value = getattr(fut, op)(timeout=0)
            return repr(value) if op == "exception" else value
        if op == "add_done_callback":
            return fut.add_done_callback(lambda f: seen.append(f.done()))
        return getattr(fut, op)()
    except BaseException as exc:  # noqa: BLE001 - the exception is the observed behaviour
        return type(exc).__name__


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(OPS), max_size=8))
def test_every_sequence_of_operations_behaves_as_on_a_standard_future(ops):
    ours, theirs = PoolFuture(), Future()
    seen_ours: list = []
    seen_theirs: list = []
    assert [_apply(ours, op, seen_ours) for op in ops] == [
        _apply(theirs, op, seen_theirs) for op in ops]
    assert seen_ours == seen_theirs  # callbacks: run as often, and with the same view
    assert (ours._state, ours._result) == (theirs._state, theirs._result)
    assert isinstance(ours, Future)


@pytest.mark.parametrize("how", ["result", "exception", "wait", "as_completed", "callback"])
def test_a_waiter_arriving_around_the_settlement_is_always_woken(how):
    rng = random.Random(7)
    futures = [PoolFuture() for _ in range(3000)]
    go = threading.Barrier(2)

    def settle() -> None:
        go.wait()
        for i, fut in enumerate(futures):
            assert fut.set_running_or_notify_cancel()
            if rng.random() < 0.05:
                threading.Event().wait(0)  # yield the GIL at random points
            if i % 2:
                fut.set_result(i)
            else:
                fut.set_exception(KeyError(i))

    setter = threading.Thread(target=settle)
    setter.start()
    go.wait()
    got = []
    try:
        if how == "wait":
            for fut in futures:
                done, _ = wait([fut], timeout=10, return_when=FIRST_COMPLETED)
                assert done == {fut}
                got.append(fut.exception(0) is None)
        elif how == "as_completed":
            got = [f.exception(0) is None for f in as_completed(futures, timeout=30)]
        elif how == "callback":
            events = [threading.Event() for _ in futures]
            for fut, event in zip(futures, events, strict=True):
                fut.add_done_callback(lambda f, e=event: e.set())
            for event in events:
                assert event.wait(10)
            got = [f.exception(0) is None for f in futures]
        else:
            for fut in futures:
                if how == "result":
                    try:
                        fut.result(timeout=10)
                        got.append(True)
                    except KeyError:
                        got.append(False)
                else:
                    got.append(fut.exception(timeout=10) is None)
    finally:
        setter.join(30)
    assert sorted(got) == sorted(bool(i % 2) for i in range(len(futures)))


def test_a_cancelled_future_is_never_run():
    fut = PoolFuture()
    assert fut.cancel() and fut.cancelled() and fut.done()
    assert fut.set_running_or_notify_cancel() is False
    with pytest.raises(Exception, match="CANCELLED"):
        fut.set_result(1)  # InvalidStateError, as a standard future
