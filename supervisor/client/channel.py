"""The caller's end of a direct channel to one worker.

Several threads may call through one channel at once. No helper thread reads it: the
first waiting caller becomes the reader (leader), reads whatever replies arrive, files them
by call id and wakes their callers; when its own reply is in it hands the reading role on.
A lone caller therefore sends its frame and reads its own reply itself, with no thread
hand-off on the path, which is where peers lose most of their per-call time.

A caller that waits while another reads sleeps on a lock of its own (its bell). The reader
rings exactly the bells of the calls whose replies it filed, and a caller leaving with its
reply rings one sleeper to take over reading: nobody is woken to find nothing for it.

Writes take `send_lock`, reads happen outside `lock`: a writer blocked on a
full socket never stops the reader from draining replies (the worker may be blocked writing
those replies, waiting for us to read them).
"""

from __future__ import annotations

import itertools
import pickle
import socket
import struct
import threading
import time
from typing import Any

from ..errors import (
    CommandError,
    EncodeError,
    ProtocolError,
    WorkerCrashed,
    WorkerError,
)
from ..wire import messages as P
from ..wire.framing import FrameReader
from ..wire.policy import CallPolicy

__all__ = ["CallChannel", "NotSent", "reply_value", "screen"]


# The longest a blocking read waits before the caller re-checks its deadline.
_WAIT_SLICE = 1.0


class NotSent(Exception):
    """The call never left: the channel was already closed. Safe to send elsewhere."""


