"""Which workers the pool has: learning them, growing, retiring, and the tree's end.

    start()        the pool's size, limits and workers, asked from the tree once
    a worker (re)started  ──telemetry──▶ kick: serve whoever waits for capacity
    memory_exceeded       ──telemetry──▶ its link drains: nothing new is sent there
    every usable slot busy ──grow──▶ a thread: start_child(pool) ─▶ a new overflow Slot
    an idle overflow slot  ──retire_due (a timer)──▶ a thread: terminate + delete it
    the root exited        ──tree_gone──▶ every queued and in-flight call fails, the
                                          pool's descriptors are released

The telemetry hook runs on the App's reader thread: it only takes the lock, or schedules
work on the pool's timer thread (a request from the reader thread would wait for itself).
Starting and stopping a worker are control requests that take milliseconds (or the
worker's shutdown grace), so they run on short-lived threads, never under the lock nor on
the timer thread. Both hooks hold the pool weakly, so a dropped App takes its pool client
with it.
"""

from __future__ import annotations

import threading
import time
import weakref
from typing import Any

import msgspec
from loguru import logger

from .. import telemetry
from ..errors import NoSuchChild, SupervisorError
from ..wire import messages as P
from .io import PoolIO
from .link import Slot
from .state import Effects

__all__ = ["Membership"]


class Membership:
    """The workers of one pool as its client knows them (see the module doc)."""

    def __init__(self, io: PoolIO) -> None:
        self.io = io
        self.state = io.state
        self.root = io.root
        self.started = False
        self._start_lock = threading.Lock()
        io.on_grow = self._grow
        io.on_retire_due = self._retire_due

    # ------------------------------------------------------------------ start
    def start(self) -> None:
        """Learn the pool's size, limits and workers (once). Raises NoSuchChild when
        its path is not a Pool."""
        if self.started:
            return
        with self._start_lock:
            if self.started:
                return
            state = self.state
            raw = self.root.request(P.GetStatus(id=0, path=state.path))
            facts = raw.get("pool")
            if facts is None:
                raise NoSuchChild(f"{state.path!r} is a supervisor, not a Pool",
                                  path=state.path)
            with state.lock:
                state.size, state.max_overflow = facts["size"], facts["max_overflow"]
                state.checkout_timeout = facts["checkout_timeout"]
                for info in msgspec.convert(raw["children"], list[P.ChildInfo]):
                    slot = state.new_slot(info.id, overflow=False)
                    slot.overflow = slot.index >= state.size  # adopted: retired when idle
                    state.add_slot(slot)
            self._watch_tree()
            self.started = True

    def _watch_tree(self) -> None:
        ref = weakref.ref(self)
        handler_id = f"supervisor-pool-{id(self)}"

        def on_event(event: Any, measurements: Any, metadata: Any) -> None:
            target = ref()
            if target is None:
                telemetry.detach(handler_id)
            else:
                target._on_child_event(event[-1], metadata)

        def on_gone() -> None:  # on the link's reader thread, before it reports the end
            telemetry.detach(handler_id)
            target = ref()
            if target is not None:
                target.tree_gone()

        telemetry.attach(handler_id, [("supervisor", "child", "started"),
                                      ("supervisor", "child", "memory_exceeded")], on_event)
        self.root.on_gone(on_gone)

    def _on_child_event(self, name: str, metadata: Any) -> None:
        # A worker over its memory limit is stopped by its supervisor, which says so first
        # ("memory_exceeded"): the pool stops sending it calls at once, so calls queued
        # meanwhile go to its replacement.
        state = self.state
        path = metadata.get("path") or ""
        prefix = f"{state.path}/" if state.path else ""
        if not path.startswith(prefix) or "/" in path[len(prefix):]:
            return  # not one of our workers
        if name == "started":
            self.io.timers.call_soon(self.kick)
            return
        pid = self.io.decide(lambda fx: state.leaving(
            path, "is leaving (over its memory limit)", fx))
        if pid is not None:
            telemetry.execute(("supervisor", "pool", "worker_leaving"), {"time": time.time()},
                              {"path": path, "id": metadata.get("id"), "pid": pid,
                               "pool": state.path, "reason": "memory_limit",
                               "category": "resource_error"})

    def kick(self) -> None:
        """A worker of the pool (re)started: serve whoever waits for capacity."""
        self.io.decide(self.state.refresh)

    # ------------------------------------------------------------------ overflow
    def _grow(self) -> None:
        threading.Thread(target=self._start_overflow, daemon=True,
                         name=f"pool-grow-{self.state.path}").start()

    def _start_overflow(self) -> None:
        state = self.state
        try:
            child_id = self.root.request(P.StartChild(id=0, path=state.path), timeout=None)
        except SupervisorError as exc:
            logger.warning("pool {!r}: could not start an overflow worker: {}", state.path,
                           exc)
            self.io.decide(lambda fx: state.grown(None, fx))
            return
        slot = state.new_slot(child_id, overflow=True)
        self.io.decide(lambda fx: state.grown(slot, fx))
        self._emit("overflow_started", slot)

    def _retire_due(self, slot: Slot) -> None:
        if self.io.decide(lambda fx: self.state.retire_due(slot, fx)):
            threading.Thread(target=self._retire, args=(slot,), daemon=True,
                             name=f"pool-retire-{slot.id}").start()

    def _retire(self, slot: Slot) -> None:
        state = self.state
        try:
            self.root.request(P.TerminateChild(id=0, path=state.path, child_id=slot.id),
                              timeout=None)
            self.root.request(P.DeleteChild(id=0, path=state.path, child_id=slot.id))
        except SupervisorError as exc:  # gone already (the tree stops, or it was deleted)
            logger.debug("pool {!r}: retiring {!r}: {}", state.path, slot.id, exc)
        finally:
            with state.lock:
                state.remove_slot(slot)
        self._emit("overflow_retired", slot)

    def _emit(self, name: str, slot: Slot) -> None:
        telemetry.execute(("supervisor", "pool", name), {"time": time.time()}, {
            "path": slot.path, "id": slot.id, "pool": self.state.path, "pid": None,
            "reason": name, "category": None})

    # ------------------------------------------------------------------ the tree's end
    def tree_gone(self) -> None:
        """The root exited: fail everything still queued or in flight, wake every waiter,
        and release the pool's descriptors (its links, its watcher) before returning.
        Idempotent."""
        io = self.io
        fx = Effects()
        with self.state.lock:
            if not self.state.tree_gone(fx):
                return
            io.watcher.closed = True  # under the lock: no watcher thread starts after this
        io.run(fx)
        io.watcher.close()
