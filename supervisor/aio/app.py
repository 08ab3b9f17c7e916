"""The asyncio App: `async with supervisor.aio.start(spec) as app`.

    tasks ──await call──▶ AsyncRouter ─ AsyncChannel (loop.add_reader) ──▶ worker (direct)
    tasks ──await app.which_children()──▶ RootLink ──ctrl──▶ root supervisor
    RootLink's reader thread ◀─ctrl── answers (futures, awaited), Events, the root's Exit

The App is bound to the event loop it was started on. Calls live on that loop: their
channels are read and written by loop callbacks, with no thread per call and no thread
hop for a reply. The one thread is the RootLink's reader (the control channel to the
root: answers to requests, telemetry, the tree's end), which also started the root; its
answers reach the loop through `asyncio.wrap_future`. Telemetry handlers run on that
thread, as with the blocking App.

It composes a blocking `supervisor.app.App` for what is not a call: the RootLink, and
stopping the tree at interpreter exit when nobody awaited `stop()`.
"""

from __future__ import annotations

import asyncio
import os
import pickle
from collections.abc import Generator
from typing import Any

import msgspec
import psutil

from .. import app as blocking
from .. import telemetry
from ..client.link import DISCONNECTED
from ..errors import CallTimeout, ConfigError, StartError, SupervisorError, WorkerCrashed
from ..observe.status import children_of, collect
from ..specs import SupervisorSpec
from ..wire import messages as P
from .channel import CALLS_IN_FLIGHT
from .router import AsyncRouter, request

__all__ = ["App", "start", "connect", "WorkerProxy"]

ChildInfo = P.ChildInfo


def start(spec: SupervisorSpec, *, timeout: float | None = 60.0,
          calls_in_flight: int = CALLS_IN_FLIGHT, logs: Any = None) -> _Opening:
    """Start `spec` as a tree of processes from a running event loop.

    ``async with start(spec) as app:`` stops the tree when the block ends;
    ``app = await start(spec)`` leaves that to ``await app.stop()``. Returns once every
    child's `init` returned; raises StartError as `supervisor.start` does (no process is
    left behind then). `calls_in_flight` is the limit per worker channel (backpressure).
    `logs`: per-child log files, as for `supervisor.start` (the same errors).
    """
    from ..logoptions import prepare

    if not isinstance(spec, SupervisorSpec):
        raise TypeError(f"start() expects a Supervisor(...) spec, got {type(spec).__name__}")
    _check_limit(calls_in_flight)
    prepare(logs)
    return _Opening(lambda: _start(spec, timeout, calls_in_flight, logs))


def connect(path: str | os.PathLike | None = None, *, timeout: float = 5.0,
            server_uid: int | None = None,
            calls_in_flight: int = CALLS_IN_FLIGHT) -> _Opening:
    """An App on a tree run by ``python -m supervisor run``, as `supervisor.connect`
    (the same checks and errors); ``async with`` disconnects at the end and leaves the
    tree running. Dialling and the server's checks run once, off the loop."""
    _check_limit(calls_in_flight)
    return _Opening(lambda: _connect(path, timeout, server_uid, calls_in_flight))


def _check_limit(calls_in_flight: Any) -> None:
    if (not isinstance(calls_in_flight, int) or isinstance(calls_in_flight, bool)
            or calls_in_flight < 1):
        raise ValueError(f"calls_in_flight must be an int >= 1, got {calls_in_flight!r}")


class _Opening:
    """What `start` and `connect` return: awaitable once, or an async context manager."""

    def __init__(self, open_app: Any) -> None:
        self._open = open_app
        self._app: App | None = None

    def __await__(self) -> Generator[Any, None, App]:
        return self._open().__await__()

    async def __aenter__(self) -> App:
        self._app = await self._open()
        return self._app

    async def __aexit__(self, *exc: Any) -> None:
        assert self._app is not None
        await self._app.close()


async def _start(spec: SupervisorSpec, timeout: float | None, limit: int,
                 logs: Any = None) -> App:
    loop = asyncio.get_running_loop()
    telemetry.attach_default_reporter(thread=True)  # its log must not hold up the tree
    sync = blocking.App(spec)
    app = App(sync, loop, limit)
    link = sync._link
    ready = link.launch(spec, logs)
    try:
        await asyncio.wait_for(asyncio.wrap_future(ready), timeout)
    except TimeoutError:
        await asyncio.to_thread(link.kill_root)
        raise StartError(f"the tree {spec.id!r} did not start within {timeout}s",
                         path="", category="timeout_error") from None
    except StartError:
        await asyncio.shield(app._gone)  # the root stops what had started, then exits
        raise
    except asyncio.CancelledError:
        await asyncio.to_thread(link.kill_root)
        raise
    blocking.live_apps.add(sync)  # stopped at interpreter exit if nobody did
    return app


