"""The Ray bridge: a local child process that stands for a worker running as a Ray actor.

    supervisor ──control──▶ bridge ══ray══▶ actor (runtime.rayhost.Host: the user's Worker)
    caller     ──call────▶ bridge ══ray══▶ actor.handle(frame) -> reply frame
                             ▲
                             └── actor.watch() pending: fails the moment the actor dies

Why a process of its own: a process that called `ray.init` starts threads and must never
fork, and a supervisor forks. So the supervisor forks this ordinary child, which becomes the
Ray driver, creates the actor with Ray's restarts off (`max_restarts=0`,
`max_task_retries=0`: one policy decides, ours), waits for its `init`, reports Ready and then
forwards calls. To its supervisor it is a worker like any other: the same control messages,
the same exit reports, hence the same strategies, intensity, backoff, circuits and telemetry.

The loop is single-threaded (selectors) over the control channel, the callers' channels and
a wake-up socket. Ray delivers results on its own threads; each result's done-callback
queues it and sets the wake-up, so the loop never polls Ray. Calls are pipelined: each call
frame becomes one actor task as soon as it is read, and replies are matched by call id.

The actor's death is an event too: `watch` is held pending in its own concurrency group and
fails within milliseconds of the actor's death (ray.kill, its process SIGKILLed or exiting,
its node lost). The bridge then reports a classified exit and leaves; the callers' channels
close with it, so calls in flight end as WorkerCrashed, as with a local worker that died.
Stopping the bridge (its Stop, a signal, its supervisor dying) ends the actor: by `ray.kill`,
or by Ray itself, which kills the actors of a driver that died.
"""

from __future__ import annotations

import collections
import os
import selectors
import signal
import socket
import sys
import threading
from time import perf_counter
from typing import Any

from ..errors import ProtocolError
from ..wire import messages as P
from ..wire.framing import FrameReader, recv_some, send_frame
from ..wire.policy import call_policy
from ..wire.wakeup import Wakeup
from ..worker import command_table
from .meter import CallMeter
from .rayactor import NAMESPACE, actor_name, actor_options, classify, describe_request

__all__ = ["serve"]

def serve(spec: Any, path: str, restarts: int, ctrl: socket.socket, matrix: Any = None) -> int:
    """Run the bridge of a ``backend="ray"`` child; returns the process exit code."""
    ctrl.setblocking(True)
    bridge = Bridge(spec, path, ctrl, matrix)
    failure = bridge.start(restarts)
    if failure is not None:
        category, kind, message, tb = failure
        send_frame(ctrl, P.CONTROL_CODEC.encode(P.StartFailed(
            path=path, category=category, type=kind, message=message, traceback=tb)))
        return 1
    node_id, node_ip, _ = bridge.node
    send_frame(ctrl, P.CONTROL_CODEC.encode(P.Ready(pid=os.getpid(), node_ip=node_ip,
                                                    node_id=node_id)))
    return bridge.run()


class _Caller:
    """One caller's channel: its frame reader and the replies it is owed."""

    __slots__ = ("sock", "reader", "out", "writing")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = FrameReader(P.CALL_CODEC)
        self.out = bytearray()
        self.writing = False  # registered for EVENT_WRITE (its socket buffer was full)


