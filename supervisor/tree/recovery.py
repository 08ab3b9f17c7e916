"""How a supervisor handles a child that exited: DESIGN.md's steps, over `strategies/`.

    exit ─▶ handle_exit: restart type (OTP's do_restart truth table)
              ├─ not restarted: stopped / removed (temporary); significant -> auto_shutdown
              ├─ clean exit of a permanent child: counted restart, no matrix
              └─ failure ─▶ on_failure: consecutive count (reset after stable_after),
                              intensity counted, then `strategies.recovery.next_step`:
                                restart (now, or on a loop timer) ─▶ restart_group
                                open_circuit ─▶ trial after circuit_timeout ─▶ closed
                                escalate / abandon ─▶ give_up

A restart that fails to start is itself a failure of that child and comes back through
`on_failure` from the loop (OTP's try_again), so requests and other children's events are
handled in between. Nothing here sleeps: delays are loop timers.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from loguru import logger

from strategies.matrix import classify
from strategies.recovery import Action, next_step
from strategies.restart import plan_restart, should_restart

from .slot import ChildSlot

if TYPE_CHECKING:
    from .process import SupervisorProcess

__all__ = ["handle_exit", "on_failure", "restart_group", "give_up"]

# A child supervisor has no `stable_after` / `circuit_timeout` of its own (those are
# worker fields); it gets the worker defaults.
STABLE_AFTER = 5.0
CIRCUIT_TIMEOUT = 60.0


def stable_after(spec: object) -> float:
    return getattr(spec, "stable_after", STABLE_AFTER)


def give_up(sup: SupervisorProcess, slot: ChildSlot, why: str) -> None:
    sup.metrics["failed"] += 1
    sup.emit("gave_up", slot, reason=why)
    sup.emit("exceeded", slot, group="intensity", reason=why)
    logger.warning("supervisor {!r} gives up ({}) after a failure of {}",
                   sup.path or sup.spec.id, why, slot.path)
    sup.shutdown("reached_max_restart_intensity")


def handle_exit(sup: SupervisorProcess, slot: ChildSlot, reason: str, category: str | None,
                 recycled: bool) -> None:
    """Step 1: the restart type decides whether the child is restarted at all."""
    if recycled and slot.spec.restart != "temporary":
        # max_calls reached: a planned replacement, not a restart (no intensity).
        restart_group(sup, slot)
        return
    if not should_restart(slot.spec.restart, reason):
        # OTP's del_child: a temporary child, or any child of a simple_one_for_one
        # supervisor (it has no spec of its own to keep), is forgotten; any other keeps
        # its spec, stopped, for restart_child / delete_child.
        if slot.spec.restart == "temporary" or sup.spec.strategy == "simple_one_for_one":
            sup.children.remove(slot)
        else:
            slot.state = "stopped"
        if slot.spec.significant:
            check_auto_shutdown(sup)
        return
    if classify(reason) is None:
        # A clean exit of a permanent child: OTP restarts it; not a failure.
        if sup.intensity.record():
            give_up(sup, slot, "reached_max_restart_intensity")
            return
        restart_group(sup, slot)
        return
    on_failure(sup, slot, category or str(classify(reason)))

def on_failure(sup: SupervisorProcess, slot: ChildSlot, category: str) -> None:
    """Steps 2 and 3 for a failure of `slot`: count it, then take the matrix's step."""
    if slot.circuit == "half_open":
        open_circuit(sup, slot)  # the trial failed before it was stable
        return
    if slot.last_run >= stable_after(slot.spec):
        slot.failures = 0  # it ran long enough to count as healthy: start over
    slot.failures += 1
    sup.metrics["initiated"] += 1
    if sup.intensity.record():
        give_up(sup, slot, "reached_max_restart_intensity")
        return
    all_down = len(sup.children) > 1 and all(s.pid is None for s in sup.children)
    step = next_step(category, slot.failures, affecting_all=all_down, matrix=slot.matrix)
    d = step.decision
    sup.emit("failure", slot, category=category, severity=str(d.severity),
              recovery=str(d.recovery), attempt=slot.failures, action=str(step.action),
              delay=step.delay)
    if step.action is Action.restart:
        if step.delay <= 0:
            restart_group(sup, slot)
            return
        slot.state = "restarting"
        sup.emit("restart_scheduled", slot, category=category, delay=step.delay,
                  attempt=slot.failures)
        slot.restart_timer = sup.loop.call_later(step.delay,
                                                  lambda: restart_group(sup, slot))
    elif step.action is Action.open_circuit:
        open_circuit(sup, slot)
    else:  # escalate or abandon: the supervisor gives up at once
        give_up(sup, slot, str(step.action))

