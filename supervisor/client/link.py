"""The App's link to its root supervisor: launching it, attaching to it, reading from it.

    start():   fork+exec `python -c "...supervisor.tree.boot..."` from the App's reader thread,
               send the boot frame (the pickled spec and the main module's preparation data)
    connect(): attach to a service's control socket (the root is `python -m supervisor run`)
    then:      the reader thread dispatches Responses to waiting requests, Events to
               telemetry, and notices the root's Exit and EOF

The root is launched from the reader thread because PR_SET_PDEATHSIG fires when the
*thread* that forked the child exits: this thread lives as long as the App.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import weakref
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any

from .. import telemetry
from ..errors import (
    StartError,
    SupervisorError,
    WorkerCrashed,
    error_from_wire,
)
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some
from ..wire.trust import peer_pid

__all__ = ["RootLink", "live_apps", "DISCONNECTED"]

# Apps whose tree this process started and has not stopped: stopped at interpreter exit.
live_apps: weakref.WeakSet = weakref.WeakSet()

# The exit reason of a connected App whose connection ended without the root's Exit report.
DISCONNECTED = "disconnected"

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
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
    """The part of `App` that talks to the root supervisor process (a mixin)."""

    def _boot(self, timeout: float | None) -> None:
        blob = pickle.dumps(self.spec)
        boot = pickle.dumps({"prep": _prep_data(blob), "spec": blob})
        self._thread = threading.Thread(target=self._run_reader, args=(boot,),
                                        name=f"supervisor-app-{self.spec.id}", daemon=True)
        self._thread.start()
        try:
            self._ready.result(timeout)
        except FutureTimeout:
            self._kill_root()
            raise StartError(f"the tree {self.spec.id!r} did not start within {timeout}s",
                             path="", category="timeout_error") from None
        except StartError:
            self._wait_root_gone()
            raise
        live_apps.add(self)

    def _run_reader(self, boot: bytes) -> None:
        mine, theirs = socket.socketpair()
        try:
            self._proc = subprocess.Popen(
                [sys.executable, "-c", _BOOT, str(theirs.fileno()), str(os.getpid())],
                pass_fds=[theirs.fileno()], close_fds=True,
            )
        except OSError as exc:
            self._ready.set_exception(StartError(f"cannot start the root: {exc}"))
            return
        finally:
            theirs.close()
        self.pid = self._proc.pid
        self._sock = mine
        mine.sendall(struct.pack(">I", len(boot)) + boot)
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
        self._on_root_gone()

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
                self._exit_reason = "normal" if detail in (None, "shutdown") else detail
            case _:
                pass

    def _attach(self, sock: socket.socket) -> None:
        """Serve a connection to a running service's control socket (see `connect`)."""

        self._sock = sock
        self.pid = peer_pid(sock)
        self._ready.set_result(None)
        self._thread = threading.Thread(target=self._read_forever, args=(sock,),
                                        name=f"supervisor-connection-{self.pid}", daemon=True)
        self._thread.start()

    def _on_root_gone(self) -> None:
        proc = self._proc
        code = proc.wait() if proc is not None else None
        if self._exit_reason is None and proc is None:
            self._exit_reason = DISCONNECTED  # we cannot know how a tree we attached to ended
        elif self._exit_reason is None:
            self._exit_reason = "crashed" if code else "normal"
        if not self._ready.done():
            self._ready.set_exception(StartError(f"the root supervisor exited (code {code}) "
                                                 "before the tree was up"))
        for fut in list(self._pending.values()):
            if not fut.done():
                fut.set_exception(WorkerCrashed("the root supervisor exited", path=""))
        self._pending.clear()
        self._router.close_all()
        if self._sock is not None:
            self._sock.close()  # the root is gone: its channel is finished
        self._release_clients()  # before `_exited`: stop() returns with their fds closed
        with self._state:
            self._state.notify_all()
        self._exited.set()
        live_apps.discard(self)

    def _release_clients(self) -> None:
        """The root is gone: fail and close what the tree's clients still hold (App: its
        pool clients)."""

    def _kill_root(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.kill()
        self._wait_root_gone()

    def _wait_root_gone(self, timeout: float | None = None) -> bool:
        return self._exited.wait(timeout)
