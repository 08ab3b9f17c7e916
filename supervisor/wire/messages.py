"""The messages supervisors, workers and callers exchange, one tagged union per channel kind.

Every message is a frozen msgspec Struct encoded as a MessagePack array whose first element
is a one-letter tag (``["c", 7, "incr", [5]]``); `supervisor.wire.framing` puts a 4-byte length in
front of it. Two channel kinds, two unions, two codecs built once at import:

Call channel (`CallMessage`, `CALL_CODEC`): a direct socketpair between a caller and a worker;
supervisors never carry it (a supervisor that routes user traffic notices crashes late).

    message   tag  direction           meaning
    Call      c    caller -> worker    run `method`, answer with the same `id`
    Cast      k    caller -> worker    run `method`, no answer
    Reply     r    worker -> caller    the result of Call `id`
    Fail      f    worker -> caller    Call `id` raised (category, remote type, message, tb)
    NotRun    N    worker -> caller    Call `id` arrived while the worker was leaving: it did
                                       not run, so it is safe to send to another worker
    Closing   x    worker -> caller    the worker is leaving: send nothing more here

Reserved method names (a `Call` whose `method` is one of these is not a user command):
`END_SESSION` drops a pool session's state; `BATCH` runs one command over a map chunk.

Control channel (`ControlMessage`, `CONTROL_CODEC`): supervisor <-> child, App <-> root.

    message         tag  direction                 meaning
    Ready           R    child -> supervisor       `init` returned (a supervisor: its children are up)
    StartFailed     S    child -> supervisor       `init` raised / a child of it failed to start
    Stop            s    supervisor -> child       stop gracefully with `reason`
    Exit            X    child -> supervisor       a clean exit report, sent before leaving
    Ping / Pong     p/P  supervisor <-> child      heartbeat, `seq` echoed back
    OpenChannel     o    App -> supervisor -> ...  open a call channel to worker `path`
                         (down the tree)           (one socketpair end rides as SCM_RIGHTS)
    WhichChildren   w    App -> supervisor         requests: `id` is echoed in the answer,
    CountChildren   n      "                       `path` names the target supervisor
    GetStatus       g      "                       ("" = the receiver, "jobs/sub" = a descendant)
    StartChild      a      "
    TerminateChild  t      "
    RestartChild    e      "
    DeleteChild     d      "
    ReplaceChild    q      "                       a rolling restart's step (see the class)
    RefreshCode     j      "                       re-import the workers' modules
    Shutdown        z    App -> root               stop the whole tree
    Reload          H    client -> service root    re-read the tree file, apply the difference
    ApplySpec       U    supervisor -> child sup.  a reload: the child supervisor's new spec
    Logs            L    App -> supervisor -> ...  the output a worker's or program's
                         (down the tree)           supervisor kept: a `LogChunk` answer
    Response        y    supervisor -> App         the answer to request `id`
    ErrorResponse   Y    supervisor -> App         request `id` failed: error class name + fields
    Event           E    child/supervisor -> App   telemetry, forwarded up the tree

`ChildInfo` is not a message: it is the record `which_children` returns, carried inside a
`Response.value` as a map; rebuild it with ``msgspec.convert(value, list[ChildInfo])``.

Compatibility rule: fields are append-only and every appended field has a default, so an
older peer's shorter array still decodes.
"""

from typing import Any

import msgspec

from supervisor.wire.framing import Codec

__all__ = [
    "Call",
    "Cast",
    "Reply",
    "Fail",
    "NotRun",
    "Closing",
    "CallMessage",
    "END_SESSION",
    "BATCH",
    "RESERVED_METHODS",
    "Ready",
    "Begin",
    "StartFailed",
    "Stop",
    "Exit",
    "Ping",
    "Pong",
    "OpenChannel",
    "GetMetrics",
    "RecentEvents",
    "WhichChildren",
    "CountChildren",
    "GetStatus",
    "StartChild",
    "TerminateChild",
    "RestartChild",
    "DeleteChild",
    "ReplaceChild",
    "RefreshCode",
    "Shutdown",
    "Reload",
    "ApplySpec",
    "Response",
    "ErrorResponse",
    "Event",
    "Logs",
    "LOGS_WAIT",
    "ControlMessage",
    "ChildInfo",
    "LogLine",
    "LogChunk",
    "CALL_CODEC",
    "CONTROL_CODEC",
]


