"""The root of `python -m supervisor run`: the supervisor loop in the foreground process.

There is no App above this root. Its events go to the local telemetry handlers (the
default reporter logs them) and to every client of the control socket; requests come from
those clients. SIGTERM and SIGINT stop the tree gracefully, children in reverse order;
SIGHUP, like a client's Reload, re-reads the tree file and applies the difference
(`service.reload`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from loguru import logger

from .. import telemetry
from ..observe.hub import Hub
from ..tree.process import SupervisorProcess
from ..wire import messages as P
from ..wire.trust import default_socket
from .control import ControlServer
from .notify import Notifier
from .reload import Reloader, TreeFile

__all__ = ["run_tree"]


def run_tree(spec: Any, socket_path: str | None = None, metrics: Any = None,
             source: TreeFile | None = None) -> int:
    """Run `spec` until it stops; the exit status (0 clean stop, 1 the root gave up or a
    child failed to start). `metrics` (an `observe.options.MetricsOptions`) starts the HTTP
    server (metrics, status, web page) in a thread of this process. `source` is the file
    `spec` was read from: `reload` and SIGHUP read it again. Raises ConfigError
    (TreeRunning) when the socket is live or the token file is refused, OSError when the
    metrics address cannot be bound."""
    path = Path(socket_path) if socket_path else default_socket(spec.id)
    sup = SupervisorProcess(spec, "", None, root=True)
    sup.uplink.control = control = ControlServer(sup, path, explicit=socket_path is not None)
    control.hub = hub = Hub()  # fed on this (the loop's) thread, read by the HTTP server's
    if source is not None:
        control.reloader = reloader = Reloader(sup, source)
        sup.on_hangup = reloader.hangup
    telemetry.attach_default_reporter()
    notifier = Notifier()  # systemd's Type=notify, when NOTIFY_SOCKET is set
    server = None
    if metrics is not None:
        from ..observe.web import ObserveServer

        try:
            server = ObserveServer(metrics, path, hub)
        except BaseException:
            control.close()
            raise

    def deliver(msg: Any) -> None:
        match msg:
            case P.Event(name=name, measurements=measurements, metadata=metadata):
                hub.publish(name, measurements, metadata)
                telemetry.execute(name, measurements, metadata)
                control.broadcast(msg)
            case P.Ready():
                logger.info("tree {!r} is up: {} children; control socket {}", spec.id,
                            len(sup.children.slots), path)
                notifier.send(READY=1, STATUS=f"tree {spec.id!r} is up: "
                                                f"{len(sup.children.slots)} children")
                if notifier.watchdog is not None:
                    watchdog()
                if server is not None:
                    # Started once the tree is up, from the loop thread: every fork of the
                    # start happened before this thread existed. Later forks (restarts)
                    # happen on this thread too; see observe.web on what its threads hold.
                    server.start()
                    logger.info("serving {} (metrics at {}metrics; {})", server.url,
                                server.url, "control with the token in " +
                                str(metrics.token_file) if server.token else "read-only")
            case P.StartFailed():
                notifier.send(STATUS=f"child {msg.path!r} failed to start ({msg.category})")
                logger.error("tree {!r} did not start: child {!r} failed ({}): {}: {}",
                             spec.id, msg.path, msg.category, msg.type, msg.message)
                if msg.traceback:
                    logger.error("remote traceback:\n{}", msg.traceback.rstrip())
            case P.Exit(message=detail):
                control.broadcast(msg)
                logger.info("tree {!r} stopped: {}", spec.id, detail)

    def watchdog() -> None:  # from the loop: a stalled loop stops the pings
        notifier.send(WATCHDOG=1)
        sup.loop.call_later(notifier.watchdog, watchdog)

    sup.uplink.deliver = deliver
    sup.on_stopping.append(lambda detail: notifier.send(STOPPING=1,
                                                        STATUS=f"stopping ({detail})"))
    try:
        return sup.main()
    finally:
        if server is not None:
            server.close()
        control.close()
        notifier.close()
