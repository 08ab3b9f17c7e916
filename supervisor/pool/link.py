"""A pool's view of one worker: its position (`Slot`) and its call channel (`Link`).

    caller threads ─┐  write(): non-blocking send, the rest to `outbuf`
    submit/map     ─┼──────────────────────────────▶ worker (one socketpair)
    the watcher    ─┘◀─ io_once(): poll, flush `outbuf`, recv replies (one reader at a time)

The link does I/O only; what a reply means (which caller, which future) is decided by the
pool core under its lock. Two rules keep it free of deadlocks:

- Nobody ever blocks in a write. A worker that is itself blocked writing replies to us
  reads nothing more until we read them; a thread blocked in ``sendall`` would then wait
  forever if it were also the only reader. So writes go out with MSG_DONTWAIT, and what the
  kernel does not take waits in `outbuf`, flushed by whoever holds the reading role when
  the socket becomes writable (it polls for both directions).
- A writer that leaves bytes in `outbuf` wakes the reader through `wake`.

The socket itself stays in blocking mode: switching it to a timeout would make a
concurrent send in another thread fail half-way and corrupt the stream.
"""

from __future__ import annotations

import enum
import select
import socket
import threading
from collections.abc import Callable
from typing import Any

import attrs
import msgspec

from ..client.channel import screen
from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some
from ..wire.policy import CallPolicy
from ..wire.wakeup import Wakeup

__all__ = ["Slot", "Link", "Job", "SyncCall", "Written", "SENT", "BUFFERED", "NOT_SENT",
           "Batch", "ONE", "STAR"]


class Written(enum.Enum):
    """What `Link.write` did with a frame."""

    SENT = "sent"  # the kernel took every byte
    BUFFERED = "buffered"  # some bytes wait in `outbuf`: the reader must be woken


SENT, BUFFERED = Written.SENT, Written.BUFFERED
_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR
_READ_SIZE = 262144
_local = threading.local()  # one read buffer per reading thread, reused


class _NotSent(enum.Enum):
    NOT_SENT = "not sent"


NOT_SENT = _NotSent.NOT_SENT  # a SyncCall's reply when its frame never left (send it again)


class SyncCall:
    """A blocking caller's place in a link's table: the reader files its reply here
    (or NOT_SENT when another thread's write of its frame failed).

    `wake` is set for a caller on an event loop: it never reads the link itself (the
    watcher does), and `wake()` (thread-safe, called under the pool's lock) tells it to
    look again whenever its reply is filed or the link dies.

    `unsent` is True while another thread still has to write the frame (a queued
    caller's, see `state.Presend`). Until that write is done, a dead link says nothing
    about the call: the worker may have closed the channel in a planned exit before the
    frame went out, and then the call never ran (the write fails and files NOT_SENT)."""

    __slots__ = ("reply", "wake", "unsent")

    def __init__(self, wake: Callable[[], None] | None = None) -> None:
        self.reply: Any = None
        self.wake = wake
        self.unsent = False


class Batch(enum.IntEnum):
    """`Job.batch`: a single call, or a map chunk of single arguments / argument tuples."""

    NONE = 0
    ONE = 1
    STAR = 2


ONE, STAR = Batch.ONE, Batch.STAR


class Job(msgspec.Struct, gc=False, eq=False):
    """One asynchronous call (`submit`, `map`), queued or in flight.

    `sink` is a `concurrent.futures.Future` when `index` is -1, else a map's result
    table and the item's position in it. `cap` is the most calls in flight per worker
    its caller allows (the view's pipeline). `attempt` counts sends after a crash (the
    matrix row's delays are indexed by it); `started` is set once the future was marked
    running (a cancelled one is dropped then, never sent). `owner` counts the client
    view's outstanding calls for ``shutdown(wait=True)``. A map chunk is one Job with
    `batch` set (ONE: `args` lists the items' single arguments; STAR: their argument
    tuples), run by the worker's `_batch` command from one frame and answered in one.
    `timeout` (a submit's own) bounds the call once sent; such a call runs alone on its
    worker (see `PoolState.plan`), so the worker replaced after it timed out takes no
    other call with it. `sending` is set while it is registered on a link but its frame
    not yet handed to the kernel: a dead link then says nothing about it (the writer
    settles it, see `PoolState.written`).

    A struct built in C and kept out of the cyclic GC (`gc=False`): one is made per
    `submit`, and a Python class's ``__init__`` plus GC tracking cost about 0.3 us of the
    submitting thread per call. Safe because a Job is never part of a reference cycle:
    it points at its sink, its owner (a Tracker) and the call's arguments, and none of
    those point back at it (the pool's tables that hold Jobs are not referenced by
    them). Compared by identity (`eq=False`), as a plain object.
    """

    method: str
    args: Any
    kwargs: dict | None
    sink: Any
    index: int
    owner: Any
    cap: int
    batch: Batch = Batch.NONE
    timeout: float | None = None
    attempt: int = 1
    started: bool = False
    sending: bool = False