class _Message(
    msgspec.Struct,
    frozen=True,
    tag_field="k",
    array_like=True,
    # Messages never take part in reference cycles (decoded ones are trees, and nothing in
    # the runtime stores a message inside its own arguments), so keeping them out of the
    # cyclic GC saves ~10% per message on the hot path and GC work in busy processes.
    gc=False,
):
    """Base of every wire message (not itself on the wire)."""


# --------------------------------------------------------------------------- call channel


class Call(_Message, tag="c"):
    """Run ``method(*args, **kwargs)`` on the worker and answer with `Reply`/`Fail` of `id`.

    `session` pins the call to a pool session; `pickled` marks arguments that were pickled
    (only for children that opted in with ``serializer="pickle"``; the runtime owns the layout).
    `args` decodes as a tuple (msgspec allows one array-like type per field, not list | tuple).
    """

    id: int
    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    session: str | None = None
    pickled: bool = False


class Cast(_Message, tag="k"):
    """Run ``method(*args, **kwargs)`` on the worker; nobody waits for an answer."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] | None = None
    session: str | None = None
    pickled: bool = False


class Reply(_Message, tag="r"):
    """The result of Call `id` (`value` is pickled bytes when `pickled`)."""

    id: int
    value: Any = None
    pickled: bool = False


class Fail(_Message, tag="f"):
    """Call `id` failed: `category` is an ErrorCategory value, `type` the remote class name."""

    id: int
    category: str
    type: str
    message: str
    traceback: str = ""


class NotRun(_Message, tag="N"):
    """Call `id` reached a worker that was already leaving and did not run: as safe to send
    again (to the replacement or another worker) as a call that never left."""

    id: int
    message: str


class Closing(_Message, tag="x"):
    """The worker is leaving (`reason`): the caller sends nothing more on this channel and
    closes its side once it has read the replies it is owed (calls the worker read but did
    not run come back as `NotRun`)."""

    reason: str


CallMessage = Call | Cast | Reply | Fail | NotRun | Closing

# The reserved method that ends a pool session: the worker drops the session's state and
# replies whether it existed.
END_SESSION = "_end_session"
# The reserved method that runs one command over many items (a pool's map chunk): args are
# (method, items, star), each item the one argument or (star) the argument list; the reply's
# value is [results, failure], where failure is None or [category, type, message,
# traceback] for the item after the last result. Items after a failing one are not run (as
# in a ProcessPoolExecutor chunk).
BATCH = "_batch"
RESERVED_METHODS = frozenset({END_SESSION, BATCH})

# ------------------------------------------------------------------------ control channel


class Ready(_Message, tag="R"):
    """The child at the other end finished `init` (a supervisor: all its children are up).

    A ``backend="ray"`` child's bridge adds where its actor runs (node IP and Ray node id).
    """

    pid: int
    node_ip: str | None = None
    node_id: str | None = None


class StartFailed(_Message, tag="S"):
    """Starting the child at `path` failed; the remote error as category, type and message."""

    path: str
    category: str
    type: str
    message: str
    traceback: str = ""


class Begin(_Message, tag="b"):
    """A worker forked ahead of its turn may run `init` now (a pipelined start: it was
    forked while its elder sibling ran `init`, and waited for this)."""


class Stop(_Message, tag="s"):
    """Stop gracefully (run `terminate(reason)`), then send `Exit` and leave."""

    reason: str = "shutdown"


class Exit(_Message, tag="X"):
    """A clean exit report, sent just before the process leaves.

    A crash sends nothing: it is classified from the wait status instead. The error fields
    are set when the exit reports a failure (e.g. `run` raised).
    """

    reason: str
    category: str | None = None
    type: str | None = None
    message: str | None = None
    traceback: str | None = None


class Ping(_Message, tag="p"):
    """Heartbeat request; the child answers `Pong` with the same `seq`."""

    seq: int


class Pong(_Message, tag="P"):
    """Heartbeat answer to `Ping` `seq`; `healthy` is the worker's `health()` verdict."""

    seq: int
    healthy: bool = True


