"""Requests a supervisor answers: routing down the tree, and OTP's child-management calls.

A request names a target supervisor by path relative to the receiver ("" is the receiver
itself). A request for a descendant is forwarded to the child supervisor on the way, which
answers back through the same chain. `OpenChannel` names a worker and carries one end of a
socketpair: the worker's supervisor hands it to the worker, which then serves that caller
directly.
"""

from __future__ import annotations

import itertools
import os
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from ..wire import messages as P
from .health import fail_running
from .slot import ChildSlot

if TYPE_CHECKING:
    from .process import SupervisorProcess

__all__ = ["handle_request"]


def handle_request(sup: SupervisorProcess, msg: Any, origin: socket.socket,
                   fd: int | None) -> None:
    match msg:
        case P.Stop():
            sup.shutdown("shutdown")
        case P.Ping(seq=seq):
            sup._relay(origin, P.Pong(seq=seq))
        case P.Shutdown(id=rid):
            sup._relay(origin, P.Response(id=rid, value=None))
            sup.shutdown("normal")
        case P.OpenChannel():
            _route(sup, msg, origin, fd, to_worker=True)
        case P.WhichChildren() | P.CountChildren() | P.GetStatus() | P.StartChild() | \
                P.TerminateChild() | P.RestartChild() | P.DeleteChild() | P.ReportFailure():
            _route(sup, msg, origin, None, to_worker=False)
        case _:
            if fd is not None:
                os.close(fd)


def _route(sup: SupervisorProcess, msg: Any, origin: socket.socket, fd: int | None,
           *, to_worker: bool) -> None:
    if not msg.path:
        if to_worker:
            os.close(fd) if fd is not None else None
            sup._reply_error(origin, msg.id, "NoSuchChild",
                             f"{sup.path or 'the root'} is a supervisor; calls go to workers",
                             path=sup.path)
            return
        _local(sup, msg, origin)
        return
    first, _, rest = msg.path.partition("/")
    slot = sup.find_slot(first)
    full = f"{sup.path}/{msg.path}" if sup.path else msg.path
    error = None
    if slot is None:
        error = ("NoSuchChild", f"no child {full!r}")
    elif to_worker and not rest and slot.kind == "supervisor":
        error = ("NoSuchChild", f"{full!r} is a supervisor; calls go to workers")
    elif to_worker and not rest and hasattr(slot.spec, "command"):
        error = ("NoSuchChild", f"{full!r} is an external program; it takes no calls")
    elif not to_worker and slot.kind != "supervisor":
        error = ("NoSuchChild", f"{slot.path!r} is a worker, not a supervisor")
    elif rest and slot.kind != "supervisor":
        error = ("NoSuchChild", f"no child {full!r}: {slot.path!r} is a worker")
    elif slot.state == "circuit_open":
        error = ("CircuitOpen", f"the circuit of {slot.path!r} is open after "
                 f"{slot.failures} failures; next trial at {_clock(slot.retry_at)}")
    elif slot.pid is None or slot.state != "running":
        error = ("NotRunning", f"{slot.path!r} is not running (state {slot.state})")
    if error is not None:
        if fd is not None:
            os.close(fd)
        fields = {"path": full, "state": slot.state if slot is not None else None}
        if slot is not None:
            fields["retry_at"] = slot.retry_at
            fields["fallback"] = getattr(slot.spec, "fallback", None)
        sup._reply_error(origin, msg.id, error[0], error[1], **fields)
        return
    sup.forward(slot, msgspec.structs.replace(msg, path=rest), origin, msg.id, fd)


def _clock(when: float | None) -> str:
    if when is None:
        return "unknown"
    return time.strftime("%H:%M:%S", time.localtime(when)) + f" (in {when - time.time():.1f}s)"


def _local(sup: SupervisorProcess, msg: Any, origin: socket.socket) -> None:
    try:
        value = _LOCAL[type(msg)](sup, msg)
    except _Refused as exc:
        sup._reply_error(origin, msg.id, exc.kind, exc.message, **exc.fields)
        return
    sup._relay(origin, P.Response(id=msg.id, value=value))