def restart_group(sup: SupervisorProcess, slot: ChildSlot) -> None:
    """Restart `slot` with the siblings its strategy names (stop, remove, start)."""
    slot.restart_timer = None
    if sup.exit_detail is not None or slot not in sup.children:
        return
    plan = plan_restart(
        sup.spec.strategy, [s.id for s in sup.children], slot.id,
        temporary=[s.id for s in sup.children if s.spec.restart == "temporary"],
        running=[s.id for s in sup.children if s.pid is not None],
    )
    for child_id in plan.stop:
        sup.stop_slot(sup.find_slot(child_id), "shutdown")
    for child_id in plan.remove:
        removed = sup.find_slot(child_id)
        if removed is not None and removed.pid is None:
            sup.children.remove(removed)
    for child_id in plan.start:
        target = sup.find_slot(child_id)
        if target is None or target.pid is not None or target.circuit == "open":
            continue
        target.restarts += 1
        failure = sup.start_slot(target)
        if failure is not None:
            target.state = "restarting"
            sup.metrics["failed"] += 1
            logger.warning("restart of {} failed ({}: {})", target.path, failure.type,
                           failure.message)
            sup.loop.call_soon(lambda t=target, c=failure.category: on_failure(sup, t, c))
            return
        sup.emit("restarted", target)
    sup.metrics["succeeded"] += 1
    sup.emit("complete", slot, group="recovery", result="succeeded")

# ------------------------------------------------------------------ circuits
def open_circuit(sup: SupervisorProcess, slot: ChildSlot) -> None:
    timeout = getattr(slot.spec, "circuit_timeout", CIRCUIT_TIMEOUT)
    slot.state = "circuit_open"
    slot.circuit = "open"
    slot.retry_at = time.time() + timeout
    sup.metrics["failed"] += 1
    sup.emit("circuit_opened", slot, retry_at=slot.retry_at, failures=slot.failures)
    slot.restart_timer = sup.loop.call_later(timeout, lambda: trial(sup, slot))

def trial(sup: SupervisorProcess, slot: ChildSlot) -> None:
    """The half-open trial: one start; closed once it stays up `stable_after`."""
    slot.restart_timer = None
    if sup.exit_detail is not None or slot not in sup.children:
        return
    if sup.intensity.record():
        give_up(sup, slot, "reached_max_restart_intensity")
        return
    slot.circuit = "half_open"
    slot.retry_at = None
    sup.emit("circuit_half_open", slot)
    slot.restarts += 1
    failure = sup.start_slot(slot)
    if failure is not None:
        open_circuit(sup, slot)
        return
    pid = slot.pid
    slot.timers.append(sup.loop.call_later(stable_after(slot.spec),
                                            lambda: close_circuit(sup, slot, pid)))

def close_circuit(sup: SupervisorProcess, slot: ChildSlot, pid: int | None) -> None:
    if slot.pid != pid or slot.circuit != "half_open":
        return
    slot.circuit = "closed"
    slot.failures = 0
    sup.metrics["succeeded"] += 1
    sup.emit("circuit_closed", slot)
    sup.emit("complete", slot, group="recovery", result="succeeded")

# ------------------------------------------------------------------ significant
def check_auto_shutdown(sup: SupervisorProcess) -> None:
    significant = [s for s in sup.children if s.spec.significant]
    if sup.spec.auto_shutdown == "any_significant" or (
        sup.spec.auto_shutdown == "all_significant"
        and all(s.pid is None for s in significant)
    ):
        sup.shutdown("auto_shutdown" if sup.root else "shutdown")