class OpenChannel(_Message, tag="o"):
    """Open a call channel to the WORKER at `path`; one socketpair end travels with this
    frame as SCM_RIGHTS ancillary data (see `supervisor.wire.framing.recv_some`)."""

    id: int
    path: str


class GetMetrics(_Message, tag="m"):
    """The call counters of the WORKER at `path` (routed like `OpenChannel`); answered by
    the worker's control thread with `supervisor.runtime.meter.CallMeter.snapshot()`."""

    id: int
    path: str


class RecentEvents(_Message, tag="v"):
    """The telemetry events a service root kept (its last 500), those after sequence number
    `after`; answered by the service root's control server with a list of records
    (`seq`, `name`, `time`, `path`, `measurements`, `metadata`)."""

    id: int
    after: int = 0


class WhichChildren(_Message, tag="w"):
    """List the children of supervisor `path`; answered with a list of `ChildInfo` maps."""

    id: int
    path: str


class CountChildren(_Message, tag="n"):
    """Count the children of supervisor `path` (specs, active, supervisors, workers)."""

    id: int
    path: str


class GetStatus(_Message, tag="g"):
    """The status of the subtree under supervisor `path`."""

    id: int
    path: str


class StartChild(_Message, tag="a"):
    """Start a child under supervisor `path`: from `spec` (an encoded spec) or, for
    simple_one_for_one, from its template with `args` appended. Answered with the new id."""

    id: int
    path: str
    spec: bytes | None = None
    args: list[Any] = msgspec.field(default_factory=list)
    kwargs: dict[str, Any] | None = None


class TerminateChild(_Message, tag="t"):
    """Stop child `child_id` of supervisor `path` (its spec stays, except simple_one_for_one)."""

    id: int
    path: str
    child_id: str


class RestartChild(_Message, tag="e"):
    """Restart the stopped child `child_id` of supervisor `path`."""

    id: int
    path: str
    child_id: str


class DeleteChild(_Message, tag="d"):
    """Delete the spec of the stopped child `child_id` of supervisor `path`."""

    id: int
    path: str
    child_id: str


class Shutdown(_Message, tag="z"):
    """Shut the whole tree down (sent to the root)."""

    id: int


class Reload(_Message, tag="H"):
    """Re-read the tree file the service root was started with and apply the difference
    (`dry_run`: only plan it). Answered, once applied, with a `wire.reload.ReloadReport`;
    a bad file is a ConfigError answer and changes nothing."""

    id: int
    dry_run: bool = False


class ApplySpec(_Message, tag="U"):
    """A reload, from a supervisor to one of its child supervisors: `spec` is the pickle of
    (its new SupervisorSpec, its base error matrix as a dict); `paths` are sys.path entries
    to add before unpickling (a tree's `directory`). Answered with a list of
    `wire.reload.Outcome` maps once the difference is applied inside it."""

    id: int
    spec: bytes
    paths: list[str] = msgspec.field(default_factory=list)


class ReportFailure(_Message, tag="F"):
    """A caller saw child `child_id` of the supervisor at `path` fail (a timed-out call):
    the supervisor kills it and handles the exit as `category`."""

    id: int
    path: str
    child_id: str
    category: str
    reason: str


class SignalChild(_Message, tag="i"):
    """Send signal `signal` (a number) to child `child_id` of the supervisor at `path`: a
    worker's process, or an external program's whole process group. Answered with the pid."""

    id: int
    path: str
    child_id: str
    signal: int


class ReplaceChild(_Message, tag="q"):
    """Replace the running worker `child_id` of supervisor `path` with a fresh process of
    its spec: the new one is ready before the old one is asked to leave (a rolling
    restart's step; an external program is stopped, then started). Answered with the new
    pid, or None when the child was not running."""

    id: int
    path: str
    child_id: str


class RefreshCode(_Message, tag="j"):
    """Re-import, in the supervisor at `path`, the modules of its children's worker classes
    and use the new classes for every later start. Answered with the modules re-imported
    and the classes that stay as they were (defined in ``__main__``), as two lists."""

    id: int
    path: str


class Response(_Message, tag="y"):
    """The successful answer to request `id`."""

    id: int
    value: Any = None


