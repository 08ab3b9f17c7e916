"""The service root's HTTP server: `/metrics`, `/api/status`, a web page of the tree.

    browser / Prometheus ──HTTP──▶ server thread(s) ──control socket──▶ root's loop
                                        │ reads copies of
                                        ▼
                                   Hub (events, failure counts) ◀── root's loop publishes

Threads and fork: the root is a single-threaded supervisor that forks its children from its
loop thread, and stays so: this server lives in daemon threads of the same process
(`ThreadingHTTPServer`, one thread per request) that never fork, never log, never print and
never touch telemetry, loguru or the loop's objects. What they need from the loop they
either copy from the `Hub` (a lock held for a copy only; no child ever uses the hub, so a
child that inherits it held loses nothing) or ask for over the control socket, like any
client (`RootClient`). A forked child therefore never inherits a lock it needs; fork_child
closes the listening socket and every connection in the child at once.

Security: read-only unless a token file is configured; with one, POST /api/control (start,
stop, restart) needs the token in the `X-Supervisor-Token` header. A non-loopback address
without a token is refused at start (`MetricsOptions`). On a loopback address, a request
whose Host header is not a loopback name is refused (DNS rebinding: a web page elsewhere
must not read the tree through the user's browser). The page loads nothing from elsewhere
(its Content-Security-Policy says so), and the server answers no CORS preflight.
"""

from __future__ import annotations

import hmac
import json
import os
import secrets
import socket
import stat
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from ..errors import ConfigError, SupervisorError
from ..wire import messages as P
from . import metrics as metrics_text
from .control import RootClient
from .hub import Hub
from .options import MetricsOptions, is_loopback
from .page import PAGE
from .status import collect

__all__ = ["ObserveServer", "load_token", "TOKEN_HEADER"]

TOKEN_HEADER = "X-Supervisor-Token"
_CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'")
_MAX_BODY = 4096