async def _connect(path: Any, timeout: float, server_uid: int | None, limit: int) -> App:
    loop = asyncio.get_running_loop()
    sync = await asyncio.to_thread(blocking.connect, path, timeout=timeout,
                                   server_uid=server_uid)
    return App(sync, loop, limit)


class App:
    """A running tree, on one event loop. Use `supervisor.aio.start(spec)` or
    `supervisor.aio.connect()`; every method is awaited on that loop."""

    def __init__(self, sync: blocking.App, loop: asyncio.AbstractEventLoop,
                 limit: int = CALLS_IN_FLIGHT) -> None:
        self.spec = sync.spec
        self._sync = sync
        self._link = sync._link
        self._loop = loop
        self._gone = loop.create_future()  # set on the loop once the tree is gone
        self._router = AsyncRouter(self._link, loop, self._gone, limit)
        self._pools: dict[str, Any] = {}
        self._link.after_gone(self._on_gone)

    @property
    def pid(self) -> int | None:
        """The root supervisor's pid (None before it started)."""
        return self._link.pid

    def _on_gone(self) -> None:
        # On the link's reader thread, once the tree is gone and the pools' descriptors
        # are released: hand the end over to the loop, which owns the channels (their
        # descriptors are registered with it).
        try:
            self._loop.call_soon_threadsafe(self._tree_gone)
        except RuntimeError:  # the loop is closed: nothing of ours is left on it
            pass

    def _tree_gone(self) -> None:
        self._router.close_all()
        if not self._gone.done():
            self._gone.set_result(None)

    def _here(self) -> None:
        if asyncio.get_running_loop() is not self._loop:
            raise RuntimeError("this App belongs to another event loop")

    # ------------------------------------------------------------------ start / stop
    async def close(self) -> None:
        """Disconnect from a tree you `connect`ed to (it keeps running); for a tree this
        App started, the same as `stop()`."""
        if self._link.proc is not None:
            await self.stop()
            return
        if not self._gone.done():
            await asyncio.to_thread(self._link.disconnect)
            await asyncio.shield(self._gone)

    async def stop(self, timeout: float | None = None) -> None:
        """`App.stop` awaited: shut the tree down and return when no descendant is left
        (and every channel of this App is closed). On a `connect`ed App it only asks."""
        self._here()
        link = self._link
        if link.pid is None or link.exited.is_set():
            await self._settled()
            return
        if link.proc is None:
            await self._ask_to_stop(timeout)
            return
        try:
            descendants = psutil.Process(link.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            await request(link, P.Shutdown(id=0), timeout=timeout)
        except SupervisorError:
            pass  # the root is already going; waiting for it below is what matters
        if not await self._wait_gone(timeout):
            await asyncio.to_thread(link.kill_root)
        await self._settled()
        alive = [proc for proc in descendants if proc.is_running()]
        if alive:  # rare: the root is gone, so they are going; not waited on the loop
            await asyncio.to_thread(_kill_after, alive, 5.0)

    async def _ask_to_stop(self, timeout: float | None) -> None:
        try:
            await request(self._link, P.Shutdown(id=0), timeout=timeout)
        except WorkerCrashed:
            pass  # the connection ended before the answer: the exit report tells why
        if not await self._wait_gone(timeout):
            raise CallTimeout(f"the tree (root pid {self.pid}) did not stop within "
                              f"{timeout}s")
        if self._link.exit_reason == DISCONNECTED:
            raise WorkerCrashed(f"the connection to the tree (root pid {self.pid}) ended "
                                "before the root reported its exit; it may still run",
                                path="")

    async def _wait_gone(self, timeout: float | None) -> bool:
        try:
            await asyncio.wait_for(asyncio.shield(self._gone), timeout)
        except TimeoutError:
            return False
        return True

    async def _settled(self) -> None:
        if self._link.exited.is_set() or self._gone.done():
            await asyncio.shield(self._gone)  # the loop's share of the end has run

    async def wait(self, timeout: float | None = None) -> str | None:
        """The root's exit reason once it has exited, or None on timeout (as `App.wait`)."""
        if not await self._wait_gone(timeout):
            return None
        return self._link.exit_reason

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    # ------------------------------------------------------------------ requests
    async def _request(self, msg: Any, timeout: float | None = 30.0) -> Any:
        self._here()
        return await request(self._link, msg, timeout=timeout)

    async def which_children(self, path: str = "") -> list[ChildInfo]:
        """The children of the supervisor at `path`, in start order."""
        value = await self._request(P.WhichChildren(id=0, path=path))
        return msgspec.convert(value, list[ChildInfo])

    async def count_children(self, path: str = "") -> dict[str, int]:
        """``{"specs", "active", "supervisors", "workers"}`` of the supervisor at `path`."""
        return await self._request(P.CountChildren(id=0, path=path))

    async def start_child(self, path: str, spec: Any = None, *, args: Any = (),
                          kwargs: dict[str, Any] | None = None) -> str:
        """`App.start_child`, awaited: the new child's id; the same errors."""
        try:
            blob = pickle.dumps(spec) if spec is not None else None
        except Exception as exc:  # pickle raises several types for what it cannot carry
            raise ConfigError(f"cannot send the spec to the supervisor: {type(exc).__name__}:"
                              f" {exc}", field="spec") from exc
        args = list(args) if isinstance(args, list | tuple) else args
        return await self._request(P.StartChild(id=0, path=path, spec=blob, args=args,
                                                kwargs=kwargs), timeout=None)

    async def terminate_child(self, path: str, child_id: str) -> None:
        """Stop a child (per its shutdown spec); it is not restarted."""
        await self._request(P.TerminateChild(id=0, path=path, child_id=child_id),
                            timeout=None)

    async def restart_child(self, path: str, child_id: str) -> int:
        """Start a stopped child again; returns its pid."""
        return await self._request(P.RestartChild(id=0, path=path, child_id=child_id),
                                   timeout=None)

    async def delete_child(self, path: str, child_id: str) -> None:
        """Forget a stopped child's spec."""
        await self._request(P.DeleteChild(id=0, path=path, child_id=child_id))

    async def status(self) -> dict[str, Any]:
        """The whole tree, as `App.status()`."""
        raws: dict[str, Any] = {}

        async def fetch(path: str) -> None:
            raws[path] = raw = await self._request(P.GetStatus(id=0, path=path))
            for info in children_of(raw):
                if info.kind == "supervisor" and info.state == "running":
                    await fetch(info.path)

        await fetch("")  # every answer first, awaited; then the one tree walk, from them
        return collect(lambda msg: raws[msg.path])[0]

    # ------------------------------------------------------------------ calls
    async def call(self, path: str, method: str, *args: Any, timeout: float | None = None,
                   retry: bool = True, idempotent: bool = False, session: str | None = None,
                   **kwargs: Any) -> Any:
        """`App.call`, awaited: the same semantics, errors and retry rules.

        Cancelling the awaiting task (or `asyncio.timeout` around it) takes back a call
        not sent yet; of a call in flight, the reply is dropped when it comes and the
        worker is not told. Only the call's own `timeout` (CallTimeout) applies the
        child's ``on_timeout`` rule.
        """
        self._here()
        return await self._router.call(path, method, args, kwargs, timeout=timeout,
                                       retry=retry, idempotent=idempotent, session=session)

    async def cast(self, path: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Send `method` to the worker at `path` without waiting for a result (only, past
        the channel's high-water mark, for its outbox to drain)."""
        self._here()
        await self._router.cast(path, method, args, kwargs)

    def worker(self, path: str) -> WorkerProxy:
        """A proxy whose attribute calls are ``await app.call(path, name, ...)``."""
        return WorkerProxy(self, path, {})

    def pool(self, path: str) -> Any:
        """The asyncio client of the `Pool` at `path` (one per path and App)."""
        from .pool import AsyncPool

        client = self._pools.get(path)
        if client is None:
            client = self._pools[path] = AsyncPool(self._link, path, self._loop,
                                                   self._router.pause)
        return client


def _kill_after(procs: list[psutil.Process], timeout: float) -> None:
    _, alive = psutil.wait_procs(procs, timeout=timeout)
    for proc in alive:
        proc.kill()


# `await app.worker(path).incr(5)`: the blocking App's proxy calls `app.call`, which here
# returns the coroutine to await.
WorkerProxy = blocking.WorkerProxy
