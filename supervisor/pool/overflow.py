"""Overflow workers: started when every pool worker is busy, retired once idle.

    every usable slot busy ──maybe_grow──▶ a thread: app.start_child(pool) ─▶ new Slot
    an overflow slot's load drops to 0 ──note_idle──▶ a timer at idle_since + retire_after
    the timer finds it still idle (no load, no session) ──▶ a thread: terminate + delete

Nothing polls: retirement is one timer per idle period of an overflow worker, on the pool's
timer thread (started when a timer is due, gone when none is). Starting and stopping a
worker are control requests that take milliseconds (or the worker's shutdown grace), so
they run on short-lived threads, never under the pool's lock nor on the timer thread.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .. import telemetry
from ..errors import SupervisorError
from .sessions import has_sessions

if TYPE_CHECKING:
    from .core import PoolCore, Slot

__all__ = ["Timers", "maybe_grow", "note_idle"]


class Timers:
    """Callbacks at monotonic times, run in order on one thread that exists only while
    a callback is due (a condition wait until the earliest one, never a polling loop)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.cond = threading.Condition(threading.Lock())
        self.heap: list[tuple[float, int, Callable[[], Any]]] = []
        self.seq = itertools.count()
        self.running = False

    def call_at(self, when: float, fn: Callable[[], Any]) -> None:
        with self.cond:
            heapq.heappush(self.heap, (when, next(self.seq), fn))
            if self.running:
                self.cond.notify()
                return
            self.running = True
        threading.Thread(target=self._run, name=self.name, daemon=True).start()

    def call_later(self, delay: float, fn: Callable[[], Any]) -> None:
        self.call_at(time.monotonic() + delay, fn)

    def call_soon(self, fn: Callable[[], Any]) -> None:
        self.call_at(time.monotonic(), fn)

    def _run(self) -> None:
        with self.cond:
            while self.heap:
                when, _, fn = self.heap[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self.cond.wait(delay)
                    continue
                heapq.heappop(self.heap)
                self.cond.release()
                try:
                    fn()
                except Exception:  # a failing callback must not stop the timers after it
                    from loguru import logger

                    logger.exception("pool timer callback {!r} failed", fn)
                finally:
                    self.cond.acquire()
            self.running = False


def maybe_grow(core: PoolCore) -> None:
    """Every usable worker is busy: start an overflow worker if allowed (under lock).

    One start at a time; none while every worker is down (restarting is not busy, and
    more workers would only crash alike); none for `retire_after` s after a failed start.
    """
    if core.growing or core.gone or core.max_overflow <= 0:
        return
    if time.monotonic() < core.grow_after:
        return
    if sum(1 for s in core.slots if s.overflow) >= core.max_overflow:
        return
    if not any(core.usable(s) for s in core.slots):
        return
    core.growing = True
    threading.Thread(target=_grow, args=(core,), daemon=True,
                     name=f"pool-grow-{core.path}").start()


def _grow(core: PoolCore) -> None:
    try:
        child_id = core.app.start_child(core.path)
    except SupervisorError as exc:
        from loguru import logger

        logger.warning("pool {!r}: could not start an overflow worker: {}", core.path, exc)
        with core.lock:
            core.growing = False
            core.grow_after = time.monotonic() + core.retire_after
        return
    slot = core.new_slot(child_id, overflow=True)
    with core.lock:
        core.add_slot(slot)
        core.growing = False
        plans = core.refresh()
        note_idle(core, slot)
    _emit("overflow_started", core, slot)
    core.run((), plans)


def note_idle(core: PoolCore, slot: Slot) -> None:
    """An overflow slot may have gone idle: arm its retirement timer (under lock)."""
    if not slot.overflow or slot.load or slot.retiring:
        return
    slot.idle_since = time.monotonic()
    if not slot.retire_timer:
        # One timer per idle period: a slot busy again in between is seen when it fires.
        slot.retire_timer = True
        core.timers.call_at(slot.idle_since + core.retire_after,
                            lambda: _retire_check(core, slot))


def _retire_check(core: PoolCore, slot: Slot) -> None:
    from .io import lose_link  # here: _pool_io imports this module

    with core.lock:
        slot.retire_timer = False
        if slot.retiring or slot not in core.slots or slot.load or has_sessions(core, slot):
            return  # busy again (its next idle period arms a new timer), or pinned
        due = slot.idle_since + core.retire_after
        if due > time.monotonic():  # it was busy in between: wait out its new idle period
            slot.retire_timer = True
            core.timers.call_at(due, lambda: _retire_check(core, slot))
            return
        slot.retiring = True  # no call is dispatched to it from here on
        link = slot.link
        lost = lose_link(core, link, "the overflow worker retired") if link else []
    core.run(lost, ())
    threading.Thread(target=_retire, args=(core, slot), daemon=True,
                     name=f"pool-retire-{slot.id}").start()


def _retire(core: PoolCore, slot: Slot) -> None:
    try:
        core.app.terminate_child(core.path, slot.id)
        core.app.delete_child(core.path, slot.id)
    except SupervisorError as exc:  # gone already (the tree stops, or someone deleted it)
        from loguru import logger

        logger.debug("pool {!r}: retiring {!r}: {}", core.path, slot.id, exc)
    finally:
        with core.lock:
            if slot in core.slots:
                core.slots.remove(slot)  # by identity: a new slot may reuse the id
    _emit("overflow_retired", core, slot)


def _emit(name: str, core: PoolCore, slot: Slot) -> None:
    telemetry.execute(("supervisor", "pool", name), {"time": time.time()}, {
        "path": slot.path, "id": slot.id, "pool": core.path, "pid": None,
        "reason": name, "category": None})
