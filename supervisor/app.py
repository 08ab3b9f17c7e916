"""The caller's handle on a running tree: `start(spec) -> App`.

    caller threads ──call──▶ Router ─ CallChannel ──socketpair──▶ worker   (direct)
    app.pool(path) ──────────▶ PoolClient ─ links ──socketpair──▶ workers
    App requests ──ctrl──▶ RootLink ──▶ root supervisor ──▶ ... ──▶ target supervisor
    RootLink's reader thread ◀─ctrl─── Responses, Events (to telemetry), the root's Exit

The App is a facade over three objects it composes: a `RootLink` (the control channel to
the root, see `client.link`), a `Router` (calls to single workers, `client.router`) and
one `PoolClient` per pool path (`pool.client`); each of them is handed the link, none of
them holds the App.
"""

from __future__ import annotations

import atexit
import os
import pickle
import threading
import weakref
from typing import Any

import msgspec
import psutil

from . import telemetry
from .client.link import DISCONNECTED, RootLink
from .client.router import Router
from .errors import (
    CallTimeout,
    ConfigError,
    NoSuchChild,
    SupervisorError,
    WorkerCrashed,
)
from .specs import SupervisorSpec
from .wire import messages as P

__all__ = ["App", "start", "connect", "ChildInfo", "WorkerProxy"]

ChildInfo = P.ChildInfo
_RESERVED = ("timeout", "retry", "idempotent", "session")

# Apps whose tree this process started and has not stopped: stopped at interpreter exit.
live_apps: weakref.WeakSet = weakref.WeakSet()


def start(spec: SupervisorSpec, *, timeout: float | None = 60.0, logs: Any = None) -> App:
    """Start `spec` as a tree of processes; returns once every child's `init` returned.

    `logs` (a `LogOptions`, as the ``[logs]`` table of a tree file) writes each worker's
    and program's output to its own file below `logs.dir`, and the root's log to
    `logs.file`. Raises StartError (naming the child path, the category and the remote
    ``Type: message``) when a child fails to start; no process is left behind then.
    ConfigError when a log directory is refused (another user's, a symlink).
    """
    if not isinstance(spec, SupervisorSpec):
        raise TypeError(f"start() expects a Supervisor(...) spec, got {type(spec).__name__}")
    from .logoptions import prepare

    prepare(logs)  # refused here, in the caller, rather than by the root as it boots
    telemetry.attach_default_reporter(thread=True)  # its log must not hold up the tree
    app = App(spec)
    app._boot(timeout, logs)
    return app


def connect(path: str | os.PathLike | None = None, *, timeout: float = 5.0,
            server_uid: int | None = None) -> App:
    """An App on a tree run by ``python -m supervisor run`` (through its control socket).

    `path` defaults to the lone running tree in the default socket directory. Calls go
    straight to the workers, as with `start`; `close()` (or leaving a ``with`` block)
    disconnects and leaves the tree running; `stop()` asks the tree to shut down.

    Nothing is sent before the server is checked: every directory on the socket's path
    is owned by you or root and not writable by group or others (a sticky shared
    directory such as /tmp only when the entry below it is yours or root's; anything
    above your own XDG_RUNTIME_DIR does not matter), the socket is yours, and
    the process listening runs as your uid (SO_PEERCRED). `server_uid` trusts a server
    running as that uid instead (its socket and directories may then be that uid's).
    A full listen backlog is waited out within `timeout`.

    Raises UntrustedServer (a ConfigError) when a check fails, ServerRefused (a
    ConfigError) when the server hangs up before answering (its own peer check refused
    us), ConfigError when no socket (or several) is found, OSError when nobody listens
    (TimeoutError when the backlog stays full for `timeout`).
    """
    from .client.control import dial, find_socket
    from .wire.trust import Trust, check_peer, check_socket, peer_uid

    trust = Trust.of(server_uid)
    sock_path = find_socket(os.fspath(path) if path is not None else None, trust)
    check_socket(sock_path, trust)
    sock = dial(sock_path, timeout)
    try:
        check_peer(peer_uid(sock), sock_path, trust)
    except BaseException:
        sock.close()
        raise
    app = App(None)
    app._link.attach(sock)
    app._link.greet(sock_path, timeout)
    return app