@attrs.define(eq=False)
class Slot:
    """One worker position of the pool (``<pool id>-<index>``) as the client sees it; its
    process comes and goes. Every field is guarded by the pool state's lock.

    `load` counts the blocking callers checked out on it plus the async calls in flight on
    it. `link` is None until opened, and again once lost or draining. `down_gen` is set
    while the worker is known not to run: the App's start count for the path then; the
    slot is usable again once a newer start was reported (no fixed wait).
    """

    id: str
    path: str
    index: int
    overflow: bool
    load: int = 0
    link: Link | None = None
    down_gen: int | None = None
    opening: bool = False
    retiring: bool = False
    idle_since: float = 0.0
    retire_timer: bool = False
    # A call with its own timeout runs alone: while it is in flight (load > 0) the slot
    # takes nothing else. Stale once the load is back to 0 (that call was the only one).
    alone: bool = False


class Link:
    """The open channel to one worker process (`pid`), and the calls waiting on it.

    Fields other than the socket and `outbuf` are guarded by the pool core's lock (`cond`
    is a condition on it): `waiting` maps call ids to a `SyncCall` or a `Job`;
    `async_count` counts the Jobs among them; `reading` is True while one thread holds the
    reading role; `closed` says why the channel is dead (None while it lives); `draining`
    is the worker's Closing notice (it serves nothing new, replies to what it read).
    `armed` is True while the pool's watcher waits for its next event (see `pool.watcher`).
    `generation` is the App's start count for the path when the link was opened.
    """

    def __init__(self, slot: Slot, sock: socket.socket, policy: CallPolicy,
                 generation: int, lock: threading.Lock) -> None:
        self.slot = slot
        self.sock = sock
        self.policy = policy
        self.pid: int | None = policy.pid
        self.idempotent = policy.idempotent
        self.call_timeout: float | None = policy.call_timeout
        # As the tree said when the link was opened; never a reply's own `pickled` flag.
        self.pickle_ok = policy.serializer == "pickle"
        self.generation = generation
        self.cond = threading.Condition(lock)
        self.waiting: dict[int, Any] = {}
        self.async_count = 0
        self.reading = False
        self.readers = 0  # blocking calls registered whose callers still await a reply
        # The pool watcher's one-shot registration (see `pool.watcher`): `armed` is the
        # wanted state (under the pool's lock), the `kernel_*` fields what the kernel has
        # (under `elock`).
        self.armed = False
        self.elock = threading.Lock()
        self.registered = False
        self.kernel_armed = False
        self.kernel_out = False
        self.closed: str | None = None
        self.draining: str | None = None
        self.last_progress = 0.0  # monotonic time of the last async reply (or first send)
        self.progress_timer = False
        self.chunk = 1  # items in the largest map chunk in flight (replies come that far apart)
        self.timed: float | None = None  # the own timeout of the call in flight alone, if any
        self.reader = FrameReader(P.CALL_CODEC)
        self.wlock = threading.Lock()
        self.outbuf = bytearray()
        self.shut_when_flushed = False
        self.wake = Wakeup()
        self.fd = sock.fileno()
        self.poller = select.poll()
        self.poller.register(self.fd, select.POLLIN)
        self.poller.register(self.wake.fileno(), select.POLLIN)
        self.fds_closed = False

    # ------------------------------------------------------------------ writing
    def write(self, data: bytes) -> Written:
        """Hand `data` (whole frames) to the worker without blocking; SENT or BUFFERED.

        Raises OSError when the channel is broken; then no byte of `data` was sent (bytes
        already waiting in `outbuf` go first, so `data` is only appended behind them).
        """
        with self.wlock:
            if self.outbuf:
                self.outbuf += data
                return BUFFERED
            try:
                sent = self.sock.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                sent = 0
            if sent == len(data):
                return SENT
            self.outbuf += memoryview(data)[sent:]
            return BUFFERED

    def wake_reader(self) -> None:
        """Make the thread in `io_once` poll again (it then sees `outbuf`)."""
        with self.wlock:
            self.wake.set()

    def flush(self) -> str | None:
        """Send what `outbuf` holds, as much as the kernel takes; why it broke, or None."""
        with self.wlock:
            if self.outbuf:
                try:
                    sent = self.sock.send(self.outbuf, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    return None
                except OSError as exc:
                    return f"send failed: {exc}"
                del self.outbuf[:sent]
            if not self.outbuf and self.shut_when_flushed:
                self.shut_when_flushed = False
                self._shutdown(socket.SHUT_WR)
        return None

    def stop_writing(self) -> None:
        """The worker said it is leaving: send nothing new, and close our writing side
        once `outbuf` is out (frames still in it reach the worker, which answers them
        NotRun; cutting them off would leave calls that never get an answer)."""
        with self.wlock:
            if self.outbuf:
                self.shut_when_flushed = True
                return
        self._shutdown(socket.SHUT_WR)

    # ------------------------------------------------------------------ reading
    def io_once(self, timeout: float | None) -> tuple[list[Any], str | None]:
        """Wait for the socket (at most `timeout` s), flush, read once.

        Only the holder of the reading role calls this. Returns the replies read and, when
        the channel is dead (EOF, error, a bad frame), why.
        """
        if timeout is not None and timeout <= 0:
            return self._io_now()
        events = select.POLLIN | (select.POLLOUT if self.outbuf else 0)
        self.poller.modify(self.fd, events)
        ms = None if timeout is None else int(timeout * 1000) + 1
        msgs: list[Any] = []
        why = None
        for fd, ev in self.poller.poll(ms):
            if fd != self.fd:
                self.wake.drain()
                continue
            if ev & select.POLLOUT:
                why = self.flush()
            if why is None and ev & _READABLE:
                msgs, why = self._recv()
        return msgs, why

    def _io_now(self) -> tuple[list[Any], str | None]:
        # The watcher was told the socket is ready: flush and read without asking again
        # (each system call is a chance to lose the GIL to a busy submitting thread).
        why = self.flush() if self.outbuf else None
        if why is not None:
            return [], why
        buf = getattr(_local, "buf", None)
        if buf is None:
            buf = _local.buf = bytearray(_READ_SIZE)
        try:
            n = self.sock.recv_into(buf, _READ_SIZE, socket.MSG_DONTWAIT)
            if not n:
                self.reader.eof()  # raises for a frame cut short
                return [], "the worker closed the channel"
            with memoryview(buf) as view:
                return screen(self.reader.feed(view[:n]), self.pickle_ok)
        except BlockingIOError:
            return [], None  # a spurious wake-up: nothing to read after all
        except ProtocolError as exc:
            return [], f"bad frame from the worker: {exc}"
        except OSError as exc:
            return [], f"channel error: {exc}"

    def _recv(self) -> tuple[list[Any], str | None]:
        try:
            msgs, _, eof = recv_some(self.sock, self.reader)
        except ProtocolError as exc:
            return [], f"bad frame from the worker: {exc}"
        except OSError as exc:
            return [], f"channel error: {exc}"
        msgs, why = screen(msgs, self.pickle_ok)
        return msgs, (why or ("the worker closed the channel" if eof else None))

    # ------------------------------------------------------------------ closing
    def _shutdown(self, how: int) -> None:
        try:
            self.sock.shutdown(how)
        except OSError:  # already disconnected
            pass

    def interrupt(self) -> None:
        """Wake a reader blocked in `io_once` for good (the link is being dropped)."""
        self._shutdown(socket.SHUT_RDWR)

    def close_fds(self) -> None:
        """Release the sockets; only when no thread is in `io_once` (caller holds the lock)."""
        # Under `wlock`: a writer must never send on a socket being closed under it.
        with self.wlock:
            if self.fds_closed:
                return
            self.fds_closed = True
            self.sock.close()
            self.wake.close()
