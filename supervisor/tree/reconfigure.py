"""Applying a reload inside one supervisor process: its new spec, step by step.

    service root (a Reload)            child supervisor (an ApplySpec from its parent)
        └─ Reconfigure.apply(new, base) ─┬─ adopt: strategy, intensity, matrix, template
                                         ├─ removals, reverse start order: stop, delete
                                         ├─ in the file's order:
                                         │    added    start (unless autostart = false)
                                         │    changed  stop (old grace), start the new spec
                                         │    updated  ApplySpec down to that supervisor,
                                         │             wait for its outcomes (recursion)
                                         └─ the child list put in the file's order

Everything is synchronous, as a start is in OTP: the loop handles nothing else until the
plan is applied, so no exit is decided halfway through (an exit meanwhile is reaped and
decided afterwards, under the new spec). A child that fails to start stays listed,
stopped, with its new spec: the failure is reported in its outcome (and as the usual
`start_failed` event), never counted against intensity, never retried on its own: a
reload must not make a running tree give up. `start PATH` tries it again. Children the
file never declared (`start_child`, simple_one_for_one's, a pool's overflow workers) are
left as they run, after the file's children.
"""

from __future__ import annotations

import itertools
import pickle
import selectors
import sys
import types
from collections.abc import Callable
from typing import Any

import msgspec

from ..specs import SupervisorSpec
from ..wire import messages as P
from ..wire.framing import send_frame
from ..wire.reload import (
    ADDED,
    APPLIED,
    CHANGED,
    FAILED,
    NOT_STARTED,
    REMOVED,
    STARTED,
    STOPPED,
    UPDATED,
    Outcome,
)
from .children import Children, child_matrix
from .launch import drain
from .recovery import Recovery
from .reload import Step, level
from .slot import ChildSlot, ChildState
from .uplink import Uplink

__all__ = ["Reconfigure"]

# Request ids of ApplySpec are negative: the ids `Children.forward` hands out count up
# from 1, so an answer to a request forwarded through this channel is never taken for
# the answer to an ApplySpec.
_ids = itertools.count(-1, -1)


