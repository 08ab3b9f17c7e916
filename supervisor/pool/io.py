"""The pool's I/O: its links opened, written and read, and the state's effects carried out.

    open      link_of(): a socketpair end handed to the worker through the tree
              (NotRunning: the slot is down until a newer start of that worker is reported)
    write     send_sync() (a blocking caller's frame), presend() (a queued caller's frame,
              written for it), send_jobs() (a batch of async calls, one write)
    read      await_reply() (a blocking caller reads its own reply when nobody else reads)
              on_ready() (the watcher reads a link nobody else is reading)
    effects   run(): settle futures, write batches, arm timers, close dead links

`PoolIO` never decides: it takes the state's lock only to ask `PoolState` (which decides and
returns `Effects`), and does every system call, every wait and every callback outside that
lock, except where noted (a blocking caller waits on a condition of the lock).
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Callable
from concurrent.futures import CancelledError
from typing import Any

import msgspec

from ..client.link import RootLink
from ..client.retry import timed_out
from ..errors import (
    CallTimeout,
    ChildAbandoned,
    CircuitOpen,
    EncodeError,
    NoSuchChild,
    NotRunning,
    ProtocolError,
    SupervisorError,
    WorkerCrashed,
)
from ..wire import messages as P
from ..wire.framing import HEADER
from ..wire.policy import decode_policy
from .link import BUFFERED, STAR, Job, Link, Slot, SyncCall
from .results import settle, settle_all, start_all
from .state import Effects, PoolState, Presend, Waiter
from .threads import Timers, Watcher

__all__ = ["PoolIO"]

# What msgspec raises for a value it cannot encode (Codec.encode turns them into EncodeError).
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)
_LENGTH = struct.Struct(">I")  # a frame's length prefix (see wire.framing)

OPEN_TIMEOUT = 30.0  # seconds to get a channel from the tree (a control round trip)


class PoolIO:
    """The I/O side of one pool: `root` is the link to the tree's root (requests, start
    counts, the tree's end). `on_grow` and `on_retire_due(slot)` are set by the pool's membership
    (starting and retiring overflow workers happens there)."""

    def __init__(self, state: PoolState, root: RootLink) -> None:
        self.state = state
        self.root = root
        self.watcher = Watcher(f"pool-watch-{state.path}", state.lock, self.on_ready)
        self.timers = Timers(f"pool-timers-{state.path}")
        self.on_grow: Callable[[], None] = lambda: None
        self.on_retire_due: Callable[[Slot], None] = lambda slot: None

    # ------------------------------------------------------------------ effects
    def run(self, fx: Effects, reading: bool = False) -> None:
        """Carry out what the state decided (never under the lock: settling runs the
        futures' callbacks, which may call back into the pool).

        `reading`: we hold a link's reading role (or just read for the watcher). Then a
        batch for a worker whose link is not open goes to the timers' thread: opening is a
        request to the tree, which may wait on a leaving worker (its supervisor answers
        once it exited), and that worker waits for its callers to read its Closing
        notice, maybe on the very link we read."""
        if fx.stop_writing:
            # First: a leaving worker waits for our side to close before it exits, and its
            # supervisor answers nothing (opening a link to its replacement, below) until
            # it has.
            for link in fx.stop_writing:
                link.stop_writing()
        if fx.settle:
            settle_all(fx.settle)
        if fx.presend:
            for send in fx.presend:
                self.presend(send)
        if fx.send:
            for slot, jobs in fx.send:
                if reading and slot.link is None:
                    self.timers.call_soon(lambda slot=slot, jobs=jobs: self.send_jobs(slot, jobs))
                else:
                    self.send_jobs(slot, jobs)
        if fx.close:
            for link in fx.close:
                self._close(link)
        if fx.progress:
            for when, link in fx.progress:
                self.timers.call_at(when, lambda link=link: self._progress_due(link))
        if fx.retire:
            for when, slot in fx.retire:
                self.timers.call_at(when, lambda slot=slot: self.on_retire_due(slot))
        if fx.resend:
            for delay, jobs in fx.resend:
                self.timers.call_later(delay, lambda jobs=jobs: self._resend(jobs))
        if fx.grow:
            self.on_grow()

    def decide(self, decide: Callable[[Effects], Any]) -> Any:
        """Run `decide(fx)` under the lock, then its effects outside it; its result."""
        fx = Effects()
        with self.state.lock:
            result = decide(fx)
        self.run(fx)
        return result

    def _close(self, link: Link) -> None:
        # A dead link: wake a reader blocked in poll for good, and release the sockets
        # once no thread reads them (a reader that lets go closes them then, see
        # `PoolState.release`).
        link.interrupt()
        with self.state.lock:
            if link.reading or link.fds_closed:
                return
            self.watcher.remove(link)
            link.close_fds()

    def _progress_due(self, link: Link) -> None:
        stuck = self.decide(lambda fx: self.state.progress_due(link, fx))
        if stuck and link.policy.restarts_on_timeout:
            self.root.report_timeout(link.slot.path)

    def _resend(self, jobs: list[Job]) -> None:
        def requeue(fx: Effects) -> None:
            self.state.requeue(jobs)
            self.state.refresh(fx)

        self.decide(requeue)

    # ------------------------------------------------------------------ opening
    def link_of(self, slot: Slot) -> Link | None:
        """The slot's open link, opened if needed; None when its worker is not running.

        Raises WorkerCrashed when the tree is gone, CallTimeout when it does not answer.
        """
        state = self.state
        with state.lock:
            while True:
                link = slot.link
                if link is not None and link.closed is None and link.draining is None:
                    return link
                if state.gone:
                    raise WorkerCrashed("the tree is not running", path=slot.path)
                if not state.usable(slot) or slot not in state.slots:
                    return None
                if not slot.opening:
                    break
                state.open_cond.wait()  # another thread is opening it; share theirs
            slot.opening = True
        link = None
        try:
            link = self._open(slot)
        finally:
            with state.lock:
                slot.opening = False
                gone = state.gone
                if link is not None and not gone:
                    slot.link = link
                    self.watcher.add(link)
                state.open_cond.notify_all()
        if link is not None:
            if gone:  # the tree ended while we asked: nobody else will close this one
                link.close_fds()
                raise WorkerCrashed("the tree is not running", path=slot.path)
            self.watcher.apply(link)
        return link

    def _open(self, slot: Slot) -> Link | None:
        # Read the start count before asking: if the worker is down, a start reported
        # after this read makes the slot usable again (no lost wake-up, see `usable`).
        state = self.state
        generation = self.root.generation_of(slot.path)
        mine, theirs = socket.socketpair()
        try:
            policy = decode_policy(self.root.request(P.OpenChannel(id=0, path=slot.path),
                                                      fds=(theirs.fileno(),),
                                                      timeout=OPEN_TIMEOUT))
        except msgspec.ValidationError as exc:
            mine.close()
            raise ProtocolError(f"the call policy of {slot.path!r} does not decode: {exc}",
                                path=slot.path) from None
        except (NotRunning, CircuitOpen, ChildAbandoned):
            mine.close()
            with state.lock:
                state.mark_down(slot, generation)
            return None
        except NoSuchChild:  # deleted behind our back (terminate_child + delete_child)
            mine.close()
            with state.lock:
                state.remove_slot(slot, "was deleted")
            return None
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return Link(slot, mine, policy, generation, state.lock)

    # ------------------------------------------------------------------ blocking calls
    def checkout(self, session: str | None, limit: int, on_lost: str, deadline: float,
                 cid: int, frame: bytes) -> tuple[Slot, tuple[Link, SyncCall] | None, bool]:
        """A slot with room for one blocking call, in arrival order (FIFO).

        Also, when the slot's channel is open: the link and the entry registered there
        for `cid` (else None), and whether the frame was already written for the caller
        (a queued caller's is, see `Waiter`).

        Raises PoolExhausted past `deadline`, SessionLost for a lost session (unless
        `on_lost` is "reassign"), WorkerCrashed once the tree is gone.
        """
        state = self.state
        got = self.checkout_nowait(session, limit, on_lost, cid, frame)
        if type(got) is not Waiter:
            return got
        waiter = got
        with state.lock:
            try:
                self._await_slot(waiter, deadline)
            finally:
                state.waiter_gives_up(waiter)
        return waiter.slot, waiter.sent, waiter.sent is not None

    def checkout_nowait(self, session: str | None, limit: int, on_lost: str, cid: int,
                        frame: bytes, wake: Callable[[], None] | None = None
                        ) -> tuple[Slot, tuple[Link, SyncCall] | None, bool] | Waiter:
        """`checkout`'s first half: the slot (as `checkout` returns it), or the Waiter
        queued for one (whose `slot`, `sent` or `error` is set before `wake()` or its
        condition says so)."""
        state = self.state
        fx = Effects()
        with state.lock:
            got = state.checkout(session, limit, on_lost, cid, frame, wake)
            if type(got) is not Waiter:
                slot, sent = got
                waiter = None
            else:
                waiter = got
                state.serve(fx)
                if waiter.slot is None:
                    state.maybe_grow(fx)
        if waiter is None:
            if sent is not None:
                self.watcher.apply(sent[0])  # registered here: the watcher steps back
            return slot, sent, False
        self.run(fx)  # frames of callers served before us, an overflow start
        return waiter

    def _await_slot(self, waiter: Waiter, deadline: float) -> None:
        state = self.state
        while waiter.slot is None:
            if waiter.error is not None:
                raise waiter.error
            if state.gone:
                raise WorkerCrashed("the tree is not running", path=state.path)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise state.exhausted(waiter.session)
            waiter.cond.wait(remaining)

    def checkin(self, slot: Slot) -> None:
        self.decide(lambda fx: self.state.checkin(slot, fx))

    def register(self, link: Link, session: str | None, on_lost: str,
                 cid: int, wake: Callable[[], None] | None = None) -> SyncCall | None:
        """Register a blocking call on an open link before its frame is written; None when
        it must be dispatched again (the link is closing, the session moved). Raises
        SessionLost."""
        state = self.state
        with state.lock:
            if session is not None and not state.sessions.reached(session, link, on_lost):
                return None
            if link.closed is not None or link.draining is not None:
                return None
            entry = state.register_sync(link, cid, wake)  # before the write: replies are quick
        self.watcher.apply(link)
        return entry

    def send_sync(self, link: Link, data: bytes, cid: int, reader: bool = True) -> bool:
        """Write one registered frame; False when it never left (dispatch it again).
        `reader` is False for a caller on an event loop (see `SyncCall.wake`)."""
        try:
            status = link.write(data)
        except OSError as exc:
            why = f"send failed: {exc}"
            self.decide(lambda fx: self.state.sync_not_sent(link, cid, why, fx, reader))
            self.watcher.apply(link)
            return False
        if status is BUFFERED:
            self.wake_io(link)
        return True

    def await_reply(self, link: Link, entry: SyncCall, cid: int,
                    deadline: float | None) -> Any:
        """The reply to `cid` (registered with `register`), reading the link ourselves
        when nobody else is (no thread hand-off for a lone caller). Raises WorkerCrashed,
        TimeoutError past `deadline`."""
        state = self.state
        fx = Effects()
        try:
            with state.lock:
                try:
                    while entry.reply is None:
                        # A frame still being written for us (`unsent`) may never leave:
                        # the writer then files NOT_SENT; a dead link says nothing yet.
                        closed = link.closed is not None
                        if closed and not entry.unsent:
                            link.waiting.pop(cid, None)
                            raise WorkerCrashed(
                                f"worker {link.slot.path!r} (pid {link.pid}) died while the "
                                f"call was in flight ({link.closed})", path=link.slot.path)
                        remaining = None if deadline is None else deadline - time.monotonic()
                        if remaining is not None and remaining <= 0:
                            link.waiting.pop(cid, None)
                            raise TimeoutError
                        if link.reading or closed:
                            link.cond.wait(remaining)
                            continue
                        self._read_once(link, remaining)
                finally:
                    link.readers -= 1
                    state.release(link, fx)
        finally:
            self.watcher.apply(link)  # before the effects: nobody else reads it till then
            self.run(fx)
        return entry.reply

    def timed_out(self, link: Link, method: str, limit: float) -> CallTimeout:
        def let_go() -> None:
            self.decide(lambda fx: self.state.timed_out(link, fx))

        return timed_out(method, link.slot.path, limit, link.policy, self.root.report_timeout,
                         let_go)

    def presend(self, send: Presend) -> None:
        """Write a queued caller's frame for it (see `Waiter`)."""
        link = send.link
        self.watcher.apply(link)  # disarmed when the entry was registered
        try:
            status = link.write(send.frame)
        except OSError as exc:
            why = f"send failed: {exc}"
            self.decide(lambda fx: self.state.presend_failed(send, why, fx))
            return
        with self.state.lock:
            self.state.present(send)
        if status is BUFFERED:
            self.wake_io(link)

    # ------------------------------------------------------------------ reading
    def on_ready(self, link: Link) -> None:
        """The watcher saw an event on a link nobody was reading (its thread)."""
        state = self.state
        fx = Effects()
        with state.lock:
            if link.reading or link.closed is not None:
                return
            self._read_once(link, 0)
            state.release(link, fx)
        self.watcher.apply(link)
        self.run(fx, reading=True)

    def _read_once(self, link: Link, timeout: float | None) -> None:
        """Hold the reading role for one read, file what came, run the follow-ups
        (called and returning with the lock held)."""
        lock = self.state.lock
        link.reading = True
        link.armed = False  # else what we read would wake the watcher too
        lock.release()
        try:
            self.watcher.apply(link)
            msgs, why = link.io_once(timeout)
        finally:
            lock.acquire()
            link.reading = False
        fx = Effects()
        self.state.file(link, msgs, why, fx)
        if fx.settle or fx.send or fx.presend or fx.close or fx.stop_writing \
                or fx.progress or fx.retire or fx.resend or fx.grow:
            lock.release()
            try:
                self.run(fx, reading=True)
            finally:
                lock.acquire()

    def wake_io(self, link: Link) -> None:
        """Bytes wait in the link's outbuf: make whoever reads it poll for writing too."""
        with self.state.lock:
            if link.reading:
                link.wake_reader()
            elif link.closed is None:
                link.armed = True
        self.watcher.apply(link)

    # ------------------------------------------------------------------ async calls
    def enqueue(self, jobs: list[Job], force: bool) -> None:
        """Queue calls and send what can go now; fails them if the tree is gone."""
        if not jobs:
            return
        state = self.state
        with state.lock:
            plan = state.enqueue(jobs, force)
            if plan:
                fx = Effects()
                state.plan(force, fx)
        if plan is None:
            return self._fail(jobs)
        if plan:
            self.run(fx)

    def enqueue_one(self, job: Job) -> None:
        """`enqueue` of one submitted call; while calls are queued already, in one
        section under the lock and nothing else (the common case under load)."""
        state = self.state
        with state.lock:
            if state.pending and not state.gone:
                # Calls queued before it mean every worker was busy (or down) when they
                # came, and whoever frees one plans again: this one just waits behind
                # them, as `PoolState.enqueue` decides for a batch.
                job.owner.count += 1
                state.pending.append(job)
                return
        self.enqueue([job], False)

    def _fail(self, jobs: list[Job]) -> None:
        exc = WorkerCrashed("the tree is not running", path=self.state.path)
        settle_all([(job, exc, self.state.path) for job in jobs])

    def cancel_queued(self, owner: Any) -> None:
        """Take `owner`'s calls that were not sent yet out of the queue and cancel them."""
        with self.state.lock:
            dropped = self.state.take_unsent(owner)
        for job in dropped:
            if job.index < 0:
                job.sink.cancel()
            else:  # the map's iterator raises it when it reaches the item, as a future would
                job.sink.settle(job.index, [], CancelledError())
        if dropped:
            owner.done(len(dropped))

    def send_jobs(self, slot: Slot, jobs: list[Job]) -> None:
        """Write `jobs` (already counted in `slot.load`) to the slot's worker in one write;
        jobs that cannot go there are queued again."""
        state = self.state
        try:
            link = self.link_of(slot)
        except SupervisorError as exc:  # the tree is gone or does not answer
            with state.lock:
                state.unload(slot, len(jobs))
            for job in jobs:
                settle(job, exc, slot.path)
            return
        live = self._start(slot, jobs) if link is not None else []
        if link is None or not live:
            self.decide(lambda fx: state.give_back(slot, jobs if link is None else [], fx))
            return
        calls, data = self._encode(slot, live)
        if not calls:
            return
        fx = Effects()
        with state.lock:
            registered = state.sent(link, calls)
            if registered:
                state.after_send(link, len(calls), fx)
            else:
                state.refresh(fx)
        self.run(fx)
        if registered:
            self._write(link, calls, data)

    def _start(self, slot: Slot, jobs: list[Job]) -> list[Job]:
        """Mark the calls running; drop those cancelled meanwhile (they are never sent)."""
        slow = start_all(jobs)  # the common case, in bulk
        if slow is None:
            return jobs
        dropped = set()
        for job in slow:
            job.started = True
            sink = job.sink
            if not (sink.set_running_or_notify_cancel() if job.index < 0
                    else not sink.cancelled):
                dropped.add(id(job))
                job.owner.done()
        if not dropped:
            return jobs
        with self.state.lock:
            self.state.unload(slot, len(dropped))
        return [job for job in jobs if id(job) not in dropped]

    def _encode(self, slot: Slot, live: list[Job]) -> tuple[list[tuple[int, Job]], Any]:
        """The frames of `live` back to back (one write), and (call id, job) per frame.
        A call whose arguments do not encode fails alone (EncodeError); the others go."""
        ids = self.state.ids
        codec = P.CALL_CODEC
        encode_into, limit, call = codec.encoder.encode_into, codec.max_frame, P.Call
        buf = bytearray()
        calls: list[tuple[int, Job]] = []
        pack_into, append, next_id = _LENGTH.pack_into, calls.append, ids.__next__
        start = 0
        try:
            # One pass, as `Codec.encode_many` does it (each body encoded in place after a
            # gap for its length), without a list of messages and a second list of ids.
            for job in live:
                cid = next_id()
                encode_into(call(cid, P.BATCH, (job.method, job.args, job.batch == STAR))
                            if job.batch else call(cid, job.method, job.args, job.kwargs),
                            buf, start + HEADER)
                end = len(buf)
                if end - start - HEADER > limit:
                    break
                pack_into(buf, start, end - start - HEADER)
                append((cid, job))
                start = end
            else:
                return calls, buf
        except _ENCODE_ERRORS:
            pass
        msgs = [P.Call(id=next(ids), method=P.BATCH,
                       args=(job.method, job.args, job.batch == STAR))
                if job.batch
                else P.Call(id=next(ids), method=job.method, args=job.args, kwargs=job.kwargs)
                for job in live]
        try:
            data = P.CALL_CODEC.encode_many(msgs)
            return [(msg.id, job) for msg, job in zip(msgs, live, strict=True)], data
        except EncodeError:
            pass  # find the culprits: only their calls fail
        calls, frames = [], []
        for msg, job in zip(msgs, live, strict=True):
            try:
                frames.append(P.CALL_CODEC.encode(msg))
            except EncodeError as exc:
                with self.state.lock:
                    self.state.unload(slot, 1)
                settle(job, exc, slot.path)
                continue
            calls.append((msg.id, job))
        return calls, b"".join(frames)

    def _write(self, link: Link, calls: list[tuple[int, Job]], data: bytes) -> None:
        try:
            status = link.write(data)
        except OSError as exc:
            why = f"send failed: {exc}"
            self.decide(lambda fx: self.state.not_sent(link, calls, why, fx))
            return
        # Written: from now on a dead link means these calls were in flight. Until this
        # point a reader that saw the link die (a leaving worker closes the channel once
        # we stopped writing) left them alone: a frame not yet written never ran. The
        # marks are cleared before `closed` is read, so a reader that skipped one set
        # `closed` first and we settle it; one that comes later settles it itself. The
        # lock is taken only then, not on every write.
        for _, job in calls:
            job.sending = False
        if link.closed is not None:
            self.decide(lambda fx: self.state.written(link, fx))
        if status is BUFFERED:
            self.wake_io(link)
