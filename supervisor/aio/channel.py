"""The caller's end of a direct channel to one worker, driven by the running event loop.

The socket is non-blocking and registered with ``loop.add_reader`` for as long as the
channel is open: replies are read by a loop callback and set on the callers' futures, with
no thread on the path. A call to an idle worker is written at once; while calls are in
flight, frames wait in `outbox` (in order, the head possibly half written) and leave
together at the end of the loop's tick, or when ``loop.add_writer`` says there is room.

Backpressure: at most `limit` calls are in flight on a channel (sent or waiting in the
outbox, and not answered yet, including calls whose caller gave up); a further caller
waits for room, first come first served. A cast waits until the outbox is empty again
once it holds more than `_HIGH_WATER` bytes. So a caller that awaits no replies cannot
grow the outbox without bound.

Never sent vs. may have run: a call whose frame is still wholly in the outbox when the
channel ends, or when the worker says it is leaving (its `Closing` notice shuts our
writing half), never reached the worker and fails with `NotSent` (safe to send
elsewhere); a call whose frame left fails with WorkerCrashed. A caller that gives up
(cancelled, timed out) takes its frame out of the outbox when it has not started to
leave; otherwise the reply is dropped when it comes.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from ..client.channel import NotSent, screen
from ..errors import ProtocolError, WorkerCrashed
from ..wire import messages as P
from ..wire.framing import FrameReader
from ..wire.policy import CallPolicy

__all__ = ["AsyncChannel", "CALLS_IN_FLIGHT", "expire"]

CALLS_IN_FLIGHT = 1024  # the default limit of calls in flight per channel
_HIGH_WATER = 1 << 20  # outbox bytes past which a cast waits for the outbox to empty
_WRITE_BATCH = 1 << 18  # bytes of queued frames joined into one write
_NEVER = float("inf")


def expire(fut: asyncio.Future) -> None:
    """A deadline passed: the waiter on `fut` gets TimeoutError (a timer's callback)."""
    if not fut.done():
        fut.set_exception(TimeoutError())


class AsyncChannel:
    """One worker's call channel on `loop` (see the module doc)."""

    def __init__(self, sock: socket.socket, path: str, policy: CallPolicy,
                 loop: asyncio.AbstractEventLoop, limit: int = CALLS_IN_FLIGHT) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.path = path
        self.policy = policy
        self.pid = policy.pid
        self.pickle_ok = policy.serializer == "pickle"  # as in CallChannel: the tree says
        self.loop = loop
        self.reader = FrameReader(P.CALL_CODEC)
        self.buffer = bytearray(65536)
        self.limit = limit
        self.load = 0  # calls holding room: sent or in the outbox, not answered yet
        # Callers waiting for room, first come first served. A freed unit is handed to
        # the first one still waiting (`load` unchanged); one that gave up is done and
        # skipped, so giving up costs nothing here.
        self.room_waiters: deque[asyncio.Future] = deque()
        self.replies: dict[int, asyncio.Future] = {}  # call id -> its caller's future
        self.abandoned: set[int] = set()  # ids whose callers gave up: their replies dropped
        self.outbox: deque[list[Any]] = deque()  # [call id (0: a cast), unsent bytes]
        self.outbox_bytes = 0
        self.head_started = False  # the head of the outbox is half written
        self.flush_soon = False  # a `_flush` is scheduled for this loop tick
        self.deadlines: list[tuple[float, int]] = []  # heap of (deadline, call id)
        self.timer: asyncio.TimerHandle | None = None  # armed for the nearest deadline
        self.timer_at = _NEVER
        self.writer_on = False  # registered with add_writer (the kernel's buffer is full)
        self.drained: list[asyncio.Future] = []  # casts waiting for the outbox to empty
        self.closed: str | None = None  # why the channel is dead, once it is
        self.draining: str | None = None  # set once the worker said it is leaving
        self._ids = itertools.count(1)
        loop.add_reader(self.fd, self._readable)

    @property
    def usable(self) -> bool:
        return self.closed is None and self.draining is None

    # ------------------------------------------------------------------ sending
    def encode_call(self, method: str, args: tuple, kwargs: dict[str, Any] | None,
                    session: str | None) -> tuple[int, bytes]:
        """A call's id and frame (EncodeError here, before any wait)."""
        cid = next(self._ids)
        return cid, P.CALL_CODEC.encode(P.Call(id=cid, method=method, args=args,
                                               kwargs=kwargs, session=session))

    def take_room(self) -> bool:
        """Room for one more call in flight, taken at once if there is some (nobody
        waits before us); else False: `wait_for_room`."""
        if self.load < self.limit and not self.room_waiters:
            self.load += 1
            return True
        return False

    def send(self, cid: int, frame: bytes) -> asyncio.Future:
        """Send a call that holds room; the future its reply is set on. Raises NotSent
        (its room freed) when the channel cannot carry it."""
        if not self.usable:
            self._free_room()
            raise NotSent(self.closed or self.draining)
        fut = self.loop.create_future()
        self.replies[cid] = fut
        self._write(cid, frame)  # a write that finds the channel dead fails `fut`: NotSent
        return fut

    async def cast(self, frame_for_id: Callable[[int], Any]) -> None:
        """Send a message that gets no reply; waits while the outbox is over its mark."""
        frame = P.CALL_CODEC.encode(frame_for_id(0))
        if not self.usable:
            raise NotSent(self.closed or self.draining)
        self._write(0, frame)
        if self.closed is not None:
            raise NotSent(self.closed)
        if self.outbox_bytes > _HIGH_WATER:
            fut = self.loop.create_future()
            self.drained.append(fut)
            await fut

    async def wait_for_room(self, deadline: float | None) -> None:
        """Wait, first come first served, until a unit of room is handed to us;
        TimeoutError past `deadline` (a `time.monotonic()` value)."""
        fut = self.loop.create_future()
        self.room_waiters.append(fut)
        timer = None if deadline is None else self.loop.call_later(
            max(0.0, deadline - time.monotonic()), expire, fut)
        try:
            await fut  # set when a unit is handed over: `load` counts us already
        except BaseException:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self._free_room()  # handed over just as we gave up: pass it on
            raise
        finally:
            if timer is not None:
                timer.cancel()

    def _free_room(self) -> None:
        waiters = self.room_waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return
        self.load -= 1

    def watch_deadline(self, cid: int, deadline: float) -> None:
        """Fail the call `cid` with TimeoutError at `deadline` (a `time.monotonic()`
        value) if no reply came by then. One timer per channel, armed for the nearest
        deadline, instead of one per call: a timer is an object and a heap entry of the
        loop's, which add up with thousands of calls in flight."""
        heapq.heappush(self.deadlines, (deadline, cid))
        if deadline < self.timer_at:
            self._arm(deadline)
        elif len(self.deadlines) > 2 * len(self.replies) + 64:
            # Answered calls' entries wait for their deadline: prune them now and then,
            # so the heap stays proportional to the calls in flight.
            self.deadlines = [(d, c) for d, c in self.deadlines if c in self.replies]
            heapq.heapify(self.deadlines)

    def _arm(self, when: float) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = self.loop.call_later(max(0.0, when - time.monotonic()),
                                          self._deadlines_due)

    def _deadlines_due(self) -> None:
        self.timer, self.timer_at = None, _NEVER
        heap, now = self.deadlines, time.monotonic()
        while heap and heap[0][0] <= now:
            _, cid = heapq.heappop(heap)
            fut = self.replies.get(cid)
            if fut is not None:
                expire(fut)
        if heap:
            self._arm(heap[0][0])

    def give_up(self, cid: int) -> None:
        """The caller of `cid` stopped waiting (cancelled or timed out). A frame that has
        not started to leave is taken back (the worker never sees it); otherwise the reply
        is dropped when it comes, and its room is freed then."""
        if self.replies.pop(cid, None) is None:
            return  # answered or failed already
        for index, entry in enumerate(self.outbox):
            if entry[0] == cid and not (index == 0 and self.head_started):
                del self.outbox[index]
                self.outbox_bytes -= len(entry[1])
                self._free_room()
                return
        self.abandoned.add(cid)

    def _write(self, cid: int, frame: bytes) -> None:
        # Nagle's rule, as the pool's: a call to an idle worker goes out at once; while
        # calls are in flight, frames queue and leave together at the end of this loop
        # tick (one write, one wake-up of the worker, for every call made meanwhile).
        if not self.outbox and self.load <= 1:
            try:
                sent = self.sock.send(frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.outbox.append([cid, memoryview(frame)])  # never left: NotSent
                self._write_failed(f"send failed: {exc}")
                return
            if sent == len(frame):
                return
            self.outbox.append([cid, memoryview(frame)[sent:]])
            self.outbox_bytes += len(frame) - sent
            self.head_started = sent > 0
            self._want_writable()
            return
        self.outbox.append([cid, memoryview(frame)])
        self.outbox_bytes += len(frame)
        if not self.flush_soon and not self.writer_on:
            self.flush_soon = True
            self.loop.call_soon(self._flush)

    def _want_writable(self) -> None:
        if not self.writer_on:
            self.writer_on = True
            self.loop.add_writer(self.fd, self._flush)

    def _flush(self) -> None:
        """Write what the outbox holds, up to `_WRITE_BATCH` bytes per write; what the
        kernel does not take waits for ``add_writer``."""
        self.flush_soon = False
        outbox = self.outbox
        while outbox and self.closed is None:
            chunks, size = [], 0
            for entry in outbox:
                chunks.append(entry[1])
                size += len(entry[1])
                if size >= _WRITE_BATCH:
                    break
            try:
                sent = self.sock.send(chunks[0] if len(chunks) == 1 else b"".join(chunks))
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self._write_failed(f"send failed: {exc}")
                return
            self.outbox_bytes -= sent
            full = sent == size
            while sent:
                entry = outbox[0]
                if sent >= len(entry[1]):
                    sent -= len(entry[1])
                    outbox.popleft()
                    self.head_started = False
                else:
                    entry[1] = entry[1][sent:]
                    self.head_started = True
                    sent = 0
            if not full:
                self._want_writable()
                return
        if self.writer_on:
            self.writer_on = False
            self.loop.remove_writer(self.fd)
        self._wake_drained()

    def _wake_drained(self) -> None:
        waiters, self.drained = self.drained, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    # ------------------------------------------------------------------ reading
    def _readable(self) -> None:
        try:
            n = self.sock.recv_into(self.buffer)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.close_because(f"channel error: {exc}")
            return
        if not n:
            self.close_because("the channel closed")
            return
        try:
            msgs, why = screen(self.reader.feed(memoryview(self.buffer)[:n]), self.pickle_ok)
        except ProtocolError as exc:
            self.close_because(f"bad frame from the worker: {exc}")
            return
        replies = self.replies
        for msg in msgs:
            if type(msg) is P.Closing:
                self._closing(msg)
                continue
            fut = replies.pop(msg.id, None)
            if fut is not None:
                self._free_room()
                if not fut.done():  # done: its caller's deadline passed this very tick
                    fut.set_result(msg)
            elif msg.id in self.abandoned:
                self.abandoned.discard(msg.id)
                self._free_room()
        if why is not None:
            self.close_because(why)

    def _closing(self, notice: Any) -> None:
        """The worker is leaving: nothing more is sent here (new calls go to its
        replacement); what waits in the outbox never reached it (NotSent). Replies to
        calls sent before are still read."""
        self.draining = notice.reason
        self._fail_outbox(NotSent(notice.reason))
        try:
            self.sock.shutdown(socket.SHUT_WR)  # tells the worker we saw the notice
        except OSError:  # already disconnected
            pass

    def _write_failed(self, why: str) -> None:
        """The worker stopped reading (it is leaving, or dead): what waits in the outbox
        never left (NotSent); calls sent before are still answered, read to the end of
        the channel (which fails whatever is left unanswered)."""
        if self.draining is None:
            self.draining = why
        self._fail_outbox(NotSent(why))
        if not self.replies and not self.abandoned:
            self.close_because(why)  # nothing more to read for

    def _fail_outbox(self, exc: BaseException) -> None:
        if self.writer_on:
            self.writer_on = False
            self.loop.remove_writer(self.fd)
        while self.outbox:
            cid, _ = self.outbox.popleft()
            if not cid:
                continue
            fut = self.replies.pop(cid, None)
            if fut is not None:
                self._free_room()
                if not fut.done():
                    fut.set_exception(exc)
            elif cid in self.abandoned:
                self.abandoned.discard(cid)
                self._free_room()
        self.outbox_bytes = 0
        self.head_started = False
        self._wake_drained()

    # ------------------------------------------------------------------ the end
    def close_because(self, why: str) -> None:
        """End the channel: calls not sent fail with NotSent, calls in flight with
        WorkerCrashed; the descriptor leaves the loop and is closed."""
        if self.closed is not None:
            return
        self.closed = why
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.deadlines = []
        self._fail_outbox(NotSent(why))
        self.loop.remove_reader(self.fd)
        replies, self.replies = self.replies, {}
        for fut in replies.values():
            self._free_room()
            if not fut.done():
                fut.set_exception(WorkerCrashed(
                    f"worker {self.path!r} (pid {self.pid}) died while the call was in "
                    f"flight ({why})", path=self.path))
        for _ in self.abandoned:
            self._free_room()
        self.abandoned.clear()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected
            pass
        self.sock.close()

    def close(self) -> None:
        self.close_because("closed by the caller")
