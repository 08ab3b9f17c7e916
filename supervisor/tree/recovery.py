"""How a supervisor handles a child that exited: the steps of the error matrix, over
`strategies/`.

    exit ─▶ handle_exit: restart type (OTP's do_restart truth table)
              ├─ not restarted: stopped / removed (temporary); significant -> auto_shutdown
              ├─ clean exit of a permanent child: counted restart, no matrix
              └─ failure ─▶ on_failure: consecutive count (reset after stable_after),
                              intensity counted (exceeded ─▶ give_up), then
                              `strategies.recovery.next_step` and `contain`:
                                restart (now, or on a loop timer) ─▶ restart_group
                                open_circuit ─▶ trial after circuit_timeout ─▶ closed
                                abandon ─▶ this child stays down (`abandoned`); once no
                                           child is left to run ─▶ children_abandoned
                                escalate (the row's on_exhausted="escalate") ─▶ give_up

Intensity is the one reason a supervisor gives up because of its children (OTP); the
matrix gives up on a child, not on its siblings, unless its row opts in to escalate.

A restart that fails to start is itself a failure of that child and comes back through
`on_failure` from the loop (OTP's try_again), so requests and other children's events are
handled in between. Nothing here sleeps: delays are loop timers.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from loguru import logger

from strategies.intensity import RestartIntensity
from strategies.matrix import classify
from strategies.recovery import Action, contain, next_step
from strategies.restart import plan_restart, should_restart

from .children import Children
from .loop import Loop
from .slot import ChildSlot, ChildState
from .uplink import Uplink

__all__ = ["Recovery", "STABLE_AFTER", "CIRCUIT_TIMEOUT", "INTENSITY"]

INTENSITY = "reached_max_restart_intensity"

# A child supervisor has no `stable_after` / `circuit_timeout` of its own (those are
# worker fields); it gets the worker defaults.
STABLE_AFTER = 5.0
CIRCUIT_TIMEOUT = 60.0


def stable_after(spec: object) -> float:
    return getattr(spec, "stable_after", STABLE_AFTER)


class Recovery:
    """What one supervisor does about its children's exits. `shutdown(detail)` stops the
    supervisor (it gives up, or auto_shutdown ends it); `metrics` are its recovery counts
    (initiated, succeeded, failed)."""

    def __init__(self, spec: Any, children: Children, uplink: Uplink, loop: Loop,
                 shutdown: Callable[[str], None], *, root: bool) -> None:
        self.spec = spec
        self.children = children
        self.uplink = uplink
        self.loop = loop
        self.shutdown = shutdown
        self.root = root
        self.intensity = RestartIntensity(spec.max_restarts, spec.max_seconds)
        self.metrics = {"initiated": 0, "succeeded": 0, "failed": 0}
        # Restarted programs not up yet (within their start_seconds): target -> (its pid,
        # the child whose recovery completes once every such target of it is up).
        self.awaiting: dict[ChildSlot, tuple[int | None, ChildSlot]] = {}
        children.on_up = self.on_up

    def give_up(self, slot: ChildSlot, why: str) -> None:
        """The supervisor stops its children and exits with `why` as its detail: intensity
        exceeded, a row that escalates (``escalated:<category>``), or nothing left to run
        (``children_abandoned``)."""
        self.metrics["failed"] += 1
        self.uplink.emit("gave_up", slot, reason=why)
        if why == INTENSITY:
            self.uplink.emit("exceeded", slot, group="intensity", reason=why)
        logger.warning("supervisor {!r} gives up ({}) after a failure of {}",
                       self.uplink.path or self.spec.id, why, slot.path)
        self.shutdown(why)

    def abandon(self, slot: ChildSlot, category: str, detail: str, **decision: Any) -> None:
        """The matrix gave up on `slot`: it stays down, its siblings run on. A supervisor
        left with nothing to run (every child abandoned: none running, restarting, waiting
        on a circuit trial, or stopped by an operator) gives up: ``children_abandoned``."""
        why = f"{category} on {slot.failures} consecutive failure(s); last: {detail}"
        slot.abandon(category, why)
        self.metrics["failed"] += 1
        self.uplink.emit("abandoned", slot, category=category, reason=why, **decision)
        logger.warning("{} abandoned ({}); its siblings keep running; `start {}` revives it",
                       slot.path, why, slot.path)
        if self.nothing_left_to_run():
            self.give_up(slot, "children_abandoned")

    def nothing_left_to_run(self) -> bool:
        # Strictly every child: one an operator stopped is theirs to start again, and a
        # supervisor keeps serving their requests meanwhile.
        slots = self.children.slots
        return bool(slots) and all(s.state is ChildState.ABANDONED for s in slots)

    def handle_exit(self, slot: ChildSlot, reason: str, category: str | None,
                    recycled: bool, detail: str = "") -> None:
        """Step 1: the restart type decides whether the child is restarted at all."""
        self.awaiting.pop(slot, None)  # a restarted program that died before it was up
        if recycled and slot.spec.restart != "temporary":
            # max_calls reached: a planned replacement, not a restart (no intensity).
            self.restart_group(slot)
            return
        if not should_restart(slot.spec.restart, reason):
            # OTP's del_child: a temporary child, or any child of a simple_one_for_one
            # supervisor (it has no spec of its own to keep), is forgotten; any other keeps
            # its spec, stopped, for restart_child / delete_child.
            if slot.spec.restart == "temporary" or self.spec.strategy == "simple_one_for_one":
                self.children.remove(slot)
            else:
                slot.become(ChildState.STOPPED)
            if slot.spec.significant:
                self.check_auto_shutdown()
            return
        if classify(reason) is None:
            # A clean exit of a permanent child: OTP restarts it; not a failure.
            if self.intensity.record():
                self.give_up(slot, INTENSITY)
                return
            self.restart_group(slot)
            return
        self.on_failure(slot, category or str(classify(reason)), detail)

    def on_failure(self, slot: ChildSlot, category: str, detail: str = "") -> None:
        """Steps 2 and 3 for a failure of `slot`: count it, then take the matrix's step."""
        if slot.trial:
            self.open_circuit(slot)  # the trial failed before it was stable
            return
        if slot.last_run >= stable_after(slot.spec):
            slot.failures = 0  # it ran long enough to count as healthy: start over
        slot.failures += 1
        self.metrics["initiated"] += 1
        if self.intensity.record():
            self.give_up(slot, INTENSITY)
            return
        # "Every child down at once" counts the children the supervisor still runs: an
        # abandoned sibling is not hit by this failure.
        live = [s for s in self.children.slots if s.state is not ChildState.ABANDONED]
        all_down = len(live) > 1 and all(s.pid is None for s in live)
        step = next_step(category, slot.failures, affecting_all=all_down, matrix=slot.matrix)
        action = contain(step, slot.matrix)
        d = step.decision
        decision = {"severity": str(d.severity), "recovery": str(d.recovery),
                    "attempt": slot.failures, "action": str(action)}
        self.uplink.emit("failure", slot, category=category, delay=step.delay, **decision)
        if action is Action.restart:
            if step.delay <= 0:
                self.restart_group(slot)
                return
            slot.become(ChildState.RESTARTING)
            self.uplink.emit("restart_scheduled", slot, category=category, delay=step.delay,
                             attempt=slot.failures)
            slot.restart_timer = self.loop.call_later(step.delay,
                                                      lambda: self.restart_group(slot))
        elif action is Action.open_circuit:
            self.open_circuit(slot)
        elif action is Action.abandon:
            self.abandon(slot, category, detail or category, **decision)
        else:  # the row's on_exhausted="escalate": the supervisor gives up (OTP's way)
            self.give_up(slot, f"escalated:{category}")

    def restart_group(self, slot: ChildSlot) -> None:
        """Restart `slot` with the siblings its strategy names (stop, remove, start)."""
        slot.restart_timer = None
        children = self.children
        if children.closing or slot not in children.slots:
            return
        slots = children.slots
        plan = plan_restart(
            self.spec.strategy, [s.id for s in slots], slot.id,
            temporary=[s.id for s in slots if s.spec.restart == "temporary"],
            running=[s.id for s in slots if s.pid is not None],
        )
        for child_id in plan.stop:
            children.stop(children.find(child_id), "shutdown")
        for child_id in plan.remove:
            removed = children.find(child_id)
            if removed is not None and removed.pid is None:
                children.remove(removed)
        for child_id in plan.start:
            target = children.find(child_id)
            if target is None or target.pid is not None \
                    or target.state in (ChildState.CIRCUIT_OPEN, ChildState.ABANDONED):
                continue
            target.restarts += 1
            failure = children.start(target)
            if failure is None and target.settling:
                self.awaiting[target] = (target.pid, slot)  # `restarted` once it is up
                continue
            if failure is not None:
                target.become(ChildState.RESTARTING)
                self.metrics["failed"] += 1
                logger.warning("restart of {} failed ({}: {})", target.path, failure.type,
                               failure.message)
                detail = f"start failed: {failure.type}: {failure.message}"
                self.loop.call_soon(
                    lambda t=target, c=failure.category, d=detail: self.on_failure(t, c, d))
                return
            self.uplink.emit("restarted", target)
        self.complete_if_up(slot)

    def on_up(self, target: ChildSlot) -> None:
        """A restarted program ran its start_seconds: it is back."""
        pid, failed = self.awaiting.pop(target, (None, None))
        if failed is None or pid != target.pid:
            return  # not a restart (a first start, an operator's), or an older process
        self.uplink.emit("restarted", target)
        self.complete_if_up(failed)

    def complete_if_up(self, slot: ChildSlot) -> None:
        """`recovery.complete` for `slot` once every child its restart started is up."""
        if any(failed is slot for _, failed in self.awaiting.values()):
            return
        self.metrics["succeeded"] += 1
        self.uplink.emit("complete", slot, group="recovery", result="succeeded")

    # ------------------------------------------------------------------ circuits
    def open_circuit(self, slot: ChildSlot) -> None:
        timeout = getattr(slot.spec, "circuit_timeout", CIRCUIT_TIMEOUT)
        slot.become(ChildState.CIRCUIT_OPEN)
        slot.trial = False
        slot.retry_at = time.time() + timeout
        self.metrics["failed"] += 1
        self.uplink.emit("circuit_opened", slot, retry_at=slot.retry_at,
                         failures=slot.failures)
        slot.restart_timer = self.loop.call_later(timeout, lambda: self.trial(slot))

    def trial(self, slot: ChildSlot) -> None:
        """The half-open trial: one start; closed once it stays up `stable_after`."""
        slot.restart_timer = None
        if self.children.closing or slot not in self.children.slots:
            return
        if self.intensity.record():
            self.give_up(slot, INTENSITY)
            return
        slot.trial = True
        slot.retry_at = None
        self.uplink.emit("circuit_half_open", slot)
        slot.restarts += 1
        failure = self.children.start(slot)
        if failure is not None:
            self.open_circuit(slot)
            return
        pid = slot.pid
        slot.timers.append(self.loop.call_later(stable_after(slot.spec),
                                                lambda: self.close_circuit(slot, pid)))

    def close_circuit(self, slot: ChildSlot, pid: int | None) -> None:
        if slot.pid != pid or not slot.trial:
            return
        slot.close_circuit()
        slot.failures = 0
        self.metrics["succeeded"] += 1
        self.uplink.emit("circuit_closed", slot)
        self.uplink.emit("complete", slot, group="recovery", result="succeeded")

    # ------------------------------------------------------------------ significant
    def check_auto_shutdown(self) -> None:
        significant = [s for s in self.children.slots if s.spec.significant]
        if self.spec.auto_shutdown == "any_significant" or (
            self.spec.auto_shutdown == "all_significant"
            and all(s.pid is None for s in significant)
        ):
            self.shutdown("auto_shutdown")
