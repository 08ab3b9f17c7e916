"""Every error the supervisor raises, in one shallow tree.

    SupervisorError
    ├── ConfigError (also ValueError)      your spec or file is wrong
    │   ├── UntrustedServer                a control socket we must not talk to; nothing sent
    │   └── ServerRefused                  the control server hung up on us (its peer check)
    ├── StartError                         a child failed to start; the tree did not come up
    └── WorkerError                        a failure reached a caller, classified by the matrix
        ├── CallTimeout                    the call did not answer within its timeout
        ├── WorkerCrashed                  the worker died while the call was in flight
        ├── CommandError                   the command raised inside the worker
        ├── CircuitOpen                    the child's circuit is open; calls fail fast
        ├── ChildAbandoned                 the matrix gave up on the child; calls fail fast
        ├── EncodeError (also TypeError)   a value msgspec cannot encode
        ├── ProtocolError                  a frame that does not decode; the channel is closed
        ├── SessionLost                    the session's worker died; its state is gone
        ├── PoolExhausted                  no pool worker could be checked out in time
        └── NoSuchChild (also LookupError) no child at that path / with that id

Each `WorkerError` carries the category of the error decision matrix and, through the
matrix, its severity and recovery; `format_for_logging()` renders all of it.
"""

from __future__ import annotations

from typing import Any

from strategies.circuit import CircuitOpenError

__all__ = [
    "SupervisorError",
    "ConfigError",
    "UntrustedServer",
    "ServerRefused",
    "StartError",
    "WorkerError",
    "CallTimeout",
    "WorkerCrashed",
    "CommandError",
    "CircuitOpen",
    "ChildAbandoned",
    "EncodeError",
    "ProtocolError",
    "SessionLost",
    "PoolExhausted",
    "NoSuchChild",
    "error_from_wire",
]


class SupervisorError(Exception):
    """Base of every error this package raises."""


class ConfigError(SupervisorError, ValueError):
    """A spec or a configuration file is invalid: the caller's fault, fix the input.

    `field` is the field path (``tree.children[1].restart``), `value` the bad value;
    `file` and `line` are set when the spec came from a file.
    """

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        value: Any = None,
        file: str | None = None,
        line: int | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.file = file
        self.line = line
        self.message = message  # without the file, line and field prefixes
        prefix = ""
        if file is not None:
            prefix = f"{file}:{line}: " if line is not None else f"{file}: "
        if field is not None and not message.startswith(f"{field}:"):
            message = f"{field}: {message}"
        super().__init__(prefix + message)


class UntrustedServer(ConfigError):
    """A control socket the caller must not talk to; nothing was sent to it.

    A directory on its path, the socket file, or the process listening on it belongs to a
    user other than the caller, root, or the server uid the caller named: someone else
    could have put a fake server there. Not a bug: check who owns the path in the message
    (another user may have planted it), or trust that uid explicitly (`server_uid`).
    """


class ServerRefused(ConfigError):
    """The control server closed the connection before answering anything: its peer check
    refused us (most likely the tree is another user's). Nothing was done."""