class _Refused(Exception):
    def __init__(self, kind: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fields = fields


def _which(sup: SupervisorProcess, msg: Any) -> list[P.ChildInfo]:
    return [slot.info() for slot in sup.children]


def _count(sup: SupervisorProcess, msg: Any) -> dict[str, int]:
    return {
        "specs": len(sup.children),
        "active": sum(1 for s in sup.children if s.state == "running"),
        "supervisors": sum(1 for s in sup.children if s.kind == "supervisor"),
        "workers": sum(1 for s in sup.children if s.kind == "worker"),
    }


def _status(sup: SupervisorProcess, msg: Any) -> dict[str, Any]:
    spec = sup.spec
    return {
        "id": spec.id,
        "path": sup.path,
        "pid": os.getpid(),
        "strategy": spec.strategy,
        "max_restarts": spec.max_restarts,
        "max_seconds": spec.max_seconds,
        "recent_restarts": sup.intensity.count(),
        "recovery": dict(sup.metrics),
        "pool": ({"size": spec.size, "max_overflow": spec.max_overflow,
                  "checkout_timeout": spec.checkout_timeout}
                 if getattr(spec, "worker_template", None) is not None else None),
        "children": [slot.info() for slot in sup.children],
    }


def _find(sup: SupervisorProcess, child_id: str) -> ChildSlot:
    slot = sup.find_slot(child_id)
    if slot is None:
        where = sup.path or "the root"
        raise _Refused("NoSuchChild", f"{where} has no child {child_id!r}",
                       path=f"{sup.path}/{child_id}" if sup.path else child_id)
    return slot


def _start_child(sup: SupervisorProcess, msg: Any) -> str:
    spec = sup.spec
    if spec.max_children is not None and len(sup.children) >= spec.max_children:
        raise _Refused("PoolExhausted", f"max_children ({spec.max_children}) reached",
                       path=sup.path)
    if msg.spec is None and getattr(spec, "worker_template", None) is not None:
        # A pool's overflow worker: the next free index after the pool's own.
        taken = {slot.id for slot in sup.children}
        index = next(i for i in itertools.count(spec.size) if f"{spec.id}-{i}" not in taken)
        child_spec = attrs.evolve(spec.worker_template, id=f"{spec.id}-{index}")
    elif spec.strategy == "simple_one_for_one":
        template = spec.template
        child_spec = attrs.evolve(
            template, id=f"{template.id}-{next(sup._dynamic)}",
            args=tuple(template.args) + tuple(msg.args),
            kwargs={**template.kwargs, **(msg.kwargs or {})},
        )
    else:
        if msg.spec is None:
            raise _Refused("ConfigError", "start_child needs a spec for a "
                           f"{spec.strategy} supervisor", field="spec")
        child_spec = sup.spec_blob(msg.spec)
        if sup.find_slot(child_spec.id) is not None:
            raise _Refused("ConfigError", f"duplicate child id {child_spec.id!r}", field="id")
    slot = ChildSlot(spec=child_spec,
                     path=f"{sup.path}/{child_spec.id}" if sup.path else child_spec.id)
    sup.children.append(slot)
    failure = sup.start_slot(slot)
    if failure is not None:
        sup.children.remove(slot)
        raise _start_refused(failure)
    return child_spec.id


def _start_error_text(failure: Any) -> str:
    return (f"child {failure.path!r} failed to start ({failure.category}): "
            f"{failure.type}: {failure.message}")


def _terminate_child(sup: SupervisorProcess, msg: Any) -> None:
    slot = _find(sup, msg.child_id)
    slot.cancel_timers()  # a scheduled restart or circuit trial is void once terminated
    slot.circuit, slot.retry_at, slot.failures = "closed", None, 0
    sup.stop_slot(slot, "shutdown")
    if sup.spec.strategy == "simple_one_for_one" or slot.spec.restart == "temporary":
        sup.children.remove(slot)


def _stopped_child(sup: SupervisorProcess, msg: Any, operation: str) -> ChildSlot:
    """The stopped child `restart_child` / `delete_child` acts on (as in OTP, neither
    applies to simple_one_for_one children nor to a running child)."""
    slot = _find(sup, msg.child_id)
    if sup.spec.strategy == "simple_one_for_one":
        raise _Refused("WorkerError", f"{operation} is not supported by simple_one_for_one",
                       path=slot.path)
    if slot.pid is not None:
        raise _Refused("WorkerError", f"{slot.path!r} is running", path=slot.path)
    return slot


def _start_refused(failure: Any) -> _Refused:
    return _Refused("StartError", _start_error_text(failure), path=failure.path,
                    category=failure.category, remote_type=failure.type,
                    remote_message=failure.message, remote_traceback=failure.traceback)


def _restart_child(sup: SupervisorProcess, msg: Any) -> int | None:
    slot = _stopped_child(sup, msg, "restart_child")
    failure = sup.start_slot(slot)
    if failure is not None:
        raise _start_refused(failure)
    return slot.pid


def _delete_child(sup: SupervisorProcess, msg: Any) -> None:
    sup.children.remove(_stopped_child(sup, msg, "delete_child"))


def _report_failure(sup: SupervisorProcess, msg: Any) -> None:
    slot = _find(sup, msg.child_id)
    # The caller saw it fail (a timed-out call): its state is unknown, so no grace.
    fail_running(sup, slot, msg.category, msg.reason, graceful=False)


_LOCAL = {
    P.WhichChildren: _which,
    P.CountChildren: _count,
    P.GetStatus: _status,
    P.StartChild: _start_child,
    P.TerminateChild: _terminate_child,
    P.RestartChild: _restart_child,
    P.DeleteChild: _delete_child,
    P.ReportFailure: _report_failure,
}