class CallChannel:
    def __init__(self, sock: socket.socket, path: str, policy: CallPolicy) -> None:
        self.sock = sock
        self.path = path
        self.policy = policy  # the worker's rules for its callers (pid, timeouts, retries)
        self.pid = policy.pid
        # Whether this worker opted in to pickle, as the tree said when the channel was
        # opened; a reply's own `pickled` flag is never taken at its word.
        self.pickle_ok = policy.serializer == "pickle"
        self.reader = FrameReader(P.CALL_CODEC)
        self.send_lock = threading.Lock()
        self.lock = threading.Lock()  # guards the state below
        self.reading = False  # a caller holds the reader's role
        self.results: dict[int, Any] = {}  # replies filed for callers not yet back
        self.waiting: set[int] = set()  # calls sent whose replies are not filed yet
        # Callers asleep while another reads, by call id: each waits to acquire its own
        # held lock, released (rung) once, by whoever pops it from here.
        self.sleepers: dict[int, threading.Lock] = {}
        self.buffer = bytearray(65536)  # read into, reused: no allocation per read
        self.rcvtimeo = float("inf")  # the SO_RCVTIMEO in force, in seconds
        self.closed: str | None = None  # why the channel is dead, once it is
        self.draining: str | None = None  # set once the worker said it is leaving
        self.retired = False  # let go by the router: closed once no call waits on it
        self._ids = itertools.count(1)

    def call(self, method: str, args: tuple, kwargs: dict[str, Any] | None,
             session: str | None, deadline: float | None) -> Any:
        """Send a Call and wait for its reply (Reply, Fail or NotRun): `send` then `wait`
        in one. Raises what those two raise.

        When no other thread is reading the channel, this caller takes the reader's role
        before it sends and reads its own reply straight off the socket: one lock round
        before the send and one after, nobody woken. Callers that come meanwhile sleep as
        in `wait`, and get their reply or the reader's role when this one is done.
        """
        cid = next(self._ids)
        frame = P.CALL_CODEC.encode(P.Call(id=cid, method=method, args=args, kwargs=kwargs,
                                           session=session))
        with self.lock:
            if self.closed is not None or self.draining is not None:
                raise NotSent(self.closed or self.draining)
            self.waiting.add(cid)
            lone = not self.reading
            if lone:
                self.reading = True
        if not lone:
            self._send(cid, frame)
            return self.wait(cid, deadline)
        try:
            self._send(cid, frame)
            msgs, why_closed = self._read(None if deadline is None
                                          else deadline - time.monotonic())
        except BaseException:  # NotSent, or an interrupt: give the reader's role back
            self._stop_reading(cid)
            raise
        if why_closed is None and len(msgs) == 1 and getattr(msgs[0], "id", None) == cid:
            self._stop_reading(cid)
            if self.retired:
                self._close_if_idle()
            return msgs[0]
        # Anything else (another caller's reply, a Closing, EOF, nothing yet): filed as the
        # reader files it; then this call waits like any other.
        self._done_reading(msgs, why_closed)
        return self.wait(cid, deadline)

    def send(self, msg_for_id: Any, expect_reply: bool = True) -> int:
        """Encode and send; returns the call id. Raises EncodeError or NotSent."""
        cid = next(self._ids)
        frame = P.CALL_CODEC.encode(msg_for_id(cid))
        with self.lock:
            if self.closed is not None or self.draining is not None:
                raise NotSent(self.closed or self.draining)
            if expect_reply:
                self.waiting.add(cid)
        self._send(cid, frame)
        return cid

    def _send(self, cid: int, frame: bytes) -> None:
        try:
            with self.send_lock:
                self.sock.sendall(frame)
        except OSError as exc:
            # The worker stopped reading (it is leaving, or dead): this frame never left
            # whole. Calls sent before may still be answered: they are read to the end.
            with self.lock:
                self.waiting.discard(cid)
                if self.draining is None:
                    self.draining = f"send failed: {exc}"
            raise NotSent(str(exc)) from exc

    def retire(self) -> None:
        """Take no new call; close once no call waits on the channel any more (the
        replies of calls in flight, or NotRun, are still read for their callers)."""
        with self.lock:
            self.retired = True
            if self.draining is None:
                self.draining = "let go by the caller"
            idle = not self.waiting
        if idle:
            self.close()

    def wait(self, cid: int, deadline: float | None) -> Any:
        """The reply for `cid`: a Reply or Fail message. Raises WorkerCrashed on EOF,
        TimeoutError past the deadline (the caller turns it into CallTimeout)."""
        try:
            return self._wait(cid, deadline)
        finally:
            if self.retired:
                self._close_if_idle()

    def _close_if_idle(self) -> None:
        with self.lock:
            idle = not self.waiting
        if idle:
            self.close()

    def _wait(self, cid: int, deadline: float | None) -> Any:
        while True:
            with self.lock:
                reply = self.results.pop(cid, None)
                if reply is not None:
                    self._pass_reading()
                    return reply
                if self.closed is not None:
                    self.waiting.discard(cid)
                    self._pass_reading()
                    raise WorkerCrashed(
                        f"worker {self.path!r} (pid {self.pid}) died while the call was in "
                        f"flight ({self.closed})", path=self.path)
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self.waiting.discard(cid)
                    self._pass_reading()
                    raise TimeoutError
                if self.reading:
                    bell = self.sleepers[cid] = threading.Lock()
                    bell.acquire()
                else:
                    bell = None
                    self.reading = True
            if bell is not None:
                # Rung when our reply is filed, when the reader's role is ours to take, or
                # when the channel closes; else the deadline (or the slice) ends the nap.
                bell.acquire(True, _WAIT_SLICE if remaining is None
                             else min(remaining, _WAIT_SLICE))
                with self.lock:
                    if self.sleepers.get(cid) is bell:  # not rung: the nap ran out
                        del self.sleepers[cid]
                continue
            try:
                msgs, why_closed = self._read(remaining)
            except BaseException:  # an interrupt: never leave the reader's role taken
                self._stop_reading(cid)
                raise
            self._done_reading(msgs, why_closed)

    def _stop_reading(self, cid: int) -> None:
        """The reader leaves with call `cid` settled (its reply in hand, or given up): it
        waits no more, and a sleeper takes over reading."""
        with self.lock:
            self.waiting.discard(cid)
            self.reading = False
            self._pass_reading()

    def _done_reading(self, msgs: list[Any], why_closed: str | None) -> None:
        """The reader gives up its role and files what it read (it then loops: to collect
        its own reply, or to take the role again)."""
        with self.lock:
            self.reading = False
            self._file(msgs, why_closed)

    def _file(self, msgs: list[Any], why_closed: str | None) -> None:
        """File what the reader read for the callers it belongs to and ring their bells;
        all of them once the channel is closed. Called with `lock` held, the reader's role
        already given up (so the reader itself needs no bell)."""
        sleepers = self.sleepers
        for msg in msgs:
            if type(msg) is P.Closing:
                self._closing(msg)
                continue
            if msg.id in self.waiting:
                self.waiting.discard(msg.id)
                self.results[msg.id] = msg
                bell = sleepers.pop(msg.id, None)
                if bell is not None:
                    bell.release()
        if why_closed is not None and self.closed is None:
            self.closed = why_closed
        if self.closed is not None:
            self._ring_all()

    def _pass_reading(self) -> None:
        """A caller is leaving `_wait` (with its reply, or an error): if nobody reads and
        callers sleep, ring one of them to take the reader's role. Called with `lock`
        held."""
        if not self.reading and self.sleepers:
            _, bell = self.sleepers.popitem()
            bell.release()

    def _ring_all(self) -> None:
        while self.sleepers:
            _, bell = self.sleepers.popitem()
            bell.release()

    def _read(self, timeout: float | None) -> tuple[list[Any], str | None]:
        # The socket stays in blocking mode (Python's timeout mode would add a poll to
        # every send and receive); the wait is bounded by SO_RCVTIMEO, changed only when
        # this call's deadline is nearer than the current setting, so the common case
        # costs one recv. A read that times out returns EAGAIN and the caller re-checks.
        if self.rcvtimeo != _WAIT_SLICE or (timeout is not None and timeout < _WAIT_SLICE):
            self._bound_wait(timeout)  # else: the slice in force is the one wanted
        try:
            n = self.sock.recv_into(self.buffer)
        except BlockingIOError:
            return [], None
        except OSError as exc:
            return [], f"channel error: {exc}"
        if not n:
            return [], "the channel closed"
        try:
            msgs = self.reader.feed(memoryview(self.buffer)[:n])
        except ProtocolError as exc:
            self._shutdown_socket()
            return [], f"bad frame from the worker: {exc}"
        if len(msgs) == 1 and (type(msgs[0]) is not P.Reply or not msgs[0].pickled):
            return msgs, None  # the common case: nothing to screen
        msgs, why = screen(msgs, self.pickle_ok)
        if why is not None:
            self._shutdown_socket()
        return msgs, why

    def _bound_wait(self, timeout: float | None) -> None:
        wanted = _WAIT_SLICE if timeout is None else min(max(timeout, 0.001), _WAIT_SLICE)
        if wanted < self.rcvtimeo or (self.rcvtimeo < _WAIT_SLICE and wanted == _WAIT_SLICE):
            seconds = int(wanted)
            micros = int((wanted - seconds) * 1_000_000)
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                 struct.pack("ll", seconds, micros))
            self.rcvtimeo = wanted

    def _closing(self, notice: Any) -> None:
        """The worker is leaving: send nothing more here (new calls go to its replacement)
        and close our side, which tells the worker we have seen the notice. Replies to
        calls sent before are still read."""
        self.draining = notice.reason
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:  # already disconnected
            pass

    def _mark_closed(self, why: str) -> None:
        with self.lock:
            if self.closed is None:
                self.closed = why
            self._ring_all()
        self._shutdown_socket()

    def _shutdown_socket(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:  # already disconnected
            pass

    def close(self) -> None:
        self._mark_closed("closed by the caller")
        with self.send_lock:  # never close a socket another thread is sending on
            self.sock.close()


def screen(msgs: list[Any], pickle_ok: bool) -> tuple[list[Any], str | None]:
    """The replies read from a call channel, as its worker's serializer allows them.

    A pickled Reply on a channel whose worker did not opt in to pickle (`pickle_ok`, from
    the tree's answer when the channel was opened) is a protocol violation, whatever the
    reply says: it is never unpickled. Its caller gets a ProtocolError (as a Fail), what
    came after it is dropped, and the reason to close the channel is returned (else None).
    """
    if pickle_ok:
        return msgs, None
    for index, msg in enumerate(msgs):
        if type(msg) is P.Reply and msg.pickled:
            why = ("a pickled reply from a worker that did not opt in to pickle "
                   "(serializer='msgpack'); not unpickled, the channel is closed")
            return [*msgs[:index], P.Fail(id=msg.id, category="communication_error",
                                          type="ProtocolError", message=why)], why
    return msgs, None


def reply_value(msg: Any, path: str, method: str) -> Any:
    """The result a Reply carries, or the classified error a Fail carries (raised).

    `msg` comes from `screen`: a pickled Reply reaches here only from a worker that opted
    in to pickle."""
    if isinstance(msg, P.Reply):
        return pickle.loads(msg.value) if msg.pickled else msg.value
    if msg.category == "python_error":
        raise CommandError(msg.message, remote_type=msg.type, remote_traceback=msg.traceback,
                           path=path, context={"operation": method})
    if msg.type == "EncodeError":
        raise EncodeError(msg.message, path=path, context={"operation": method})
    error = ProtocolError if msg.type == "ProtocolError" else WorkerError
    raise error(f"{msg.type}: {msg.message}", category=msg.category, path=path,
                context={"operation": method})