class StartError(SupervisorError):
    """A child failed to start while its supervisor was starting; started siblings were stopped.

    The message names the child path, the category and the remote ``Type: message``;
    `remote_traceback` holds the child's traceback when it raised.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str = "",
        category: str = "system_error",
        remote_type: str | None = None,
        remote_message: str | None = None,
        remote_traceback: str | None = None,
    ) -> None:
        self.path = path
        self.category = category
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(message)

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class WorkerError(SupervisorError):
    """A failure that reached a caller, classified by the error decision matrix.

    `category` is an `ErrorCategory` value; `severity` and `recovery` default to that
    category's row of the default matrix. `path` is the child path, `attempt` the attempt
    number the failure happened on, `context` extra facts (session, operation, metadata).
    """

    category = "system_error"

    def __init__(
        self,
        message: str,
        *,
        category: str | None = None,
        severity: str | None = None,
        recovery: str | None = None,
        path: str | None = None,
        attempt: int = 1,
        context: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        if category is not None:
            self.category = category
        self.path = path
        self.attempt = attempt
        self.context = dict(context or {})
        self._severity = severity
        self._recovery = recovery

    @property
    def severity(self) -> str:
        if self._severity is not None:
            return self._severity
        return str(_default_rule(self.category).severity)

    @property
    def recovery(self) -> str:
        if self._recovery is not None:
            return self._recovery
        return str(_default_rule(self.category).recovery)

    def format_for_logging(self) -> str:
        """A multi-line rendering with every classification fact (for logs and reports)."""
        lines = [
            f"Worker error: {self}",
            f"Category: {self.category}",
            f"Severity: {self.severity}",
            f"Recovery: {self.recovery}",
            f"Worker: {self.path if self.path is not None else 'N/A'}",
            f"Session: {self.context.get('session_id') or 'N/A'}",
            f"Attempt: {self.attempt}",
            f"Context: {self.context!r}",
        ]
        return "\n".join(lines)


def _default_rule(category: str):
    from strategies.matrix import DEFAULT_MATRIX, ErrorCategory

    return DEFAULT_MATRIX[ErrorCategory(category)]


class CallTimeout(WorkerError, TimeoutError):
    """The call got no answer within its timeout: the worker is slow or wedged (timeout_error)."""

    category = "timeout_error"


class WorkerCrashed(WorkerError):
    """The worker died (or its channel broke) while the call was in flight (connection_error).

    The call may or may not have run: it is re-sent only when marked idempotent.
    """

    category = "connection_error"


class CommandError(WorkerError):
    """The command raised inside the worker: the worker's code is at fault (python_error).

    `remote_type`, `remote_message` and `remote_traceback` describe the remote exception;
    ``str()`` starts with ``Type: message``. The worker keeps serving.
    """

    category = "python_error"

    def __init__(
        self,
        message: str,
        *,
        remote_type: str = "Exception",
        remote_traceback: str = "",
        **kwargs: Any,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = message
        self.remote_traceback = remote_traceback
        super().__init__(f"{remote_type}: {message}", **kwargs)

    def __str__(self) -> str:
        text = super().__str__()
        if self.remote_traceback:
            text += "\n\nRemote traceback:\n" + self.remote_traceback.rstrip()
        return text


class CircuitOpen(WorkerError, CircuitOpenError):
    """The child's circuit is open after repeated failures; calls fail fast until the next trial.

    `retry_at` is the `time.time()` of the next half-open trial, when known.
    """

    category = "resource_error"

    def __init__(self, message: str, *, retry_at: float | None = None,
                 fallback: str | None = None, **kwargs: Any) -> None:
        self.retry_at = retry_at
        self.fallback = fallback  # the sibling that serves the child's calls meanwhile
        super().__init__(message, **kwargs)


class ChildAbandoned(WorkerError):
    """The error matrix gave up on this child after repeated failures: it stays down (its
    siblings keep running) until an operator starts it again (`app.restart_child`,
    ``python -m supervisor start PATH``). Calls fail fast with this error.

    `category` is the category of the failure that abandoned it (the world's fault, most
    often: see the child's `exited` events); `reason` says why in a line; `fallback` names
    the sibling that serves its calls meanwhile, if it has one.
    """

    def __init__(self, message: str, *, category: str = "system_error",
                 reason: str | None = None, fallback: str | None = None,
                 **kwargs: Any) -> None:
        self.reason = reason
        self.fallback = fallback
        super().__init__(message, category=category, **kwargs)


class EncodeError(WorkerError, TypeError):
    """An argument or result that msgspec cannot encode; the message names the type
    (communication_error). The caller's (or the command's) fault."""

    category = "communication_error"


class ProtocolError(WorkerError):
    """A frame that does not decode, is cut short, or is too large (communication_error).

    The channel it came from is closed and never trusted again.
    """

    category = "communication_error"


class SessionLost(WorkerError):
    """The worker holding the session died, and its session state with it (session_error).

    Never retried: the caller decides how to rebuild the session.
    """

    category = "session_error"


class PoolExhausted(WorkerError):
    """No pool worker became free within `checkout_timeout` (resource_error)."""

    category = "resource_error"


class NoSuchChild(WorkerError, LookupError):
    """No child at that path or with that id: usually a typo in the caller's path."""

    category = "system_error"


class NotRunning(WorkerError):
    """Internal to the caller's side: the child exists but is not running now (`state`:
    restarting, stopped). A call that gets it never reached a worker: the client waits for
    the restart, or sends it to `fallback` (a sibling), and never shows it to the user."""

    category = "connection_error"

    def __init__(self, message: str, *, state: str | None = None, path: str | None = None,
                 fallback: str | None = None) -> None:
        super().__init__(message, path=path)
        self.state = state
        self.fallback = fallback


_WIRE_ERRORS: dict[str, type[SupervisorError]] = {
    cls.__name__: cls
    for cls in (
        ConfigError,
        StartError,
        WorkerError,
        CallTimeout,
        WorkerCrashed,
        CommandError,
        CircuitOpen,
        ChildAbandoned,
        EncodeError,
        ProtocolError,
        SessionLost,
        PoolExhausted,
        NoSuchChild,
        NotRunning,
    )
}


def error_from_wire(kind: str, message: str, **fields: Any) -> SupervisorError:
    """Rebuild an error a supervisor process reported by class name (unknown -> WorkerError)."""
    cls = _WIRE_ERRORS.get(kind, WorkerError)
    if cls is ConfigError:
        return ConfigError(message, field=fields.get("field"), file=fields.get("file"),
                           line=fields.get("line"))
    if cls is StartError:
        return StartError(
            message,
            path=fields.get("path") or "",
            category=fields.get("category") or "system_error",
            remote_type=fields.get("remote_type"),
            remote_message=fields.get("remote_message"),
            remote_traceback=fields.get("remote_traceback"),
        )
    if cls is NotRunning:
        return NotRunning(message, state=fields.get("state"), path=fields.get("path"),
                          fallback=fields.get("fallback"))
    if cls is CircuitOpen:
        return CircuitOpen(message, retry_at=fields.get("retry_at"), path=fields.get("path"),
                           fallback=fields.get("fallback"))
    if cls is ChildAbandoned:
        return ChildAbandoned(message, category=fields.get("category") or "system_error",
                              reason=fields.get("reason"), path=fields.get("path"),
                              fallback=fields.get("fallback"))
    if cls is CommandError:
        return CommandError(
            fields.get("remote_message") or message,
            remote_type=fields.get("remote_type") or "Exception",
            remote_traceback=fields.get("remote_traceback") or "",
            path=fields.get("path"),
        )
    kwargs: dict[str, Any] = {"path": fields.get("path")}
    if cls is WorkerError:
        if fields.get("category"):
            kwargs["category"] = fields["category"]
        # A refusal's facts (the child's state) or a supervisor's own bug (remote type and
        # message): kept for the caller in `context`.
        kwargs["context"] = {key: fields[key] for key in ("state", "remote_type",
                                                          "remote_message") if key in fields}
    return cls(message, **kwargs)
