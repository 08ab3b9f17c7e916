"""otp-supervisor: Erlang/OTP-style supervision trees for Python worker processes.

Every worker process imports this package, so it stays cheap: names load on first use.
Note: the import name ``supervisor`` is also used by supervisord; they cannot share an
environment.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Worker",
    "idempotent",
    "child",
    "program",
    "Supervisor",
    "Pool",
    "ChildSpec",
    "ProgramSpec",
    "SupervisorSpec",
    "PoolSpec",
    "start",
    "connect",
    "App",
    "ChildInfo",
    "LogOptions",
    "errors",
    "telemetry",
    "aio",
    "SupervisorError",
    "ConfigError",
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
]

_WHERE = {
    "Worker": "worker",
    "idempotent": "worker",
    "child": "specs",
    "program": "specs",
    "ProgramSpec": "specs",
    "Supervisor": "specs",
    "Pool": "specs",
    "ChildSpec": "specs",
    "SupervisorSpec": "specs",
    "PoolSpec": "specs",
    "start": "app",
    "connect": "app",
    "App": "app",
    "ChildInfo": "app",
    "LogOptions": "logoptions",
}
_ERRORS = {name for name in __all__ if name.endswith(("Error", "Timeout", "Crashed", "Open",
                                                       "Lost", "Exhausted", "Child", "Abandoned"))}

if TYPE_CHECKING:
    from . import aio, errors, telemetry
    from .app import App, ChildInfo, connect, start
    from .errors import (
        CallTimeout,
        ChildAbandoned,
        CircuitOpen,
        CommandError,
        ConfigError,
        EncodeError,
        NoSuchChild,
        PoolExhausted,
        ProtocolError,
        SessionLost,
        StartError,
        SupervisorError,
        WorkerCrashed,
        WorkerError,
    )
    from .logoptions import LogOptions
    from .specs import (
        ChildSpec,
        Pool,
        PoolSpec,
        ProgramSpec,
        Supervisor,
        SupervisorSpec,
        child,
        program,
    )
    from .worker import Worker, idempotent


def __getattr__(name: str) -> Any:
    import importlib

    if name in ("errors", "telemetry", "aio"):
        return importlib.import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None and name in _ERRORS:
        module = "errors"
    if module is None:
        raise AttributeError(f"module 'supervisor' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