def load_token(path: str) -> str:
    """The token in `path`, made there (random, mode 0600) when the file does not exist.

    An existing file must be a regular file of ours that group and others cannot read or
    write; anything else is refused with ConfigError (field ``metrics.token_file``)."""
    field = "metrics.token_file"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(f"cannot create {path}: {exc.strerror or exc}", field=field) from exc
    else:
        token = secrets.token_urlsafe(32)
        with os.fdopen(fd, "w") as stream:
            stream.write(token + "\n")
        return token
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror or exc}", field=field) from exc
    with os.fdopen(fd) as stream:
        info = os.fstat(stream.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid():
            raise ConfigError(f"refusing {path}: not a regular file of ours", field=field)
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise ConfigError(f"refusing {path}: mode {stat.S_IMODE(info.st_mode):04o} lets "
                              f"group or others see the token; chmod 600 {path}", field=field)
        token = stream.read().strip()
    if len(token) < 16:
        raise ConfigError(f"refusing {path}: the token is shorter than 16 characters",
                          field=field)
    return token


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    observe: ObserveServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # The default prints a traceback to stderr: no output from these threads (see
        # the module docstring). The handler answers 500 itself; this is a broken socket.
        self.observe.errors += 1


class _Server6(_Server):
    address_family = socket.AF_INET6


class ObserveServer:
    """The HTTP server of a service root; `start()` runs it in a daemon thread, `close()`
    stops it. Raises ConfigError for a bad token file, OSError when the address cannot be
    bound."""

    def __init__(self, options: MetricsOptions, control_path: Path, hub: Hub) -> None:
        self.options = options
        self.control_path = control_path
        self.hub = hub
        self.token = load_token(options.token_file) if options.token_file else None
        self.errors = 0
        self.prometheus = metrics_text.available()
        server_class = _Server6 if ":" in options.host else _Server
        self.httpd = server_class((options.host, options.port), _Handler)
        self.httpd.observe = self
        self.loopback = is_loopback(options.host)
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"

    def start(self) -> None:
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.2,),
                                       name="supervisor-observe", daemon=True)
        self.thread.start()

    def close(self) -> None:
        if self.thread is not None:
            self.httpd.shutdown()  # returns once serve_forever has left (within 0.2 s)
            self.thread.join(5)
        self.httpd.server_close()

    # What the handlers ask for ----------------------------------------------------------
    def client(self) -> RootClient:
        return RootClient(self.control_path)

    def tree(self) -> dict[str, Any]:
        with self.client() as root:
            doc, raws = collect(root.request)
        return {"status": doc, "time": time.time(), "buttons": self.token is not None,
                "supervisors": {path: {key: raw[key] for key in
                                       ("max_restarts", "max_seconds", "recent_restarts")}
                                for path, raw in raws.items()},
                "last_failures": self.hub.last_failures()}

    def control(self, action: str, path: str) -> dict[str, Any]:
        parent, _, child_id = path.strip("/").rpartition("/")
        if action not in ("start", "stop", "restart") or not child_id:
            raise ValueError("expected {action: start|stop|restart, path: CHILD-PATH}")
        with self.client() as root:
            if action in ("stop", "restart"):
                root.request(P.TerminateChild(id=0, path=parent, child_id=child_id))
            pid = None
            if action != "stop":
                pid = root.request(P.RestartChild(id=0, path=parent, child_id=child_id))
        return {"path": path, "action": action, "pid": pid}


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "otp-supervisor"
    timeout = 30  # seconds a client may take to send its request: no thread waits forever

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base's name
        pass  # no output from these threads (see the module docstring)

    @property
    def observe(self) -> ObserveServer:
        return self.server.observe

    def do_GET(self) -> None:  # noqa: N802 - the base's naming
        if not self._host_ok():
            return
        url = urllib.parse.urlsplit(self.path)
        query = urllib.parse.parse_qs(url.query)
        try:
            if url.path == "/":
                self._send(200, PAGE.encode(), "text/html; charset=utf-8")
            elif url.path == "/metrics" and not self.observe.prometheus:
                self._send(501, b"/metrics needs prometheus_client: pip install "
                           b"'otp-supervisor[metrics]'\n", "text/plain; charset=utf-8")
            elif url.path == "/metrics":
                with self.observe.client() as root:
                    doc, raws = collect(root.request)
                    body = metrics_text.render(doc, raws, self.observe.hub, root.request)
                self._send(200, body, metrics_text.CONTENT_TYPE)
            elif url.path == "/api/status":
                with self.observe.client() as root:
                    doc, _ = collect(root.request)
                self._json(200, doc)
            elif url.path == "/api/tree":
                self._json(200, self.observe.tree())
            elif url.path == "/api/events":
                after = int(query.get("after", ["0"])[0])
                self._json(200, {"events": self.observe.hub.since(after)})
            else:
                self._json(404, {"error": f"no such page: {url.path}"})
        except (SupervisorError, OSError, ValueError) as exc:
            self._json(503 if isinstance(exc, OSError) else 500,
                       {"error": f"{type(exc).__name__}: {exc}"})

    def do_POST(self) -> None:  # noqa: N802
        if not self._host_ok():
            return
        if urllib.parse.urlsplit(self.path).path != "/api/control":
            self._json(404, {"error": f"no such page: {self.path}"})
            return
        token = self.observe.token
        if token is None:
            self._json(403, {"error": "read-only: this server has no token "
                                      "(run with --metrics-token-file)"})
            return
        given = self.headers.get(TOKEN_HEADER, "")
        if not hmac.compare_digest(given.encode(), token.encode()):
            self._json(403, {"error": f"missing or wrong {TOKEN_HEADER} header"})
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if not 0 < length <= _MAX_BODY:
                raise ValueError(f"expected a JSON body of 1 to {_MAX_BODY} bytes")
            body = json.loads(self.rfile.read(length))
            if not isinstance(body, dict):
                raise ValueError("expected a JSON object")
            self._json(200, self.observe.control(str(body.get("action")),
                                                 str(body.get("path", ""))))
        except ValueError as exc:  # json.JSONDecodeError included
            self._json(400, {"error": str(exc)})
        except SupervisorError as exc:
            self._json(409, {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"})
        except OSError as exc:
            self._json(503, {"error": f"{type(exc).__name__}: {exc}"})

    def _host_ok(self) -> bool:
        if not self.observe.loopback:
            return True
        host = self.headers.get("Host", "")
        name = urllib.parse.urlsplit(f"//{host}").hostname or ""
        if is_loopback(name):
            return True
        self._json(421, {"error": f"Host {host!r} is not a loopback name; this server "
                                  "answers only requests for its loopback address"})
        return False

    def _json(self, code: int, value: Any) -> None:
        self._send(code, json.dumps(value).encode(), "application/json")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        if content_type.startswith("text/html"):
            self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        self.wfile.write(body)
