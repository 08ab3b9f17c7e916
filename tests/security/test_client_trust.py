"""The client side of the control socket against a hostile local user.

A control command or `supervisor.connect` checks the server before sending a byte (the
socket's directory chain, the socket's owner, the listening process's uid), accepts a
pickled reply only from a worker that opted in to pickle, reports a refusal as an error,
never signals a process it did not start, and waits out a full listen backlog.

The attacker's code runs as the second local user (`other_user`) under the system
interpreter with only the standard library: `FAKE_SERVER` speaks just enough of the wire
format by hand (MessagePack arrays of one-letter tags) to play a tree.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

import supervisor
from supervisor import Pool, Supervisor, Worker, child
from supervisor.errors import ConfigError, ProtocolError
from supervisor.wire import messages as P

from .._service import running
from .conftest import SYSTEM_PYTHON, OtherUser

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

ROOT = Path(__file__).resolve().parents[2]

TREE = """
[tree]
id = "echo"

[[tree.children]]
id = "echo"
worker = "workers.echo:Echo"
"""

# A fake control server: "pickle" answers an OpenChannel with a channel whose first call
# gets a pickled Reply (the payload, hex in argv[3]); "refuse" hangs up on every client
# without answering, as the real server's peer check does, and keeps a helper process of its own
# (its "tree") that nobody else may kill. Prints "ready <helper pid or 0>" once listening.
FAKE_SERVER = textwrap.dedent(r'''
    import os, socket, struct, subprocess, sys

    def pack(v):
        if v is None: return b"\xc0"
        if v is True: return b"\xc3"
        if v is False: return b"\xc2"
        if isinstance(v, int): return bytes([v]) if 0 <= v < 128 else b"\xd3" + struct.pack(">q", v)
        if isinstance(v, float): return b"\xcb" + struct.pack(">d", v)
        if isinstance(v, str):
            b = v.encode()
            return b"\xdb" + struct.pack(">I", len(b)) + b
        if isinstance(v, bytes): return b"\xc6" + struct.pack(">I", len(v)) + v
        if isinstance(v, list): return b"\xdd" + struct.pack(">I", len(v)) + b"".join(map(pack, v))
        if isinstance(v, dict):
            return b"\xdf" + struct.pack(">I", len(v)) + b"".join(pack(k) + pack(x) for k, x in v.items())
        raise TypeError(v)

    def frame(*fields):
        body = pack(list(fields))
        return struct.pack(">I", len(body)) + body

    def requests(conn):
        # (tag, id, fds) per frame: a request is an array ["t", id, ...] with a small id
        buf, fds = b"", []
        while True:
            data, new_fds, _, _ = socket.recv_fds(conn, 65536, 8)
            if not data:
                return
            buf += data
            fds += new_fds
            while len(buf) >= 4 and len(buf) >= 4 + struct.unpack(">I", buf[:4])[0]:
                size = struct.unpack(">I", buf[:4])[0]
                body, buf = buf[4:4 + size], buf[4 + size:]
                yield chr(body[2]), body[3], fds
                fds = []

    path, mode = sys.argv[1], sys.argv[2]
    payload = bytes.fromhex(sys.argv[3]) if len(sys.argv) > 3 else b""
    policy = {"pid": os.getpid(), "idempotent": [], "call_timeout": 30.0,
              "on_timeout": "ignore", "fallback": None, "retries": {}, "serializer": "pickle"}
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o777)
    server.listen(8)
    helper = None
    if mode == "refuse":
        helper = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                                  stdin=subprocess.PIPE)
    print("ready", helper.pid if helper else 0, flush=True)
    while True:
        conn, _ = server.accept()
        if mode == "refuse":
            # Hang up without a word, as the real server's peer check does; only once the
            # first request is in, so a client that goes on to signal processes gets to.
            next(requests(conn), None)
            conn.close()
            continue
        for tag, rid, fds in requests(conn):
            if tag == "o" and fds:
                conn.sendall(frame("y", rid, policy))
                chan = socket.socket(fileno=fds[0])
                for ctag, cid, _ in requests(chan):
                    if ctag == "c":
                        chan.sendall(frame("r", cid, payload, True))
                        break
            else:
                conn.sendall(frame("y", rid, None))
''')


class _Planted:
    """What the payload leaves behind when unpickled: a directory at `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def planted_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Planted(marker))


@pytest.fixture
def fake_server(other_user: OtherUser) -> Iterator[Callable[..., tuple[subprocess.Popen, int]]]:
    """fake_server(path, mode, payload=b"") -> (process, helper pid or 0): FAKE_SERVER run
    as the other user, listening. Every one is killed at teardown, its helper first."""
    started: list[subprocess.Popen] = []

    def start(path: Path, mode: str, payload: bytes = b"") -> tuple[subprocess.Popen, int]:
        proc = other_user.popen([SYSTEM_PYTHON, "-c", FAKE_SERVER, str(path), mode,
                                 payload.hex()], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        started.append(proc)
        line = proc.stdout.readline()  # "ready N", or EOF when it failed
        assert line.startswith("ready "), f"the fake server did not start: {proc.stderr.read()}"
        return proc, int(line.split()[1])

    yield start
    for proc in started:
        try:
            helpers = psutil.Process(proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            helpers = []
        for helper in helpers:
            helper.kill()
        proc.kill()
        proc.wait(10)
        psutil.wait_procs(helpers, timeout=10)
        proc.stdout.close()
        proc.stderr.close()


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "supervisor", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def owner_words(other_user: OtherUser) -> str:
    return f"uid {other_user.uid} ({other_user.name})"


# ------------------------------------------------------------------ planted servers
def test_a_fake_server_in_the_default_directory_is_refused_unread(
        other_user, shared_tmp, fake_server):
    """The other user creates <tmp>/supervisor-0 first and listens there: root's
    `call` without --socket refuses the directory (exit 2, naming it and its owner), never
    probes the socket in it, and the pickled reply it would have got never runs."""
    shared = shared_tmp / "shared"
    planted = shared / f"supervisor-{os.geteuid()}"
    marker = shared_tmp / "unpickled"
    fake_server(planted / "echo.sock", "pickle", planted_pickle(marker))
    env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
    env["TMPDIR"] = str(shared)

    result = cli("call", "echo", "echo", '["hi"]', env=env)

    assert not marker.exists(), "the attacker's pickle ran in the caller"
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (
        f"error: socket: refusing {planted}: it belongs to {owner_words(other_user)}, not "
        f"to root, in the shared directory {shared}; another user may have planted it\n")


def test_an_ancestor_another_user_owns_is_refused_before_and_after_a_swap(
        other_user, shared_tmp, fake_server, tmp_path):
    """--socket under a directory the other user owns: `run` refuses to serve there (they
    could swap the path at any moment), and after they do swap it for a fake server,
    root's `call` is refused the same way and the fake's pickle never runs."""
    theirs = shared_tmp / "theirs"
    theirs.mkdir()
    os.chown(theirs, other_user.uid, other_user.gid)
    run_dir = theirs / "run"
    run_dir.mkdir(mode=0o700)  # root's own directory, inside theirs
    sock = run_dir / "ctl.sock"
    tree = tmp_path / "tree.toml"
    tree.write_text(TREE)
    marker = shared_tmp / "unpickled"
    refusal = (f"error: socket: refusing {theirs}: it belongs to {owner_words(other_user)}, "
               "not to root; another user may have planted it\n")

    served = cli("run", str(tree), "--socket", str(sock))
    assert served.returncode == 2, served.stderr
    assert served.stderr == (f"error: socket: refusing {theirs}: it belongs to "
                             f"{owner_words(other_user)}, not to root; another user may have "
                             "planted it\n")
    assert not sock.exists()

    swap = other_user.run([SYSTEM_PYTHON, "-c",
                           f"import os; os.rename({str(run_dir)!r}, {str(run_dir)!r} + '.old')"])
    assert swap.returncode == 0, swap.stderr
    fake_server(sock, "pickle", planted_pickle(marker))

    call = cli("call", "echo", "echo", '["hi"]', "--socket", str(sock))
    assert not marker.exists(), "the attacker's pickle ran in the caller"
    assert (call.returncode, call.stdout, call.stderr) == (2, "", refusal)


# ------------------------------------------------------------------ refusals
def test_a_refused_shutdown_is_an_error_and_kills_nothing(other_user, fake_server):
    """A tree of the other user, trusted explicitly, whose peer check refuses root (it
    hangs up without a word): `shutdown` says so and exits 2, never "tree stopped", and
    every process of that tree is still running afterwards."""
    sock = other_user.scratch / "theirs.sock"
    server, helper = fake_server(sock, "refuse")

    result = cli("shutdown", "--socket", str(sock), "--server-uid", other_user.name)

    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == (f"error: socket: refused by the server at {sock} (its peer "
                             "check: is it another user's tree?)\n")
    assert server.poll() is None
    assert psutil.Process(helper).status() != psutil.STATUS_ZOMBIE


def test_a_connected_app_reports_only_what_the_root_said(tmp_path):
    """Disconnecting is not a stop: `wait()` says "disconnected", not "normal"; a
    shutdown request answered by the root is "normal" once the root reported its exit."""
    with running(tmp_path) as start:
        svc = start(TREE)
        svc.wait_line("is up")
        app = supervisor.connect(svc.socket)
        app.close()
        assert app.wait(0) == "disconnected"
        app = supervisor.connect(svc.socket)
        app.stop(timeout=30)
        assert app.wait(0) == "normal"
        assert svc.finish() == 0


def test_connect_refuses_a_server_running_as_another_uid(other_user):
    """SO_PEERCRED: the socket file says the other user, but root is listening. With
    `server_uid` naming the other user, the listening process is what is refused."""
    directory = other_user.scratch / "peer"
    directory.mkdir()
    os.chown(directory, other_user.uid, other_user.gid)
    path = directory / "p.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)
    try:
        os.chown(path, other_user.uid, other_user.gid)
        with pytest.raises(ConfigError) as info:
            supervisor.connect(path, server_uid=other_user.uid)
        assert str(info.value) == (
            f"socket: refusing the server at {path}: it runs as uid 0 (root), not as the "
            f"server uid you named ({owner_words(other_user)}); pass --server-uid "
            "(server_uid=) only if you trust that user")
    finally:
        listener.close()


# ------------------------------------------------------------------ the directory chain
@pytest.fixture
def listening() -> Iterator[Callable[[Path], Path]]:
    """listening(path) -> path: a bare listener there (root's), closed at teardown."""
    socks: list[socket.socket] = []

    def listen(path: Path) -> Path:
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.listen(4)
        socks.append(sock)
        return path

    yield listen
    for sock in socks:
        sock.close()


def _refused(path: Path, message: str, **kwargs) -> None:
    with pytest.raises(ConfigError) as info:
        supervisor.connect(path, timeout=2.0, **kwargs).close()
    assert str(info.value) == f"socket: {message}"


def test_a_directory_others_can_write_is_refused(other_user, tmp_path, listening):
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    os.chmod(open_dir, 0o777)  # no sticky bit: anyone can replace the socket
    path = listening(open_dir / "x.sock")
    _refused(path, f"refusing {open_dir} (owner uid 0 (root)): it is writable by others "
                   "(mode 0777), who could swap what is in it")


def test_a_symlink_is_walked_and_its_target_checked(other_user, tmp_path, listening):
    """A link in a trusted directory to the other user's directory: the target is what is
    refused, named by its real path."""
    evil = tmp_path / "evil"
    evil.mkdir()
    path = listening(evil / "x.sock")
    os.chown(evil, other_user.uid, other_user.gid)
    (tmp_path / "link").symlink_to(evil)
    _refused(tmp_path / "link" / "x.sock",
             f"refusing {evil}: it belongs to {owner_words(other_user)}, not to root; "
             "another user may have planted it")
    assert path.exists()


def test_a_socket_file_of_another_user_is_refused(other_user, tmp_path, listening):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    path = listening(private / "x.sock")
    os.chown(path, other_user.uid, other_user.gid, follow_symlinks=False)
    _refused(path, f"refusing {path}: the socket belongs to {owner_words(other_user)}, not "
                   "to you (uid 0 (root)); pass --server-uid (server_uid=) only if you "
                   "trust that user")


def test_the_callers_own_runtime_dir_is_trusted_whatever_is_above_it(
        other_user, tmp_path, listening, monkeypatch):
    """Nobody else can make a directory owned by the caller: a fault above the caller's
    own XDG_RUNTIME_DIR does not matter, one below it does."""
    from supervisor.wire.trust import Trust, check_socket

    above = tmp_path / "above"
    above.mkdir()
    os.chown(above, other_user.uid, other_user.gid)
    runtime = above / "xdg"
    runtime.mkdir(mode=0o700)
    (runtime / "supervisor").mkdir(mode=0o700)
    path = listening(runtime / "supervisor" / "x.sock")
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    check_socket(path, Trust.of())  # nothing raised
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    with pytest.raises(ConfigError, match=rf"^socket: refusing {above}: it belongs to "):
        check_socket(path, Trust.of())


# ------------------------------------------------------------------ pickled replies
class Forger(Worker):
    """A msgpack worker whose channel carries a pickled Reply: `forge` writes one for the
    call being served (found on the stack of the serving loop) ahead of its real reply."""

    def forge(self, payload: bytes) -> str:
        frame, caller, cid = sys._getframe(), None, None
        while frame is not None and (caller is None or cid is None):
            found = frame.f_locals
            if cid is None and isinstance(found.get("cid"), int):
                cid = found["cid"]
            if caller is None and hasattr(found.get("caller"), "sock"):
                caller = found["caller"]
            frame = frame.f_back
        caller.sock.sendall(P.CALL_CODEC.encode(P.Reply(id=cid, value=payload, pickled=True)))
        return "forged"

    def ping(self) -> str:
        return "pong"


def test_a_pickled_reply_on_a_msgpack_channel_is_refused_unread(tmp_path):
    """The caller learned the serializer from the tree when it opened the channel; the
    reply's own flag does not count. The call fails with ProtocolError, the channel is
    closed, the payload is never unpickled; the next call gets a new channel."""
    marker = tmp_path / "unpickled"
    payload = planted_pickle(marker)
    tree = Supervisor("root", children=[child("forger", Forger),
                                        Pool("pool", Forger, size=1)])
    expected = r"^ProtocolError: a pickled reply from a worker that did not opt in to pickle"
    with supervisor.start(tree) as app:
        with pytest.raises(ProtocolError, match=expected):
            app.call("forger", "forge", payload)
        assert app.call("forger", "ping") == "pong"
        pool = app.pool("pool")
        with pytest.raises(ProtocolError, match=expected):
            pool.call("forge", payload)
        with pytest.raises(ProtocolError, match=expected):
            pool.submit("forge", payload).result(30)
        assert pool.call("ping") == "pong"
    assert not marker.exists(), "a pickled reply was unpickled on a msgpack channel"


# ------------------------------------------------------------------ a full listen backlog
def _fill_backlog(path: str) -> list[socket.socket]:
    """Connect without waiting until the listener's backlog is full (EAGAIN)."""
    fillers = []
    while True:
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            sock.connect(path)
        except BlockingIOError:
            sock.close()
            return fillers
        fillers.append(sock)
        assert len(fillers) < 10_000, "the backlog never filled"


def test_connect_waits_out_a_full_backlog_within_its_timeout(tmp_path):
    """Nobody accepts and the backlog is full: connect waits for room until its timeout
    and says so (before: EAGAIN at once)."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(tmp_path / "full.sock"))
    listener.listen(1)
    fillers = _fill_backlog(str(tmp_path / "full.sock"))
    try:
        with pytest.raises(TimeoutError, match="did not accept within 0.5s"):
            supervisor.connect(tmp_path / "full.sock", timeout=0.5)
    finally:
        for sock in fillers:
            sock.close()
        listener.close()


def test_connect_gets_through_a_backlog_burst(tmp_path):
    """The service's backlog is full while its root is stopped (SIGSTOP); a connect made
    then succeeds once the root accepts again, within its timeout."""
    with running(tmp_path) as start:
        svc = start(TREE)
        svc.wait_line("is up")
        svc.proc.send_signal(signal.SIGSTOP)
        fillers: list[socket.socket] = []
        outcome: list[object] = []
        try:
            fillers = _fill_backlog(svc.socket)

            def dial() -> None:
                try:
                    with supervisor.connect(svc.socket, timeout=60) as app:
                        outcome.append(app.call("echo", "echo", "through"))
                except Exception as exc:  # reported by the assertion below
                    outcome.append(exc)

            thread = threading.Thread(target=dial)
            thread.start()
        finally:
            svc.proc.send_signal(signal.SIGCONT)
        for sock in fillers:
            sock.close()
        thread.join(60)
        assert outcome == ["through"]
