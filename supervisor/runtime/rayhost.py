"""The actor side of a ``backend="ray"`` child: the user's Worker inside a Ray actor.

This module runs on the cluster's worker processes (and is imported by the bridge, which
turns `Host` into a remote class). The Worker is served exactly as in a local child: one
call frame in, one reply frame out, through the same `Callers._handle` a forked worker uses,
so commands, sessions, batches, errors and encoding rules are the same on both backends
(the frames are msgspec's; Ray only carries the bytes).

Why `watch` exists: Ray has no push notification of an actor's death. A call that never
returns, pending in its own concurrency group, fails the moment the actor dies (killed,
its process gone, its node lost), and its result tells the bridge how. While it is pending
the actor cannot leave gracefully on its own (Ray waits for it), so a worker that stops
itself (`self.stop(reason)`, `sys.exit` in a command) releases the watch with its reason
and the bridge ends the actor.
"""

from __future__ import annotations

import os
from typing import Any

import ray

from ..wire import messages as P
from ..wire.framing import FrameReader
from ..worker import command_table
from .callers import Callers, describe
from .meter import CallMeter

__all__ = ["Host", "CONCURRENCY_GROUPS"]

CONCURRENCY_GROUPS = {"watch": 1, "health": 1}


class Host:
    """Holds one Worker; the bridge creates it with Ray's restarts off."""

    def __init__(self, spec: Any, path: str, restarts: int) -> None:
        worker = self.worker = spec.worker_class()
        worker.id, worker.path, worker.restarts = spec.id, path, restarts
        # `init` raising is kept and reported by `ready()` with its type, message and
        # traceback (a start failure, initialization_error); the bridge then kills us.
        self.failure: tuple[str, str, str] | None = None
        try:
            worker.init(*spec.args, **dict(spec.kwargs))
        except Exception as exc:  # any error in user init is an initialization_error
            self.failure = describe(exc)
            return
        commands = {name: getattr(worker, name) for name in command_table(type(worker))}
        self.callers = Callers(worker, commands, spec.serializer == "pickle",
                               lambda: None, CallMeter())
        self.reader = FrameReader(P.CALL_CODEC)

    def ready(self) -> tuple[Any, str, str, int]:
        """(init's failure or None, node id, node IP, actor pid)."""
        context = ray.get_runtime_context()
        return self.failure, context.get_node_id(), ray.util.get_node_ip_address(), os.getpid()

    def handle(self, frame: bytes) -> bytes | None:
        """Run one Call or Cast frame; returns the reply frame (None for a cast)."""
        (msg,) = self.reader.feed(frame)
        if self.worker.stopping.is_set():  # leaving: never run, safe to send elsewhere
            return self.callers._not_run(msg, getattr(self.worker, "_stop_reason", "normal"))
        try:
            return self.callers._handle(msg)
        except SystemExit as exc:  # the worker leaves on its own: released through watch
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
            self.worker.stop("normal" if code == 0 else f"exit_code_{code}")
            return None if not isinstance(msg, P.Call) else P.CALL_CODEC.encode(P.Fail(
                id=msg.id, category="python_error", type="SystemExit",
                message=f"the worker exited with code {code}", traceback=""))

    @ray.method(concurrency_group="watch")
    def watch(self) -> str:
        """Returns the worker's stop reason once it stops itself; fails if the actor dies."""
        self.worker.stopping.wait()
        return getattr(self.worker, "_stop_reason", "normal")

    @ray.method(concurrency_group="health")
    def health(self) -> bool:
        check = getattr(self.worker, "health", None)
        if check is None:
            return True
        try:
            return bool(check())
        except Exception as exc:  # a health check that raises says "unhealthy"
            self.worker.log.warning("health() raised {}: {}", type(exc).__name__, exc)
            return False

    def terminate(self, reason: str) -> None:
        """The graceful-stop hook; the bridge kills the actor right after."""
        try:
            self.worker.terminate(reason)
        except Exception as exc:  # a failing hook must not turn a clean stop into a crash
            self.worker.log.exception("terminate({!r}) raised: {}", reason, exc)
