"""The caller's link to its root supervisor: launching or attaching, requests, the tree's end.

    boot():    fork+exec `python -c "...supervisor.tree.boot..."` from the link's reader
               thread, send the boot frame (the pickled spec and the main module's
               preparation data)
    attach():  a connection to a service's control socket (the root is `python -m
               supervisor run`)
    then:      request() sends a control request and waits for its answer; the reader
               thread files Responses, hands Events to telemetry (counting each child's
               starts: `generation_of`, `await_start`), and notices the root's Exit and
               EOF, when it fails what still waits and runs the `on_gone` callbacks

The root is launched from the reader thread because PR_SET_PDEATHSIG fires when the
*thread* that forked the child exits: this thread lives as long as the link.

Everything on the caller's side that talks to the tree (the App, the router, the pool
clients) holds this object; none of them holds the App.
"""

from __future__ import annotations

import itertools
import os
import pickle
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

import msgspec

from .. import telemetry
from ..errors import (
    CallTimeout,
    EncodeError,
    NotRunning,
    ProtocolError,
    ServerRefused,
    StartError,
    SupervisorError,
    WorkerCrashed,
    WorkerError,
    error_from_wire,
)
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.trust import peer_pid

__all__ = ["RootLink", "DISCONNECTED", "answer_error", "answer_timeout"]

# The exit reason of a connected App whose connection ended without the root's Exit report.
DISCONNECTED = "disconnected"

# The directory that holds the `supervisor` package this module belongs to: the root
# imports this very copy of the package, wherever it was imported from here.
_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_BOOT = (f"import sys; sys.path.insert(0, {_PACKAGE_PARENT!r}); "
         "from supervisor.tree.boot import main; sys.exit(main())")

def _prep_data(blob: bytes) -> dict[str, Any] | None:
    # Only a spec that refers to the caller's __main__ needs the main module re-imported
    # in the root (as multiprocessing's spawn does); skipping it keeps start fast.
    if b"__main__" not in blob:
        return {"sys_path": list(sys.path), "dir": os.getcwd()}
    import multiprocessing.spawn

    data = multiprocessing.spawn.get_preparation_data("supervisor-root")
    data.pop("authkey", None)  # multiprocessing's secret; the root has no use for it
    return data