class Bridge:
    """One bridge process: the driver's connection, the actor, the callers' channels."""

    def __init__(self, spec: Any, path: str, ctrl: socket.socket, matrix: Any) -> None:
        self.spec = spec
        self.path = path
        self.ctrl = ctrl
        commands = command_table(spec.worker_class)
        self.policy = call_policy(spec, commands, matrix, os.getpid())
        self.has_health = callable(getattr(spec.worker_class, "health", None))
        self.meter = CallMeter()
        self.actor: Any = None
        self.node: tuple[str, str, int] | None = None  # (node id, node IP, actor pid)
        self.callers: dict[int, _Caller] = {}
        self.fds: collections.deque[int] = collections.deque()  # fds awaiting their message
        # Results Ray hands over from its threads: (kind, data, future); see _on_wake.
        self.done: collections.deque[tuple[str, Any, Any]] = collections.deque()
        self.wake = Wakeup()
        self.sel = selectors.DefaultSelector()
        self.exit: P.Exit | None = None

    # starting ------------------------------------------------------------------------
    def start(self, restarts: int) -> tuple[str, str, str, str] | None:
        """Connect, create the actor, wait for its init; a (category, type, message,
        traceback) start failure, or None once the actor is ready."""
        address = os.environ.get("RAY_ADDRESS")
        if not address:
            return ("initialization_error", "NoRayCluster",
                    "no Ray cluster to join: set ray_address on the tree (or RAY_ADDRESS)", "")
        try:
            import ray
            from ray.exceptions import RayError
        except ImportError as exc:
            return ("initialization_error", "ImportError",
                    f"backend='ray' needs Ray here: pip install 'otp-supervisor[ray]' ({exc})",
                    "")
        from .rayhost import CONCURRENCY_GROUPS, Host

        options = self.spec.ray_options
        timeout = options.start_timeout if options is not None else 60.0
        # ray.init retries an unreachable cluster for minutes, and our supervisor waits
        # for our Ready without a deadline of its own: the join gets `timeout` seconds,
        # enforced from a timer thread (the main thread is inside Ray's C code then).
        watchdog = threading.Timer(timeout, self._join_timed_out, args=(address, timeout))
        watchdog.daemon = True
        watchdog.start()
        try:
            ray.init(address=address, namespace=NAMESPACE, log_to_driver=False,
                     configure_logging=False)
        except (ConnectionError, RayError, RuntimeError, ValueError) as exc:
            watchdog.cancel()
            return "connection_error", type(exc).__name__, f"cannot join {address}: {exc}", ""
        watchdog.cancel()
        # ray.init installed its own SIGTERM handler: a SIGTERM (the supervisor's stop
        # grace running out) must end this process at once; Ray then kills the actor of
        # the driver that died.
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        remote = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(Host)
        try:
            self.actor = remote.options(**actor_options(self.spec, self.path)).remote(
                self.spec, self.path, restarts)
            ready_ref = self.actor.ready.remote()
            finished, _ = ray.wait([ready_ref], timeout=timeout)
            if not finished:
                self._kill()
                return ("resource_error", "ActorNotReady",
                        f"the actor was not ready within {timeout:g} s: the cluster cannot "
                        f"place it ({describe_request(options)}) or its init is slower "
                        "(raise ray_options.start_timeout)", "")
            failure, node_id, node_ip, actor_pid = ray.get(ready_ref)
        except RayError as exc:
            self._kill()
            return classify(exc)
        if failure is not None:
            self._kill()
            return ("initialization_error", *failure)
        self.node = (node_id, node_ip, actor_pid)
        watch = self.actor.watch.remote()
        self._when_done("watch", None, watch)
        return None

    def _join_timed_out(self, address: str, timeout: float) -> None:
        """The timer thread: the cluster did not answer in time; report it and leave."""
        send_frame(self.ctrl, P.CONTROL_CODEC.encode(P.StartFailed(
            path=self.path, category="connection_error", type="RayJoinTimeout",
            message=f"could not join the Ray cluster at {address} within {timeout:g} s "
                    "(ray_options.start_timeout)")))
        os._exit(1)

    def _when_done(self, kind: str, data: Any, ref: Any) -> None:
        """Queue `ref`'s outcome for the loop once Ray has it (called on Ray's thread)."""
        def done(future: Any, kind: str = kind, data: Any = data) -> None:
            self.done.append((kind, data, future))
            self.wake.set()

        ref.future().add_done_callback(done)

    def _kill(self) -> None:
        import ray

        if self.actor is None:
            return
        try:
            ray.kill(self.actor, no_restart=True)
        except Exception as exc:  # already gone, or Ray itself is going: Ray ends it then
            sys.stderr.write(f"ray.kill of {self.path}: {type(exc).__name__}: {exc}\n")

    # the loop ------------------------------------------------------------------------
    def run(self) -> int:
        self.ctrl.setblocking(False)
        self.sel.register(self.ctrl, selectors.EVENT_READ, "ctrl")
        self.sel.register(self.wake.fileno(), selectors.EVENT_READ, "wake")
        ctrl_reader = FrameReader(P.CONTROL_CODEC)
        while self.exit is None:
            for key, mask in self.sel.select():
                if key.data == "ctrl":
                    self._on_control(ctrl_reader)
                elif key.data == "wake":
                    self._on_wake()
                elif mask & selectors.EVENT_WRITE:
                    self._flush(key.data)
                else:
                    self._on_call(key.data)
                if self.exit is not None:
                    break
        return self._leave()

    def _on_control(self, reader: FrameReader) -> None:
        try:
            msgs, fds, eof = recv_some(self.ctrl, reader, maxfds=16)
        except (ProtocolError, OSError):
            # Garbage from our own supervisor, or the channel broke: nothing on it can be
            # trusted, and without it we cannot be supervised.
            self._kill()
            os._exit(3)
        self.fds.extend(fds)
        for msg in msgs:
            self._control(msg)
        if eof:
            self._kill()
            os._exit(2)  # the supervisor is gone

    def _control(self, msg: Any) -> None:
        match msg:
            case P.OpenChannel(id=rid):
                if not self.fds:
                    self._send_control(P.ErrorResponse(
                        id=rid, kind="WorkerError", message="out of file descriptors: the "
                        "channel's socket could not be received",
                        fields={"category": "resource_error"}))
                    return
                sock = socket.socket(fileno=self.fds.popleft())
                sock.setblocking(False)
                caller = _Caller(sock)
                self.callers[sock.fileno()] = caller
                self.sel.register(sock, selectors.EVENT_READ, caller)
                self._send_control(P.Response(id=rid, value=self.policy))
            case P.Stop(reason=reason):
                self._terminate(reason)
                self.exit = P.Exit(reason="shutdown")
            case P.Ping(seq=seq):
                if self.has_health:
                    self._when_done("pong", seq, self.actor.health.remote())
                else:
                    self._send_control(P.Pong(seq=seq, healthy=True))
            case P.GetMetrics(id=rid):
                value = {**self.meter.snapshot(), "ray_node": self.node_info()}
                self._send_control(P.Response(id=rid, value=value))
            case _:
                pass

    def node_info(self) -> dict[str, Any] | None:
        if self.node is None:
            return None
        node_id, node_ip, actor_pid = self.node
        return {"node_id": node_id, "node_ip": node_ip, "actor_pid": actor_pid,
                "actor": actor_name(self.path, os.getpid()), "namespace": NAMESPACE}

    def _send_control(self, msg: Any) -> None:
        self.ctrl.setblocking(True)
        try:
            send_frame(self.ctrl, P.CONTROL_CODEC.encode(msg))
        finally:
            self.ctrl.setblocking(False)

    def _on_call(self, caller: _Caller) -> None:
        try:
            data = caller.sock.recv(262144)
        except BlockingIOError:
            return
        except OSError:  # reset: the caller is gone
            data = b""
        if not data:
            self._drop(caller)
            return
        try:
            msgs = caller.reader.feed(data)
        except ProtocolError as exc:
            # A frame that does not decode: that channel can no longer be trusted, and as
            # in a local worker the child leaves with a communication_error.
            self._drop(caller)
            self.exit = P.Exit(reason="protocol_error", category="communication_error",
                               type="ProtocolError", message=str(exc))
            return
        for msg in msgs:
            if isinstance(msg, P.Call):
                ref = self.actor.handle.remote(P.CALL_CODEC.encode(msg))
                self._when_done("reply", (caller, msg.id, perf_counter()), ref)
            elif isinstance(msg, P.Cast):
                self.actor.handle.remote(P.CALL_CODEC.encode(msg))

    def _on_wake(self) -> None:
        from ray.exceptions import RayActorError

        self.wake.drain()
        while self.done:
            kind, data, future = self.done.popleft()
            error = future.exception()
            if kind == "watch":
                self._on_watch(error, future)
                continue
            if kind == "terminated":  # after a stop of its own: every earlier reply is in
                self.exit = P.Exit(reason=data)
                continue
            if kind == "pong":
                if error is None:
                    self._send_control(P.Pong(seq=data, healthy=bool(future.result())))
                continue  # the actor is dying: its watch reports it
            caller, cid, started = data
            if isinstance(error, RayActorError):
                continue  # the actor died mid-call: its watch ends us, the caller sees EOF
            if error is not None:
                self.meter.error("communication_error")
                frame = P.CALL_CODEC.encode(P.Fail(
                    id=cid, category="communication_error", type=type(error).__name__,
                    message=f"the call could not reach the actor: {error}", traceback=""))
            else:
                self.meter.observe(perf_counter() - started)
                frame = future.result()
            if frame is not None and caller.sock.fileno() in self.callers:
                caller.out += frame
                self._flush(caller)

    def _on_watch(self, error: BaseException | None, future: Any) -> None:
        if error is None:
            # The worker stopped itself (self.stop, sys.exit in a command), maybe in the
            # middle of a command whose reply is not in yet. Its terminate hook is queued
            # behind the calls already sent (an actor runs them in order), so once it is
            # done every earlier reply has been forwarded; the actor answers calls that
            # arrive meanwhile with NotRun, as a leaving local worker does.
            reason = future.result()
            self._when_done("terminated", reason, self.actor.terminate.remote(reason))
            return
        category, kind, message, tb = classify(error)
        # ActorUnavailableError means "maybe alive" (its raylet is unreachable): kill it
        # first so that two copies never run once we are restarted.
        self.exit = P.Exit(reason="actor_died", category=category, type=kind,
                           message=message, traceback=tb or None)

    def _terminate(self, reason: str) -> None:
        """Run the worker's terminate hook within the shutdown grace."""
        import ray
        from ray.exceptions import GetTimeoutError, RayError

        shutdown = self.spec.shutdown
        # Within the first part of the grace: its supervisor sends SIGTERM at half of it.
        timeout = None if shutdown == "infinity" else float(shutdown) * 0.4
        try:
            ray.get(self.actor.terminate.remote(reason), timeout=timeout)
        except (GetTimeoutError, RayError) as exc:  # gone or too slow: it is killed next
            sys.stderr.write(f"terminate of {self.path}: {type(exc).__name__}\n")

    def _flush(self, caller: _Caller) -> None:
        try:
            sent = caller.sock.send(caller.out)
            del caller.out[:sent]
        except BlockingIOError:
            pass
        except OSError:  # the caller left; what it was owed has nobody to read it
            self._drop(caller)
            return
        want = bool(caller.out)
        if want != caller.writing:
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if want else 0)
            self.sel.modify(caller.sock, events, caller)
            caller.writing = want

    def _drop(self, caller: _Caller) -> None:
        self.callers.pop(caller.sock.fileno(), None)
        self.sel.unregister(caller.sock)
        caller.sock.close()

    def _leave(self) -> int:
        """End the actor, report the exit, leave. Callers see their channels close."""
        self._kill()
        for caller in list(self.callers.values()):
            self._drop(caller)
        try:
            self._send_control(self.exit)
        except OSError:  # the supervisor is gone; nobody to tell
            pass
        return 0
