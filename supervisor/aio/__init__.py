"""The asyncio client: ``async with supervisor.aio.start(tree) as app``.

Calls to workers run on the caller's event loop (channels registered with the loop, no
thread per call); the decisions (retries, the call policy, errors, a pool's dispatch) are
the blocking client's, shared.
"""

from __future__ import annotations

from .app import App, WorkerProxy, connect, start
from .channel import CALLS_IN_FLIGHT

__all__ = ["start", "connect", "App", "WorkerProxy", "CALLS_IN_FLIGHT"]
