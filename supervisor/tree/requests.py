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
import pickle
import socket
import time
from typing import TYPE_CHECKING, Any

import attrs
import msgspec

from strategies.matrix import ErrorCategory

from ..errors import ConfigError
from ..specs import ChildSpec, ProgramSpec, SupervisorSpec
from ..wire import messages as P
from .health import fail_running
from .slot import ChildSlot

if TYPE_CHECKING:
    from .process import SupervisorProcess

__all__ = ["handle_request"]

_CATEGORIES = tuple(str(c) for c in ErrorCategory)


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
        case P.OpenChannel() | P.GetMetrics():
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
    # simple_one_for_one: one spec, its template, however many children (OTP; Elixir's
    # DynamicSupervisor counts the children instead).
    simple = sup.spec.strategy == "simple_one_for_one"
    return {
        "specs": 1 if simple else len(sup.children),
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
    # Restarting and stopped children count too (as in OTP and Elixir): they hold a place.
    if spec.max_children is not None and len(sup.children) >= spec.max_children:
        raise _Refused("PoolExhausted", f"max_children ({spec.max_children}) reached",
                       path=sup.path)
    # Validated in full before the child table changes: a refusal leaves no trace.
    slot = sup.new_slot(_dynamic_spec(sup, msg))
    sup.children.append(slot)
    failure = sup.start_slot(slot)
    if failure is not None:
        sup.children.remove(slot)
        raise _start_refused(failure)
    return slot.id


def _dynamic_spec(sup: SupervisorProcess, msg: Any) -> Any:
    """The spec of the child `msg` asks for, checked as OTP checks start_child's argument;
    a bad one is refused with a ConfigError naming the field."""
    spec = sup.spec
    if msg.spec is None and getattr(spec, "worker_template", None) is not None:
        # A pool's overflow worker: the next free index after the pool's own.
        taken = {slot.id for slot in sup.children}
        index = next(i for i in itertools.count(spec.size) if f"{spec.id}-{i}" not in taken)
        return attrs.evolve(spec.worker_template, id=f"{spec.id}-{index}")
    if spec.strategy == "simple_one_for_one":
        if msg.spec is not None:
            raise _Refused("ConfigError", "spec: a simple_one_for_one supervisor makes its "
                           "children from its template; pass args/kwargs instead", field="spec")
        template = spec.template
        try:
            return attrs.evolve(template, id=f"{template.id}-{next(sup._dynamic)}",
                                args=tuple(template.args) + tuple(msg.args),
                                kwargs={**template.kwargs, **(msg.kwargs or {})})
        except ConfigError as exc:
            raise _Refused("ConfigError", str(exc), field=exc.field) from exc
    if msg.spec is None:
        raise _Refused("ConfigError", "start_child needs a spec for a "
                       f"{spec.strategy} supervisor", field="spec")
    if msg.args or msg.kwargs:
        raise _Refused("ConfigError", "args: only a simple_one_for_one supervisor takes "
                       "args/kwargs (its template's are extended); put them in the spec",
                       field="args")
    child_spec = _decode_spec(msg.spec)
    if sup.find_slot(child_spec.id) is not None:
        raise _Refused("ConfigError", f"duplicate child id {child_spec.id!r}", field="id")
    if child_spec.significant and spec.auto_shutdown == "never":
        raise _Refused("ConfigError", "significant: a significant child needs "
                       "auto_shutdown='any_significant' or 'all_significant' on its "
                       f"supervisor; {sup.path or 'the root'!r} has 'never'",
                       field="significant")
    return child_spec


def _decode_spec(blob: bytes) -> Any:
    try:
        child_spec = pickle.loads(blob)
    except Exception as exc:  # any bytes may arrive here: a client's or a fuzzer's
        raise _Refused("ConfigError", f"spec: cannot decode it ({type(exc).__name__}: "
                       f"{exc})", field="spec") from exc
    if not isinstance(child_spec, ChildSpec | ProgramSpec | SupervisorSpec):
        raise _Refused("ConfigError", "spec: expected a child(...), program(...), "
                       f"Supervisor(...) or Pool(...) spec, got {type(child_spec).__name__} "
                       f"{child_spec!r:.80}", field="spec")
    return child_spec


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
    """The stopped child `restart_child` / `delete_child` acts on. As in OTP, neither
    applies to simple_one_for_one children, to a running child ({error, running}) or to
    one whose restart is under way ({error, restarting}: a restart waiting on its backoff
    delay or retried after it failed to start)."""
    slot = _find(sup, msg.child_id)
    if sup.spec.strategy == "simple_one_for_one":
        raise _Refused("WorkerError", f"{operation} is not supported by simple_one_for_one",
                       path=slot.path)
    if slot.pid is not None:
        raise _Refused("WorkerError", f"{slot.path!r} is running", path=slot.path,
                       state="running")
    if slot.state == "restarting":
        raise _Refused("WorkerError", f"{slot.path!r} is restarting; terminate_child it "
                       "first to cancel the restart", path=slot.path, state="restarting")
    return slot


def _start_refused(failure: Any) -> _Refused:
    return _Refused("StartError", _start_error_text(failure), path=failure.path,
                    category=failure.category, remote_type=failure.type,
                    remote_message=failure.message, remote_traceback=failure.traceback)


def _restart_child(sup: SupervisorProcess, msg: Any) -> int | None:
    slot = _stopped_child(sup, msg, "restart_child")
    # An operator's start replaces a pending circuit trial (it would start a second process).
    slot.cancel_timers()
    slot.circuit, slot.retry_at = "closed", None
    failure = sup.start_slot(slot)
    if failure is not None:
        raise _start_refused(failure)
    return slot.pid


def _delete_child(sup: SupervisorProcess, msg: Any) -> None:
    sup.children.remove(_stopped_child(sup, msg, "delete_child"))


def _report_failure(sup: SupervisorProcess, msg: Any) -> None:
    slot = _find(sup, msg.child_id)
    if msg.category not in _CATEGORIES:
        # It would name the child's exit, and the matrix has no row for it.
        raise _Refused("ConfigError", f"category: expected one of {', '.join(_CATEGORIES)}, "
                       f"got {msg.category!r}", field="category")
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
