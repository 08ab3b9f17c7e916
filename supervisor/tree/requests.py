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
import signal
import socket
import time
from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from strategies.matrix import ErrorCategory

from ..errors import ConfigError
from ..specs import ChildSpec, ProgramSpec, SupervisorSpec
from ..wire import messages as P
from . import childlog
from .children import Children
from .health import Monitors
from .recovery import Recovery
from .reimport import Reimport, ReimportError
from .slot import ChildSlot, ChildState
from .uplink import Uplink

__all__ = ["Requests"]

_CATEGORIES = tuple(str(c) for c in ErrorCategory)


class Requests:
    """The requests one supervisor answers (see the module doc). `shutdown(detail)` stops
    the supervisor (a Stop from its parent, a Shutdown for the whole tree)."""

    def __init__(self, spec: Any, path: str, children: Children, uplink: Uplink,
                 recovery: Recovery, monitors: Monitors,
                 shutdown: Callable[[str], None]) -> None:
        self.spec = spec
        self.path = path
        self.children = children
        self.uplink = uplink
        self.recovery = recovery
        self.monitors = monitors
        self.shutdown = shutdown
        self._dynamic = itertools.count(1)  # ids of simple_one_for_one children

    def handle(self, msg: Any, origin: socket.socket,
                       fd: int | None) -> None:
        match msg:
            case P.Stop():
                self.shutdown("shutdown")
            case P.Ping(seq=seq):
                self.uplink.relay(origin, P.Pong(seq=seq))
            case P.Shutdown(id=rid):
                self.uplink.relay(origin, P.Response(id=rid, value=None))
                self.shutdown("normal")
            case P.OpenChannel() | P.GetMetrics():
                self._route(msg, origin, fd, to_worker=True)
            case P.Logs():
                childlog.route(self.children, self.uplink, msg, origin)
            case P.WhichChildren() | P.CountChildren() | P.GetStatus() | P.StartChild() | \
                    P.TerminateChild() | P.RestartChild() | P.DeleteChild() | P.ReportFailure() | \
                    P.SignalChild() | P.ReplaceChild() | P.RefreshCode():
                self._route(msg, origin, None, to_worker=False)
            case _:
                if fd is not None:
                    os.close(fd)

    def _route(self, msg: Any, origin: socket.socket, fd: int | None,
               *, to_worker: bool) -> None:
        if not msg.path:
            if to_worker:
                os.close(fd) if fd is not None else None
                self.uplink.reply_error(origin, msg.id, "NoSuchChild",
                                 f"{self.path or 'the root'} is a supervisor; calls go to workers",
                                 path=self.path)
                return
            self._local(msg, origin)
            return
        first, _, rest = msg.path.partition("/")
        slot = self.children.find(first)
        full = f"{self.path}/{msg.path}" if self.path else msg.path
        error = None
        if slot is None:
            error = ("NoSuchChild", f"no child {full!r}")
        elif to_worker and not rest and slot.kind == "supervisor":
            error = ("NoSuchChild", f"{full!r} is a supervisor; calls go to workers")
        elif to_worker and not rest and slot.launcher.program:
            error = ("NoSuchChild", f"{full!r} is an external program; it takes no calls")
        elif not to_worker and slot.kind != "supervisor":
            error = ("NoSuchChild", f"{slot.path!r} is a worker, not a supervisor")
        elif rest and slot.kind != "supervisor":
            error = ("NoSuchChild", f"no child {full!r}: {slot.path!r} is a worker")
        elif slot.state is ChildState.CIRCUIT_OPEN:
            error = ("CircuitOpen", f"the circuit of {slot.path!r} is open after "
                     f"{slot.failures} failures; next trial at {_clock(slot.retry_at)}")
        elif slot.state is ChildState.ABANDONED and slot.abandoned is not None:
            error = ("ChildAbandoned", f"{slot.path!r} was abandoned ({slot.abandoned[1]}); "
                     f"`start {slot.path}` (restart_child) revives it")
        elif slot.pid is None or slot.state is not ChildState.RUNNING:
            error = ("NotRunning", f"{slot.path!r} is not running (state {slot.state})")
        if error is not None:
            if fd is not None:
                os.close(fd)
            fields = {"path": full, "state": str(slot.state) if slot is not None else None}
            if slot is not None:
                fields["retry_at"] = slot.retry_at
                fields["fallback"] = getattr(slot.spec, "fallback", None)
                if slot.abandoned is not None:
                    fields["category"], fields["reason"] = slot.abandoned
            self.uplink.reply_error(origin, msg.id, error[0], error[1], **fields)
            return
        self.children.forward(slot, msgspec.structs.replace(msg, path=rest), origin, msg.id, fd)

    def _local(self, msg: Any, origin: socket.socket) -> None:
        try:
            value = _LOCAL[type(msg)](self, msg)
        except _Refused as exc:
            self.uplink.reply_error(origin, msg.id, exc.kind, exc.message, **exc.fields)
            return
        self.uplink.relay(origin, P.Response(id=msg.id, value=value))

    def _which(self, msg: Any) -> list[P.ChildInfo]:
        return [slot.info() for slot in self.children.slots]

    def _count(self, msg: Any) -> dict[str, int]:
        # simple_one_for_one: one spec, its template, however many children (OTP; Elixir's
        # DynamicSupervisor counts the children instead).
        simple = self.spec.strategy == "simple_one_for_one"
        return {
            "specs": 1 if simple else len(self.children.slots),
            "active": sum(1 for s in self.children.slots if s.state is ChildState.RUNNING),
            "supervisors": sum(1 for s in self.children.slots if s.kind == "supervisor"),
            "workers": sum(1 for s in self.children.slots if s.kind == "worker"),
        }

    def _status(self, msg: Any) -> dict[str, Any]:
        spec = self.spec
        return {
            "id": spec.id,
            "path": self.path,
            "pid": os.getpid(),
            "strategy": spec.strategy,
            "max_restarts": spec.max_restarts,
            "max_seconds": spec.max_seconds,
            "recent_restarts": self.recovery.intensity.count(),
            "recovery": dict(self.recovery.metrics),
            "pool": ({"size": spec.size, "max_overflow": spec.max_overflow,
                      "checkout_timeout": spec.checkout_timeout}
                     if getattr(spec, "worker_template", None) is not None else None),
            "children": [slot.info() for slot in self.children.slots],
        }

    def _find(self, child_id: str) -> ChildSlot:
        slot = self.children.find(child_id)
        if slot is None:
            where = self.path or "the root"
            raise _Refused("NoSuchChild", f"{where} has no child {child_id!r}",
                           path=f"{self.path}/{child_id}" if self.path else child_id)
        return slot

    def _start_child(self, msg: Any) -> str:
        spec = self.spec
        # Restarting and stopped children count too (as in OTP and Elixir): they hold a place.
        if spec.max_children is not None and len(self.children.slots) >= spec.max_children:
            raise _Refused("PoolExhausted", f"max_children ({spec.max_children}) reached",
                           path=self.path)
        # Validated in full before the child table changes: a refusal leaves no trace.
        slot = self.children.new_slot(self._dynamic_spec(msg))
        self.children.add(slot)
        failure = self.children.start(slot)
        if failure is not None:
            self.children.remove(slot)
            raise _start_refused(failure)
        return slot.id

    def _dynamic_spec(self, msg: Any) -> Any:
        """The spec of the child `msg` asks for, checked as OTP checks start_child's argument;
        a bad one is refused with a ConfigError naming the field."""
        spec = self.spec
        if msg.spec is None and getattr(spec, "worker_template", None) is not None:
            # A pool's overflow worker: the next free index after the pool's own.
            taken = {slot.id for slot in self.children.slots}
            index = next(i for i in itertools.count(spec.size) if f"{spec.id}-{i}" not in taken)
            return attrs.evolve(spec.worker_template, id=f"{spec.id}-{index}")
        if spec.strategy == "simple_one_for_one":
            if msg.spec is not None:
                raise _Refused("ConfigError", "spec: a simple_one_for_one supervisor makes its "
                               "children from its template; pass args/kwargs instead", field="spec")
            template = spec.template
            try:
                return attrs.evolve(template, id=f"{template.id}-{next(self._dynamic)}",
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
        if self.children.find(child_spec.id) is not None:
            raise _Refused("ConfigError", f"duplicate child id {child_spec.id!r}", field="id")
        if child_spec.significant and spec.auto_shutdown == "never":
            raise _Refused("ConfigError", "significant: a significant child needs "
                           "auto_shutdown='any_significant' or 'all_significant' on its "
                           f"supervisor; {self.path or 'the root'!r} has 'never'",
                           field="significant")
        return child_spec

    def _terminate_child(self, msg: Any) -> None:
        slot = self._find(msg.child_id)
        slot.cancel_timers()  # a scheduled restart or circuit trial is void once terminated
        slot.close_circuit()
        slot.revive()  # a fresh failure count; no longer abandoned
        if slot.pid is None and slot.state in (ChildState.CIRCUIT_OPEN, ChildState.ABANDONED):
            slot.become(ChildState.STOPPED)  # down on the operator's word now
        self.children.stop(slot, "shutdown")
        if self.spec.strategy == "simple_one_for_one" or slot.spec.restart == "temporary":
            self.children.remove(slot)

    def _stopped_child(self, msg: Any, operation: str) -> ChildSlot:
        """The stopped child `restart_child` / `delete_child` acts on. As in OTP, neither
        applies to simple_one_for_one children, to a running child ({error, running}) or to
        one whose restart is under way ({error, restarting}: a restart waiting on its backoff
        delay or retried after it failed to start)."""
        slot = self._find(msg.child_id)
        if self.spec.strategy == "simple_one_for_one":
            raise _Refused("WorkerError", f"{operation} is not supported by simple_one_for_one",
                           path=slot.path)
        if slot.pid is not None:
            raise _Refused("WorkerError", f"{slot.path!r} is running", path=slot.path,
                           state="running")
        if slot.state is ChildState.RESTARTING:
            raise _Refused("WorkerError", f"{slot.path!r} is restarting; terminate_child it "
                           "first to cancel the restart", path=slot.path, state="restarting")
        return slot

    def _restart_child(self, msg: Any) -> int | None:
        slot = self._stopped_child(msg, "restart_child")
        # An operator's start replaces a pending circuit trial (it would start a second
        # process), and revives an abandoned child with a fresh failure count.
        slot.cancel_timers()
        slot.close_circuit()
        slot.revive()
        failure = self.children.start(slot)
        if failure is not None:
            raise _start_refused(failure)
        return slot.pid

    def _delete_child(self, msg: Any) -> None:
        self.children.remove(self._stopped_child(msg, "delete_child"))

    def _replace_child(self, msg: Any) -> int | None:
        """A rolling restart's step (see `Children.replace`): the new pid, or None for a
        child that is not running (its next start uses its spec as it is now)."""
        slot = self._find(msg.child_id)
        if slot.kind == "supervisor":
            raise _Refused("WorkerError", f"{slot.path!r} is a supervisor; a rolling restart "
                           "replaces the workers under it one at a time", path=slot.path)
        if slot.pid is None or slot.state is not ChildState.RUNNING:
            return None
        if slot.launcher.program:
            # Two copies of a program may not run at once (a port, a lock file): it is
            # stopped, then started, as `restart PATH` does.
            self.children.stop(slot, "shutdown")
            failure = self.children.start(slot)
        else:
            failure = self.children.replace(slot)
        if failure is not None:
            raise _start_refused(failure)
        return self.children.find(msg.child_id).pid

    def _refresh_code(self, msg: Any) -> list[list[str]]:
        """Re-import the modules of the children's worker classes (nested specs too) and
        start every child from now on with the new classes; nothing changes when one
        module cannot be re-imported."""
        fresh = Reimport()
        try:
            specs = [fresh.spec(slot.spec) for slot in self.children.slots]
            own = fresh.spec(self.spec)
        except ReimportError as exc:
            raise _Refused("ConfigError", str(exc), path=self.path) from exc
        for slot, spec in zip(self.children.slots, specs, strict=True):
            slot.spec = spec
        self.spec = own  # its templates: dynamic and overflow children
        return [fresh.modules, sorted(fresh.kept)]

    def _signal_child(self, msg: Any) -> int:
        """`python -m supervisor signal PATH SIGNAL`: what the child does with it is its
        own business (a SIGKILL is noticed and handled as any other death)."""
        slot = self._find(msg.child_id)
        if slot.pid is None:
            raise _Refused("NotRunning", f"{slot.path!r} is not running (state {slot.state})",
                           path=slot.path, state=str(slot.state))
        try:
            valid = signal.Signals(msg.signal)
        except ValueError:
            raise _Refused("ConfigError", f"signal: no signal number {msg.signal}",
                           field="signal") from None
        slot.launcher.signal(slot, valid)
        return slot.pid

    def _report_failure(self, msg: Any) -> None:
        slot = self._find(msg.child_id)
        if msg.category not in _CATEGORIES:
            # It would name the child's exit, and the matrix has no row for it.
            raise _Refused("ConfigError", f"category: expected one of {', '.join(_CATEGORIES)}, "
                           f"got {msg.category!r}", field="category")
        # The caller saw it fail (a timed-out call): its state is unknown, so no grace.
        self.monitors.fail_running(slot, msg.category, msg.reason, graceful=False)


def _clock(when: float | None) -> str:
    if when is None:
        return "unknown"
    return time.strftime("%H:%M:%S", time.localtime(when)) + f" (in {when - time.time():.1f}s)"


class _Refused(Exception):
    def __init__(self, kind: str, message: str, **fields: Any) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.fields = fields


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


def _start_refused(failure: Any) -> _Refused:
    return _Refused("StartError", _start_error_text(failure), path=failure.path,
                    category=failure.category, remote_type=failure.type,
                    remote_message=failure.message, remote_traceback=failure.traceback)


_LOCAL = {
    P.WhichChildren: Requests._which,
    P.CountChildren: Requests._count,
    P.GetStatus: Requests._status,
    P.StartChild: Requests._start_child,
    P.TerminateChild: Requests._terminate_child,
    P.RestartChild: Requests._restart_child,
    P.DeleteChild: Requests._delete_child,
    P.ReportFailure: Requests._report_failure,
    P.SignalChild: Requests._signal_child,
    P.ReplaceChild: Requests._replace_child,
    P.RefreshCode: Requests._refresh_code,
}
