"""The root of `python -m supervisor run`: the supervisor loop in the foreground process.

There is no App above this root. Its events go to the local telemetry handlers (the
default reporter logs them) and to every client of the control socket; requests come from
those clients. SIGTERM, SIGINT and SIGHUP stop the tree gracefully, children in reverse
order (SIGHUP until configuration reload exists).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from .. import telemetry
from ..tree.process import SupervisorProcess
from ..wire import messages as P
from ..wire.trust import default_socket
from .control import ControlServer

__all__ = ["run_tree"]


def run_tree(spec: Any, socket_path: str | None = None) -> int:
    """Run `spec` until it stops; the exit status (0 clean stop, 1 the root gave up or a
    child failed to start). Raises ConfigError (TreeRunning) when the socket is live."""
    path = Path(socket_path) if socket_path else default_socket(spec.id)
    sup = SupervisorProcess(spec, "", None, root=True)
    sup.uplink.control = control = ControlServer(sup, path, explicit=socket_path is not None)
    telemetry.attach_default_reporter()

    def deliver(msg: Any) -> None:
        match msg:
            case P.Event(name=name, measurements=measurements, metadata=metadata):
                telemetry.execute(name, measurements, metadata)
                control.broadcast(msg)
            case P.Ready():
                logger.info("tree {!r} is up: {} children; control socket {}", spec.id,
                            len(sup.children.slots), path)
            case P.StartFailed():
                logger.error("tree {!r} did not start: child {!r} failed ({}): {}: {}",
                             spec.id, msg.path, msg.category, msg.type, msg.message)
                if msg.traceback:
                    logger.error("remote traceback:\n{}", msg.traceback.rstrip())
            case P.Exit(message=detail):
                control.broadcast(msg)
                logger.info("tree {!r} stopped: {}", spec.id, detail)

    sup.uplink.deliver = deliver
    try:
        return sup.main()
    finally:
        control.close()