class Reconfigure:
    """The reloads of the supervisor at `path`. `adopt(spec, matrix)` makes `spec` the
    supervisor's own (its strategy, intensity, template, error matrix from the base
    `matrix`); `current()` is the spec it runs now."""

    def __init__(self, path: str, children: Children, recovery: Recovery, uplink: Uplink,
                 adopt: Callable[[Any, Any], None], current: Callable[[], Any]) -> None:
        self.path = path
        self.children = children
        self.recovery = recovery
        self.uplink = uplink
        self.adopt = adopt
        self.current = current

    def apply(self, new: SupervisorSpec, base: Any) -> list[Outcome]:
        """Apply `new` (same identity as the running spec; `base` the error matrix its
        parent gives it); the outcome of every step, this supervisor's and those below."""
        steps = level(self.current(), new)
        self.adopt(new, base)
        outcomes: list[Outcome] = []
        for step in steps.steps:
            outcomes.extend(self._step(step))
        outcomes.extend(self._refresh(steps.steps))
        self._reorder(steps.order)
        return outcomes

    def handle(self, msg: P.ApplySpec, origin: Any) -> None:
        """An ApplySpec from the parent: apply it, answer with the outcomes."""
        for entry in msg.paths:  # the tree's `directory`, to unpickle its worker classes
            if entry not in sys.path:
                sys.path.append(entry)
        try:
            spec, matrix = pickle.loads(msg.spec)
        except Exception as exc:  # a class that no longer imports here, or a bad blob
            self.uplink.reply_error(origin, msg.id, "ConfigError",
                                    f"spec: cannot decode it ({type(exc).__name__}: {exc})",
                                    field="spec")
            return
        running = self.current()
        if type(spec) is not type(running) or spec.id != running.id:
            self.uplink.reply_error(origin, msg.id, "ConfigError",
                                    f"spec: expected a new spec for {running.id!r}, got "
                                    f"{type(spec).__name__} {getattr(spec, 'id', None)!r}",
                                    field="spec")
            return
        outcomes = self.apply(spec, types.MappingProxyType(matrix))
        self.uplink.relay(origin, P.Response(id=msg.id, value=outcomes))

    # ------------------------------------------------------------------ the steps
    def _step(self, step: Step) -> list[Outcome]:
        slot = self.children.find(step.id)
        if step.action == REMOVED:
            if slot is None:
                return []  # gone already (a temporary child that exited, a deleted one)
            pid = self._discard(slot)
            self.uplink.emit("child_removed", slot, group="reload", pid=pid)
            return [Outcome(REMOVED, slot.path, STOPPED)]
        if step.action == UPDATED and slot is not None and slot.kind == "supervisor":
            return self._update(slot, step)
        old_pid = None
        if slot is not None:
            if step.action == ADDED and slot.spec == step.spec:
                # A child started at run time that the file now declares as it is.
                return [Outcome(ADDED, slot.path, STARTED, pid=slot.pid)]
            old_pid = self._discard(slot)
        return [self._start(step, old_pid)]

    def _discard(self, slot: ChildSlot) -> int | None:
        """Stop `slot` (its own shutdown grace) and delete it; the pid it had."""
        pid = slot.pid
        slot.cancel_timers()  # a scheduled restart or circuit trial is void
        self.recovery.awaiting.pop(slot, None)
        self.children.stop(slot, "shutdown")
        self.children.remove(slot)
        return pid

    def _start(self, step: Step, old_pid: int | None) -> Outcome:
        """A new slot for `step.spec`, started unless the file says autostart = false."""
        slot = self.children.new_slot(step.spec)
        self.children.add(slot)
        action = ADDED if step.action == ADDED else CHANGED
        name = "child_added" if action == ADDED else "child_changed"
        facts = {"fields": list(step.fields), "old_pid": old_pid} if action == CHANGED else {}
        if not getattr(step.spec, "autostart", True):
            self.uplink.emit(name, slot, group="reload", result=NOT_STARTED, **facts)
            return Outcome(action, slot.path, NOT_STARTED)
        failure = self.children.start(slot)
        if failure is None:
            self.uplink.emit(name, slot, group="reload", result=STARTED, **facts)
            return Outcome(action, slot.path, STARTED, pid=slot.pid)
        message = f"{failure.category}: {failure.type}: {failure.message}"
        self.uplink.emit(name, slot, group="reload", result=FAILED, reason=failure.type,
                         category=failure.category, message=message, **facts)
        return Outcome(action, slot.path, FAILED, message=message)

    def _update(self, slot: ChildSlot, step: Step) -> list[Outcome]:
        """A supervisor child that stays: its parent-side fields (restart, shutdown,
        significant) apply here at once; the rest inside it, while it runs, or at its next
        start when it is down."""
        slot.spec = step.spec
        slot.matrix = child_matrix(self.children.matrix, step.spec)
        facts = {"fields": list(step.fields)}
        if slot.pid is None or slot.state is not ChildState.RUNNING:
            self.uplink.emit("supervisor_updated", slot, group="reload", result=APPLIED,
                             **facts)
            return [Outcome(UPDATED, slot.path, APPLIED,
                            message=f"not running ({slot.state}); its next start uses "
                                    "the new spec")]
        below = self._apply_below(slot)
        failed = next((o for o in below if o.path == slot.path and o.result == FAILED), None)
        result = FAILED if failed is not None else APPLIED
        self.uplink.emit("supervisor_updated", slot, group="reload", result=result,
                         message=failed.message if failed else None, **facts)
        if failed is not None:
            return below
        return [Outcome(UPDATED, slot.path, APPLIED, pid=slot.pid), *below]

    def _refresh(self, steps: tuple[Step, ...]) -> list[Outcome]:
        """Children that stay as they are get the error matrix of the new spec (the rows
        of this supervisor or an ancestor may have changed). A running supervisor among
        them is told, so its own children get it too."""
        touched = {step.id for step in steps}
        outcomes: list[Outcome] = []
        for slot in list(self.children.slots):
            if slot.id in touched:
                continue
            matrix = child_matrix(self.children.matrix, slot.spec)
            if matrix == slot.matrix:
                continue
            slot.matrix = matrix
            if slot.kind == "supervisor" and slot.pid is not None \
                    and slot.state is ChildState.RUNNING:
                outcomes.extend(self._apply_below(slot))
        return outcomes

    def _reorder(self, order: tuple[str, ...]) -> None:
        """The file's children in the file's order (what rest_for_one goes by), then the
        children it never declared, in their start order."""
        slots = self.children.slots
        position = {child_id: index for index, child_id in enumerate(order)}
        declared = sorted((s for s in slots if s.id in position), key=lambda s: position[s.id])
        slots[:] = declared + [s for s in slots if s.id not in position]

    # ------------------------------------------------------------------ one level down
    def _apply_below(self, slot: ChildSlot) -> list[Outcome]:
        """Send the child supervisor its new spec and wait for its outcomes (the answer
        comes once it applied everything below it)."""
        rid = next(_ids)
        blob = pickle.dumps((slot.spec, dict(slot.matrix)))
        try:
            send_frame(slot.ctrl, P.CONTROL_CODEC.encode(
                P.ApplySpec(id=rid, spec=blob, paths=list(sys.path))))
        except OSError as exc:  # it is leaving; its exit is reaped and decided as usual
            return [Outcome(UPDATED, slot.path, FAILED, message=f"cannot reach it: {exc}")]
        answer = self._await_answer(slot, rid)
        match answer:
            case P.Response(value=value):
                return msgspec.convert(value, list[Outcome])
            case P.ErrorResponse(kind=kind, message=message):
                return [Outcome(UPDATED, slot.path, FAILED, message=f"{kind}: {message}")]
            case _:
                return [Outcome(UPDATED, slot.path, FAILED,
                                message="it exited before it answered; its exit is handled "
                                        "as any other (the new spec is its spec)")]

    def _await_answer(self, slot: ChildSlot, rid: int) -> Any:
        """Read the child's channel until the answer to `rid` arrives (None at EOF); its
        other messages (events, answers to forwarded requests) are handled as usual."""
        answer: list[Any] = []

        def on_message(child: ChildSlot, msg: Any) -> None:
            if isinstance(msg, P.Response | P.ErrorResponse) and msg.id == rid:
                answer.append(msg)
            else:
                self.children.on_message(child, msg)

        # PollSelector needs no fd of its own (see launch.wait_exit).
        selector = selectors.PollSelector()
        selector.register(slot.ctrl, selectors.EVENT_READ)
        try:
            while not answer:
                selector.select()
                if drain(slot, on_message):
                    break  # EOF: the loop's reader sees it too and reaps the child
        finally:
            selector.close()
        return answer[0] if answer else None
