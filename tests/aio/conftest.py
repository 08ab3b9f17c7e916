"""The asyncio client's tests.

`start_tree` is overridden here: the blocking client's tests that are imported into this
folder (test_parity.py) run again through the asyncio client. Their App is a `SyncView`:
an asyncio App on an event loop in a thread of its own, every method a coroutine run on
that loop and waited for, so the same assertions check the same semantics.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import Future
from typing import Any

import pytest

import supervisor.aio

_WAIT = 120.0  # a test's own timeouts come first; this only keeps a hang bounded


class LoopThread:
    """An event loop running in a thread (so blocking tests can drive the asyncio App)."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop",
                                       daemon=True)
        self.thread.start()

    def run(self, coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(_WAIT)

    def close(self) -> None:
        async def quiesce() -> None:
            current = asyncio.current_task()
            others = [t for t in asyncio.all_tasks() if t is not current]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self.loop.shutdown_default_executor()

        self.run(quiesce())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class SyncView:
    """The blocking App's methods over an asyncio App (see the module doc)."""

    def __init__(self, runner: LoopThread, app: supervisor.aio.App) -> None:
        self._run = runner.run
        self._runner = runner
        self.aio = app

    @property
    def pid(self) -> int | None:
        return self.aio.pid

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.aio, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))

    def worker(self, path: str) -> _SyncProxy:
        return _SyncProxy(self._run, self.aio.worker(path))

    def pool(self, path: str) -> SyncPool:
        return SyncPool(self._runner, self.aio.pool(path))


class _SyncProxy:
    def __init__(self, run: Any, proxy: Any) -> None:
        self._run = run
        self._proxy = proxy

    def options(self, **options: Any) -> _SyncProxy:
        return _SyncProxy(self._run, self._proxy.options(**options))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._proxy, name)
        return lambda *args, **kwargs: self._run(method(*args, **kwargs))


class SyncPool:
    """The blocking pool client's methods over an `AsyncPool`."""

    def __init__(self, runner: LoopThread, pool: Any) -> None:
        self._runner = runner
        self.aio = pool

    def options(self, **options: Any) -> SyncPool:
        return SyncPool(self._runner, self.aio.options(**options))

    def workers(self) -> list[dict[str, Any]]:
        return self.aio.workers()

    def call(self, *args: Any, **kwargs: Any) -> Any:
        return self._runner.run(self.aio.call(*args, **kwargs))

    def execute_in_session(self, *args: Any, **kwargs: Any) -> Any:
        return self._runner.run(self.aio.execute_in_session(*args, **kwargs))

    def end_session(self, session_id: str) -> bool:
        return self._runner.run(self.aio.end_session(session_id))

    def submit(self, method: Any, /, *args: Any, **kwargs: Any) -> Future:
        async def submit() -> Any:
            return await self.aio.submit(method, *args, **kwargs)

        return asyncio.run_coroutine_threadsafe(submit(), self._runner.loop)

    def map(self, *args: Any, **kwargs: Any) -> Any:
        results = self.aio.map(*args, **kwargs)  # scheduled at once, as the blocking map

        def iterate() -> Any:
            while True:
                try:
                    yield self._runner.run(results.__anext__())
                except StopAsyncIteration:
                    return

        return iterate()


@pytest.fixture
def start_tree():
    """start_tree(spec) -> SyncView; every App is stopped and the loop closed at teardown,
    even on failure."""
    runner = LoopThread()
    apps: list[supervisor.aio.App] = []

    def _start(spec: Any, **kwargs: Any) -> SyncView:
        async def start() -> supervisor.aio.App:
            return await supervisor.aio.start(spec, **kwargs)

        app = runner.run(start())
        apps.append(app)
        return SyncView(runner, app)

    yield _start
    try:
        for app in apps:
            runner.run(app.stop(timeout=10))
    finally:
        runner.close()