class RootLink:
    """The caller's link to one tree's root supervisor (see the module doc)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.pid: int | None = None
        self.sock: socket.socket | None = None
        self.proc: subprocess.Popen | None = None  # the root, when this link started it
        self.exited = threading.Event()  # set once the root is gone and all is released
        self.exit_reason: str | None = None
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, Future] = {}
        self._ready: Future = Future()
        # Running: an event loop awaiting it (`launch`) cannot cancel it under the reader.
        self._ready.set_running_or_notify_cancel()
        self._state = threading.Condition()  # guards `_generation`
        self._generation: dict[str, int] = {}
        self._start_watches: dict[str, list[Future]] = {}  # `watch_start`, by path
        self._thread: threading.Thread | None = None
        self._heard = False  # any frame from the root yet (a refusal is silence, then EOF)
        self._on_gone: list[Callable[[], None]] = []
        self._gone_lock = threading.Lock()  # `_on_gone` vs. the reader running it
        self._gone_ran = False
        self._after_gone: list[Callable[[], None]] = []
        self._kill_asked = False  # `kill_root` was called (maybe before the root existed)

    # ------------------------------------------------------------------ the root
    def boot(self, spec: Any, timeout: float | None, logs: Any = None) -> None:
        """Start the root for `spec` and wait until the tree is up. Raises StartError."""
        self.launch(spec, logs)
        try:
            self._ready.result(timeout)
        except FutureTimeout:
            self.kill_root()
            raise StartError(f"the tree {self.name!r} did not start within {timeout}s",
                             path="", category="timeout_error") from None
        except StartError:
            self.wait_gone()
            raise

    def launch(self, spec: Any, logs: Any = None) -> Future:
        """Start the root for `spec` without waiting: the returned future is set once the
        tree is up, or fails with StartError (`boot` waits on it; so can an event loop).
        `logs`: the tree's `LogOptions` (None: children's output goes to stderr)."""
        blob = pickle.dumps(spec)
        boot = pickle.dumps({"prep": _prep_data(blob), "spec": blob, "logs": logs})
        self._thread = threading.Thread(target=self._run_reader, args=(boot,),
                                        name=f"supervisor-app-{self.name}", daemon=True)
        self._thread.start()
        return self._ready

    def attach(self, sock: socket.socket) -> None:
        """Serve a connection to a running service's control socket (see `connect`)."""
        self.sock = sock
        self.pid = peer_pid(sock)
        self._ready.set_result(None)
        self._thread = threading.Thread(target=self._read_forever, args=(sock,),
                                        name=f"supervisor-connection-{self.pid}", daemon=True)
        self._thread.start()

    def greet(self, path: Any, timeout: float) -> None:
        """The first request on a new connection. A server whose peer check refuses us
        closes the connection without a word: silence then EOF is that refusal (raised as
        ServerRefused)."""
        try:
            self.request(P.CountChildren(id=0, path=""), timeout=timeout)
        except WorkerCrashed:
            self.disconnect()
            if self._heard:
                raise
            raise ServerRefused(f"refused by the server at {path} (its peer check: is it "
                                "another user's tree?)", field="socket") from None
        except BaseException:
            self.disconnect()
            raise

    def on_gone(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the reader thread once the root is gone, before `exited` is
        set (so whoever waits for `exited` finds the callers' descriptors released); at
        once, on this thread, when that has happened already."""
        with self._gone_lock:
            if not self._gone_ran:
                self._on_gone.append(callback)
                return
        callback()

    def after_gone(self, callback: Callable[[], None]) -> None:
        """Run `callback` on the reader thread once `exited` is set (every `on_gone`
        callback has run: the callers' descriptors are released); at once, on this
        thread, when that has happened already. For a waiter on another thread's terms
        (an event loop)."""
        with self._gone_lock:
            if not self.exited.is_set():
                self._after_gone.append(callback)
                return
        callback()

    def disconnect(self) -> None:
        """End a connection to a tree this link did not start; waits (5 s at most) for the
        reader to notice."""
        if self.sock is not None:
            try:
                self.sock.shutdown(socket.SHUT_RDWR)
            except OSError:  # already disconnected
                pass
        self.wait_gone(5.0)

    def kill_root(self) -> None:
        # A kill asked for while the reader thread is still starting the root (a start
        # cancelled at once) is carried out by that thread as soon as the root exists:
        # the flag is set before `proc` is read here, and read after `proc` is set there.
        self._kill_asked = True
        proc = self.proc
        if proc is not None and proc.poll() is None:
            proc.kill()
        self.wait_gone()

    def wait_gone(self, timeout: float | None = None) -> bool:
        return self.exited.wait(timeout)

    # ------------------------------------------------------------------ requests
    def request(self, msg: Any, *, fds: tuple[int, ...] = (),
                timeout: float | None = 30.0) -> Any:
        """Send a control request (its `id` is filled in) and return the answer's value.

        Raises the error the supervisor answered with (rebuilt by `error_from_wire`;
        NotRunning only for OpenChannel, a WorkerError otherwise), CallTimeout past
        `timeout`, WorkerCrashed when the tree is gone, EncodeError (a TypeError) for an
        argument the root could not decode.
        """
        rid, fut = self.submit(msg, fds=fds)
        try:
            return fut.result(timeout)
        except FutureTimeout:
            self.forget(rid)
            raise answer_timeout(timeout) from None
        except NotRunning as exc:
            raise answer_error(msg, exc) from None

    def submit(self, msg: Any, *, fds: tuple[int, ...] = ()) -> tuple[int, Future]:
        """Send a control request without waiting: its id and the future of the raw
        answer (`request` waits on it and maps its errors with `answer_error`; an event
        loop awaits it). The future is marked running, so nobody can cancel it under the
        reader thread: a waiter that gives up calls `forget(id)` instead."""
        if self.exited.is_set() or self.sock is None:
            raise WorkerCrashed("the tree is not running", path="")
        rid = next(self._ids)
        frame = P.CONTROL_CODEC.encode(msgspec.structs.replace(msg, id=rid))
        _check_decodes(frame, msg)
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        self._pending[rid] = fut
        try:
            with self._send_lock:
                send_frame(self.sock, frame, fds)
        except OSError as exc:
            self._pending.pop(rid, None)
            raise WorkerCrashed(f"the root supervisor is gone: {exc}", path="") from exc
        return rid, fut

    def forget(self, rid: int) -> None:
        """The answer to request `rid` is no longer awaited: it is dropped when it comes."""
        self._pending.pop(rid, None)

    def request_when_up(self, msg: Any, timeout: float = 30.0) -> Any:
        """`request` to the supervisor at `msg.path`, waiting within `timeout` while it (or
        a supervisor above it) is restarting, as a call waits for its worker: the answer
        once it is back. Raises CallTimeout when it does not come back in time, and what
        `request` raises otherwise (a stopped or abandoned supervisor: WorkerError)."""
        deadline = time.monotonic() + timeout
        while True:
            # Read before asking: a start reported after this read ends the wait below at
            # once (no lost wake-up between the refusal and the wait).
            # (A path that is not a string is refused by `request` as an EncodeError.)
            generation = self.generation_of(msg.path) if isinstance(msg.path, str) else 0
            try:
                return self.request(msg, timeout=max(0.0, deadline - time.monotonic()))
            except WorkerError as exc:
                if type(exc) is not WorkerError or exc.context.get("state") != "restarting":
                    raise
            self.await_start(msg.path, generation, deadline)

    def report_timeout(self, path: str) -> None:
        """Tell the supervisor of the worker at `path` that a call to it timed out: its
        state is unknown, so it is replaced (handled as a timeout_error)."""
        parent, _, child_id = path.rpartition("/")
        try:
            self.request(P.ReportFailure(id=0, path=parent, child_id=child_id,
                                         category="timeout_error", reason="timeout"),
                         timeout=5.0)
        except SupervisorError:
            pass  # already gone or restarting: its supervisor handles that on its own

    # ------------------------------------------------------------------ start counts
    def generation_of(self, path: str) -> int:
        """How many starts of the child at `path` were reported so far."""
        with self._state:
            return self._generation.get(path, 0)

    def await_start(self, path: str, generation: int, deadline: float) -> None:
        """Wait until a start of `path` newer than `generation` is reported (an event, not
        a sleep). Raises CallTimeout past `deadline`, WorkerCrashed once the tree is gone."""
        with self._state:
            while self._generation.get(path, 0) == generation:
                if self.exited.is_set():
                    raise WorkerCrashed("the tree is not running", path=path)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise CallTimeout(f"{path!r} was not running and did not come back "
                                      "within the call's timeout", path=path)
                self._state.wait(remaining)

    def watch_start(self, path: str, generation: int) -> Future:
        """A future set once a start of `path` newer than `generation` is reported, or
        failed with WorkerCrashed once the tree is gone (`await_start` for an event loop;
        `unwatch_start` it when giving up)."""
        fut: Future = Future()
        fut.set_running_or_notify_cancel()
        with self._state:
            if self._generation.get(path, 0) != generation:
                fut.set_result(None)
            elif self.exited.is_set() or self._gone_ran:
                fut.set_exception(WorkerCrashed("the tree is not running", path=path))
            else:
                self._start_watches.setdefault(path, []).append(fut)
        return fut

    def unwatch_start(self, path: str, fut: Future) -> None:
        with self._state:
            watches = self._start_watches.get(path)
            if watches is not None and fut in watches:
                watches.remove(fut)
                if not watches:
                    del self._start_watches[path]

    # ------------------------------------------------------------------ the reader
    def _run_reader(self, boot: bytes) -> None:
        mine, theirs = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], close_fds=True,
            )
        except OSError as exc:
            self._ready.set_exception(StartError(f"cannot start the root: {exc}"))
            return
        finally:
            theirs.close()
        if self._kill_asked:
            self.proc.kill()  # see `kill_root`: the boot below then ends with its EOF
        self.pid = self.proc.pid
        self.sock = mine
        try:
            mine.sendall(struct.pack(">I", len(boot)) + boot)
        except OSError:  # the root died at once (killed): reading finds its EOF and ends
            pass
        self._read_forever(mine)

    def _read_forever(self, sock: socket.socket) -> None:
        reader = FrameReader(P.CONTROL_CODEC)
        while True:
            try:
                msgs, _, eof = recv_some(sock, reader)
            except SupervisorError:  # garbage from the root: treat as its death
                msgs, eof = [], True
            except OSError:
                msgs, eof = [], True
            if msgs:
                self._heard = True
            for msg in msgs:
                self._dispatch(msg)
            if eof:
                break
        self._gone()

    def _dispatch(self, msg: Any) -> None:
        match msg:
            case P.Response(id=rid, value=value):
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    fut.set_result(value)
            case P.ErrorResponse(id=rid, kind=kind, message=message, fields=fields):
                fut = self._pending.pop(rid, None)
                if fut is not None:
                    fut.set_exception(error_from_wire(kind, message, **fields))
            case P.Event(name=name, measurements=measurements, metadata=metadata):
                if tuple(name) == ("supervisor", "child", "started"):
                    with self._state:
                        path = metadata.get("path", "")
                        self._generation[path] = self._generation.get(path, 0) + 1
                        self._state.notify_all()
                        for fut in self._start_watches.pop(path, ()):
                            fut.set_result(None)
                telemetry.execute(name, measurements, metadata)
            case P.Ready():
                self._ready.set_result(None)
            case P.StartFailed():
                self._ready.set_exception(StartError(
                    f"child {msg.path!r} failed to start ({msg.category}): "
                    f"{msg.type}: {msg.message}",
                    path=msg.path, category=msg.category, remote_type=msg.type,
                    remote_message=msg.message, remote_traceback=msg.traceback))
            case P.Exit(message=detail):
                self.exit_reason = "normal" if detail in (None, "shutdown") else detail
            case _:
                pass

    def _gone(self) -> None:
        proc = self.proc
        code = proc.wait() if proc is not None else None
        if self.exit_reason is None and proc is None:
            self.exit_reason = DISCONNECTED  # we cannot know how a tree we attached to ended
        elif self.exit_reason is None:
            self.exit_reason = "crashed" if code else "normal"
        if not self._ready.done():
            self._ready.set_exception(StartError(f"the root supervisor exited (code {code}) "
                                                 "before the tree was up"))
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(WorkerCrashed("the root supervisor exited", path=""))
        self._pending.clear()
        if self.sock is not None:
            self.sock.close()  # the root is gone: its channel is finished
        with self._gone_lock:
            self._gone_ran = True
            callbacks = list(self._on_gone)
        for callback in callbacks:
            callback()  # the callers' channels and pools: closed before `exited`
        with self._state:
            self._state.notify_all()
            watches = [fut for futs in self._start_watches.values() for fut in futs]
            self._start_watches.clear()
        for fut in watches:
            fut.set_exception(WorkerCrashed("the tree is not running", path=""))
        with self._gone_lock:
            self.exited.set()
            callbacks = list(self._after_gone)
        for callback in callbacks:
            callback()


def answer_error(msg: Any, exc: NotRunning) -> NotRunning | WorkerError:
    """What a request answered with NotRunning raises: NotRunning itself for OpenChannel
    (the router waits for the restart), a connection_error WorkerError otherwise."""
    if isinstance(msg, P.OpenChannel):
        return exc
    return WorkerError(str(exc), category="connection_error", path=exc.path,
                       context={"state": exc.state})


def answer_timeout(timeout: float | None) -> CallTimeout:
    return CallTimeout(f"the supervisor did not answer within {timeout}s")


def _check_decodes(frame: bytes, msg: Any = None) -> None:
    """A request the root could not decode (a path that is not a str, kwargs that are not
    a dict...) would make it drop the App's channel and end the tree: refuse it here.

    Messages travel as arrays (the tag, then the fields in order): the decoder's ``$[i]``
    is named back as ``$.field`` of `msg` for the caller."""
    try:
        P.CONTROL_CODEC.decode(memoryview(frame)[4:])
    except ProtocolError as exc:
        text = str(exc).split(": ", 1)[-1]
        fields = getattr(msg, "__struct_fields__", ())

        def named(match: re.Match) -> str:
            index = int(match.group(1)) - 1  # index 0 is the tag
            return f"`$.{fields[index]}" if 0 <= index < len(fields) else match.group(0)

        raise EncodeError("invalid argument: " + re.sub(r"`\$\[(\d+)\]", named, text)
                          ) from None