class App:
    """A running tree. Use `supervisor.start(spec)`; a context manager that stops the tree."""

    def __init__(self, spec: SupervisorSpec | None) -> None:
        self.spec = spec
        self._link = link = RootLink(spec.id if spec is not None else "connection")
        self._router = Router(link)
        self._pools: dict[str, Any] = {}
        self._pools_lock = threading.Lock()
        link.on_gone(self._router.close_all)
        link.on_gone(lambda: live_apps.discard(self))

    @property
    def link(self) -> RootLink:
        """The control channel to the root (`client.link.RootLink`), for the package's own
        tools (`top`, `events`); not part of the public API."""
        return self._link

    @property
    def pid(self) -> int | None:
        """The root supervisor's pid (None before it started)."""
        return self._link.pid

    def _boot(self, timeout: float | None, logs: Any = None) -> None:
        self._link.boot(self.spec, timeout, logs)
        live_apps.add(self)

    # ------------------------------------------------------------------ start / stop
    def close(self) -> None:
        """Disconnect from a tree you `connect`ed to; the tree keeps running. For a tree
        this App started, the same as `stop()`."""
        if self._link.proc is not None:
            self.stop()
            return
        self._link.disconnect()

    def stop(self, timeout: float | None = None) -> None:
        """Shut the tree down (children stop in reverse order) and return when no
        descendant is left. A no-op once the root has exited. Past `timeout`, a root this
        App started is SIGKILLed; its children die with it (PR_SET_PDEATHSIG, EOF).

        A `connect`ed App only asks: it sends the shutdown request and waits for the
        root's exit report, and never signals a process (the tree is not its own). It
        raises the server's error when the request is refused, WorkerCrashed when the
        connection ends before the root reports its exit, and CallTimeout when the tree
        has not stopped within `timeout`.
        """
        link = self._link
        if link.exited.is_set() or link.pid is None:
            return
        if link.proc is None:
            self._ask_to_stop(timeout)
            return
        try:
            descendants = psutil.Process(link.pid).children(recursive=True)
        except psutil.Error:
            descendants = []
        try:
            link.request(P.Shutdown(id=0), timeout=timeout)
        except SupervisorError:
            pass  # the root is already going; waiting for it below is what matters
        if not link.wait_gone(timeout):
            link.kill_root()
        _, alive = psutil.wait_procs(descendants, timeout=5.0)
        for proc in alive:
            proc.kill()

    def _ask_to_stop(self, timeout: float | None) -> None:
        link = self._link
        try:
            link.request(P.Shutdown(id=0), timeout=timeout)
        except WorkerCrashed:
            pass  # the connection ended before the answer: the exit report tells why
        if not link.wait_gone(timeout):
            raise CallTimeout(f"the tree (root pid {self.pid}) did not stop within "
                              f"{timeout}s")
        if link.exit_reason == DISCONNECTED:
            raise WorkerCrashed(f"the connection to the tree (root pid {self.pid}) ended "
                                "before the root reported its exit; it may still run",
                                path="")

    def wait(self, timeout: float | None = None) -> str | None:
        """The root's exit reason once it has exited ("normal", "auto_shutdown",
        "reached_max_restart_intensity"), or None on timeout. For a `connect`ed App,
        "disconnected" once the connection ended without the root's exit report (after
        `close()`, or when the server dropped us): how the tree fared is unknown."""
        if not self._link.wait_gone(timeout):
            return None
        return self._link.exit_reason

    def __enter__(self) -> App:
        return self

    def __exit__(self, *exc: Any) -> None:
        # A tree we started stops with the block; one we connected to keeps running.
        if self._link.proc is not None:
            self.stop()
        else:
            self.close()

    # ------------------------------------------------------------------ requests
    def which_children(self, path: str = "", *, timeout: float = 30.0) -> list[ChildInfo]:
        """The children of the supervisor at `path`, in start order. While that supervisor
        (or one above it) is restarting, waits for it within `timeout` (CallTimeout)."""
        value = self._link.request_when_up(P.WhichChildren(id=0, path=path), timeout)
        return msgspec.convert(value, list[ChildInfo])

    def count_children(self, path: str = "", *, timeout: float = 30.0) -> dict[str, int]:
        """``{"specs", "active", "supervisors", "workers"}`` of the supervisor at `path`;
        waits for a restarting supervisor within `timeout` as `which_children` does."""
        return self._link.request_when_up(P.CountChildren(id=0, path=path), timeout)

    def start_child(self, path: str, spec: Any = None, *, args: Any = (),
                    kwargs: dict[str, Any] | None = None) -> str:
        """Start a dynamic child under the supervisor at `path`; returns its id.

        simple_one_for_one: `args` are appended to the template's, ids are
        ``<template>-1, -2, ...``. Other strategies take a `child(...)` spec.
        Raises StartError when its `init` fails; ConfigError for a duplicate id, a value
        that is not a spec, a significant child under ``auto_shutdown="never"``, a spec
        given to simple_one_for_one or args given to another strategy; EncodeError (a
        TypeError) for args that are not a list or kwargs that are not a dict;
        PoolExhausted past `max_children`.
        """
        try:
            blob = pickle.dumps(spec) if spec is not None else None
        except Exception as exc:  # pickle raises several types for what it cannot carry
            raise ConfigError(f"cannot send the spec to the supervisor: {type(exc).__name__}:"
                              f" {exc}", field="spec") from exc
        # Anything but a list or tuple of args (or a dict of kwargs) fails the local
        # decode check in `_request`: an EncodeError (a TypeError) naming the field.
        args = list(args) if isinstance(args, list | tuple) else args
        return self._link.request(P.StartChild(id=0, path=path, spec=blob, args=args,
                                          kwargs=kwargs), timeout=None)

    def terminate_child(self, path: str, child_id: str) -> None:
        """Stop a child (per its shutdown spec); it stays listed unless temporary or
        dynamic (simple_one_for_one), and is not restarted."""
        self._link.request(P.TerminateChild(id=0, path=path, child_id=child_id), timeout=None)

    def restart_child(self, path: str, child_id: str) -> int:
        """Start a stopped child again, or revive an abandoned one (with a fresh failure
        count, its circuit closed); returns its pid. Raises WorkerError when it is running
        or restarting (OTP's ``{error, running | restarting}``), StartError when it fails
        to start."""
        return self._link.request(P.RestartChild(id=0, path=path, child_id=child_id),
                             timeout=None)

    def rolling_restart(self, path: str = "") -> list[tuple[str, int, int]]:
        """Replace every running worker under `path` (a supervisor, a pool or one worker;
        "" is the whole tree) with a fresh process, one at a time, on freshly imported
        code; returns ``(path, old pid, new pid)`` per worker replaced, in start order.

        First every supervisor from the root down to `path`, and every one under it,
        re-imports the modules that define its workers' classes (a class defined in
        ``__main__`` cannot be re-imported and keeps its code), so any later start runs
        the new code too. Then each running worker, depth first in start order: its
        replacement is started and ready while it still serves; then it is asked to
        leave (reason ``replaced``), finishes the call it is running and answers the
        calls sent to it meanwhile NotRun, which callers send again to a live worker. So
        pool callers (`call`, `submit`, `map`; sessions with ``on_lost="reassign"``) see
        no failure. External programs are stopped, then started. Nothing counts toward
        restart intensity, and siblings are not restarted whatever the strategy.

        Raises NoSuchChild for an unknown path, ConfigError when a module cannot be
        re-imported (nothing was replaced), StartError when a replacement fails to
        start: the roll stops there and the worker it was to replace keeps serving.
        """
        path = path.strip("/")
        parent, _, child_id = path.rpartition("/")
        kind, pid = "supervisor", None
        if path:
            found = [c for c in self.which_children(parent) if c.id == child_id]
            if not found:
                raise NoSuchChild(f"no child {path!r}", path=path)
            kind, pid = found[0].kind, found[0].pid
        top = path if kind == "supervisor" else parent
        route = [""] + ["/".join(top.split("/")[:n]) for n in range(1, top.count("/") + 2)
                        if top]
        for supervisor in route[:-1]:  # above the target: for their later restarts of it
            self._link.request(P.RefreshCode(id=0, path=supervisor), timeout=None)
        replaced: list[tuple[str, int, int]] = []
        if kind == "supervisor":
            self._roll(top, replaced)
        else:
            self._link.request(P.RefreshCode(id=0, path=top), timeout=None)
            self._replace(parent, child_id, pid, replaced)
        return replaced

    def _roll(self, path: str, replaced: list[tuple[str, int, int]]) -> None:
        self._link.request(P.RefreshCode(id=0, path=path), timeout=None)
        for info in self.which_children(path):
            if info.kind == "supervisor":
                self._roll(info.path, replaced)
            else:
                self._replace(path, info.id, info.pid, replaced)

    def _replace(self, path: str, child_id: str, old: int | None,
                 replaced: list[tuple[str, int, int]]) -> None:
        new = self._link.request(P.ReplaceChild(id=0, path=path, child_id=child_id),
                                 timeout=None)
        if new is not None and old is not None:
            replaced.append((f"{path}/{child_id}" if path else child_id, old, new))

    def delete_child(self, path: str, child_id: str) -> None:
        """Forget a stopped child's spec. Raises WorkerError when it is running or
        restarting."""
        self._link.request(P.DeleteChild(id=0, path=path, child_id=child_id))

    def signal_child(self, path: str, child_id: str, signum: int | str) -> int:
        """Send a signal (a number or a name such as ``"SIGHUP"``) to the running child
        `child_id` of the supervisor at `path`: a worker's process, or an external
        program's whole process group. Returns its pid. What follows is the child's own
        doing (one that dies is handled as any other exit). Raises ConfigError for an
        unknown signal, WorkerError when the child is not running, NoSuchChild."""
        from ._validate import check_signal

        number = check_signal("signal", signum)
        return self._link.request(P.SignalChild(id=0, path=path, child_id=child_id,
                                                signal=number))

    def reload(self, *, dry_run: bool = False, timeout: float | None = None) -> Any:
        """Ask a service (a tree run by ``python -m supervisor run TREE.toml``, reached
        with `connect`) to read its file again and apply the difference; the same as
        ``python -m supervisor reload``. Returns a `supervisor.wire.reload.ReloadReport`
        once everything is applied (`dry_run`: only the plan, nothing changed). Raises
        ConfigError, the tree unchanged, for a bad file (naming the file and the key), a
        setting that cannot change while the tree runs, or a tree started from Python
        (it has no file); CallTimeout past `timeout` (the reload goes on)."""
        from .wire.reload import ReloadReport

        value = self._link.request(P.Reload(id=0, dry_run=dry_run), timeout=timeout)
        return msgspec.convert(value, ReloadReport)

    def status(self) -> dict[str, Any]:
        """The whole tree: per node its path, kind, state, pid, restarts, memory (RSS MiB),
        circuit state and next trial, `reason` (why an abandoned child was abandoned,
        else None); for supervisors, their recovery metrics
        (initiated, succeeded, failed) and their children."""
        from .observe.status import collect

        return collect(self._link.request)[0]

    # ------------------------------------------------------------------ calls
    def call(self, path: str, method: str, *args: Any, timeout: float | None = None,
             retry: bool = True, idempotent: bool = False, session: str | None = None,
             **kwargs: Any) -> Any:
        """Call `method` on the worker at `path` over a direct channel; returns its result.

        `timeout` defaults to the child's `call_timeout`. Raises CommandError (the command
        raised), WorkerCrashed (the worker died with the call in flight), CallTimeout,
        CircuitOpen, EncodeError, NoSuchChild. With `retry` (the default), a call that
        never reached a worker waits for the replacement (or goes to the child's
        `fallback`), and an idempotent call (`idempotent=True` or a method marked with
        `@supervisor.idempotent`) is re-sent after WorkerCrashed or CallTimeout with the
        matrix row's delays.
        """
        return self._router.call(path, method, args, kwargs, timeout=timeout, retry=retry,
                                 idempotent=idempotent, session=session)

    def cast(self, path: str, method: str, *args: Any, **kwargs: Any) -> None:
        """Send `method` to the worker at `path` without waiting for a result."""
        self._router.cast(path, method, args, kwargs)

    def pool(self, path: str) -> Any:
        """The dispatching client of the `Pool` at `path` (one per path and App)."""
        from .pool.client import PoolClient

        with self._pools_lock:
            client = self._pools.get(path)
            if client is None:
                client = self._pools[path] = PoolClient(self._link, path)
        return client

    def worker(self, path: str) -> WorkerProxy:
        """A proxy whose attribute calls are `call(path, name, ...)`."""
        return WorkerProxy(self, path, {})


class WorkerProxy:
    """``app.worker(path).incr(5)``; ``.options(timeout=2)`` sets the reserved keywords.
    The asyncio App's proxy too (its `call` returns the coroutine to await)."""

    def __init__(self, app: Any, path: str, options: dict[str, Any]) -> None:
        self._app = app
        self._path = path
        self._options = options

    def options(self, **options: Any) -> WorkerProxy:
        unknown = set(options) - set(_RESERVED)
        if unknown:
            raise TypeError(f"unknown call options {sorted(unknown)}; expected {_RESERVED}")
        return WorkerProxy(self._app, self._path, {**self._options, **options})

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._app.call(self._path, name, *args, **self._options, **kwargs)

        method.__name__ = name
        return method




@atexit.register
def _stop_all() -> None:
    # Interpreter exit: leave no tree behind, even when the user forgot stop().
    for app in list(live_apps):
        try:
            app.stop(timeout=10.0)
        except SupervisorError:
            pass