class ErrorResponse(_Message, tag="Y"):
    """Request `id` failed; `kind` is a class name from `supervisor.errors` and `fields` its
    attributes, for `supervisor.errors.error_from_wire(kind, message, **fields)`."""

    id: int
    kind: str
    message: str
    fields: dict[str, Any] = msgspec.field(default_factory=dict)


class Event(_Message, tag="E"):
    """A telemetry event (`name` like ``["supervisor", "child", "restarted"]``)."""

    name: list[str]
    measurements: dict[str, Any] = msgspec.field(default_factory=dict)
    metadata: dict[str, Any] = msgspec.field(default_factory=dict)


LOGS_WAIT = 25.0
"""Seconds a `Logs` request with `wait` is held at most before it is answered empty."""


class Logs(_Message, tag="L"):
    """The output kept of the worker or program at `path` (relative to the receiver),
    answered with a `LogChunk` by the supervisor that captures it.

    `after` < 0: the last `lines` lines. Otherwise the lines numbered `after` and later
    (`after` is the `next` of the previous chunk) of the kept output `epoch` names; a
    different epoch (the capturing supervisor was restarted) reads from its start. With
    `wait`, an answer that would be empty waits for the next line (at most `LOGS_WAIT`
    seconds, then it is sent empty and the reader asks again)."""

    id: int
    path: str
    lines: int = 50
    after: int = -1
    wait: bool = False
    epoch: str = ""


ControlMessage = (
    Ready
    | StartFailed
    | Begin
    | Stop
    | Exit
    | Ping
    | Pong
    | OpenChannel
    | GetMetrics
    | RecentEvents
    | WhichChildren
    | CountChildren
    | GetStatus
    | StartChild
    | TerminateChild
    | RestartChild
    | DeleteChild
    | ReplaceChild
    | RefreshCode
    | Shutdown
    | Reload
    | ApplySpec
    | ReportFailure
    | SignalChild
    | Response
    | ErrorResponse
    | Event
    | Logs
)


class ChildInfo(msgspec.Struct, frozen=True):
    """One child as `which_children` reports it (a map on the wire, not a message).

    `kind` is "worker" or "supervisor"; `state` is "starting", "running", "stopping",
    "restarting", "stopped", "circuit_open" or "abandoned"; `pid` is None while the child is
    not running; `started_at` is the `time.time()` of its last start; `circuit` is "closed",
    "open" or "half_open", and `retry_at` the `time.time()` of the next half-open trial while
    it is open; `reason` says why the matrix gave up on it while it is abandoned (None
    otherwise); `node_ip` / `node_id` say where a running ``backend="ray"`` child's actor
    runs (None for a local child). Rebuild from a decoded `Response.value` with
    ``msgspec.convert(value, ChildInfo)`` (raises `msgspec.ValidationError` on a bad shape).
    """

    id: str
    pid: int | None
    kind: str
    state: str
    restarts: int = 0
    path: str = ""
    started_at: float | None = None
    circuit: str = "closed"
    retry_at: float | None = None
    reason: str | None = None
    node_ip: str | None = None
    node_id: str | None = None


class LogLine(msgspec.Struct, frozen=True, array_like=True):
    """One captured line (not a message): its number in the kept output, `time.time()`
    when it was read, `stream` (stdout, stderr, or log: a worker's own record), `level`,
    the text."""

    seq: int
    time: float
    stream: str
    level: str
    message: str


class LogChunk(msgspec.Struct, frozen=True):
    """The answer to `Logs` (a map inside `Response.value`; rebuild it with
    ``msgspec.convert(value, LogChunk)``): `lines` in order, `next` (the `after` of the
    next request), `dropped` (lines between the request's `after` and the first line here
    that fell out of the kept tail before anyone read them) and the kept output's `epoch`."""

    epoch: str
    next: int
    dropped: int = 0
    lines: list[LogLine] = msgspec.field(default_factory=list)


CALL_CODEC = Codec(CallMessage, name="call")
"""Frames of the call channel (caller <-> worker)."""

CONTROL_CODEC = Codec(ControlMessage, name="control")
"""Frames of the control channel (supervisor <-> child, App <-> root)."""
