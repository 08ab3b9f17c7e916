"""Workers used by the runtime tests (importable by the supervisor processes)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

from supervisor import Worker, idempotent


class Noted(Worker):
    """Appends lifecycle notes to a file so tests can check hooks ran and in what order."""

    def init(self, notes: str, fail: bool = False, ignore_term: bool = False) -> None:
        self.notes = notes
        if ignore_term:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        self._note(f"init {self.id}")
        if fail:
            raise RuntimeError(f"{self.id} refuses to start")

    def _note(self, text: str) -> None:
        with open(self.notes, "a") as fh:
            fh.write(text + "\n")

    def pid(self) -> int:
        return os.getpid()

    def terminate(self, reason: str) -> None:
        self._note(f"terminate {self.id} {reason}")


class SlowInit(Worker):
    """Notes when its `init` begins and ends, taking `seconds` in between."""

    def init(self, notes: str, seconds: float) -> None:
        with open(notes, "a") as fh:
            fh.write(f"begin {self.id}\n")
        time.sleep(seconds)  # an init that takes a while, for overlaps to show
        with open(notes, "a") as fh:
            fh.write(f"end {self.id}\n")


class Stubborn(Worker):
    """Ignores SIGTERM and never finishes terminate: only SIGKILL stops it."""

    def init(self) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)

    def pid(self) -> int:
        return os.getpid()

    def terminate(self, reason: str) -> None:
        while True:
            time.sleep(1)


class Service(Worker):
    """A worker with its own main loop."""

    def init(self, mode: str = "wait") -> None:
        self.mode = mode

    def run(self) -> None:
        if self.mode == "return":
            return
        if self.mode == "raise":
            raise RuntimeError("service loop failed")
        self.stopping.wait()

    def pid(self) -> int:
        return os.getpid()


class Spawner(Worker):
    """Starts a grandchild process of its own (which a subreaper must clean up)."""

    def spawn(self) -> int:
        proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
        return proc.pid

    def pid(self) -> int:
        return os.getpid()


class Calc(Worker):
    def init(self, base: int = 0) -> None:
        self.base = base

    def add(self, a: int, b: int = 0) -> int:
        return self.base + a + b

    @idempotent
    def get(self) -> int:
        return self.base

    def unencodable(self) -> object:
        return object()

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def _signal(self, fifo: str) -> None:
        fd = os.open(fifo, os.O_WRONLY)
        os.write(fd, b"x")
        os.close(fd)

    def busy(self, fifo: str, seconds: float) -> float:
        """Tell the test (through `fifo`) that the call arrived, then work for a while."""
        self._signal(fifo)
        time.sleep(seconds)
        return seconds


class Flaky(Worker):
    """Fails its `init` while `marker` exists; can balloon its memory on demand."""

    def init(self, marker: str) -> None:
        if os.path.exists(marker):
            raise RuntimeError(f"{marker} is present")

    def pid(self) -> int:
        return os.getpid()

    def balloon(self, mb: int) -> int:
        self.blob = bytearray(b"\x01") * (mb * 1024 * 1024)  # touched pages count in RSS
        return len(self.blob)

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class Moody(Worker):
    """Healthy until told otherwise; `health()` is what its heartbeats report."""

    def init(self) -> None:
        self.ok = True

    def health(self) -> bool:
        return self.ok

    def sicken(self) -> None:
        self.ok = False

    def pid(self) -> int:
        return os.getpid()


class Once(Worker):
    """Dies (SIGKILL) the first time a command runs with a fresh marker, then answers."""

    @idempotent
    def once(self, marker: str) -> str:
        return self._once(marker)

    def once_plain(self, marker: str) -> str:
        return self._once(marker)

    def _once(self, marker: str) -> str:
        if not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return f"ok from {os.getpid()}"


class Point:
    """A plain class: msgpack cannot carry it, pickle can."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


class Pickling(Worker):
    """Returns objects only pickle can carry (run with serializer="pickle")."""

    def point(self, x: int, y: int = 0) -> Point:
        return Point(x, y)

    def unpicklable(self, x: int) -> object:
        return (lambda: x) if x < 0 else Point(x, x)


class Hog(Worker):
    """Allocates memory at a set rate (the max_memory_mb tests); returns its peak RSS."""

    def init(self, handle_term: bool = False) -> None:
        self.hoard: list[bytes] = []
        if handle_term:  # a worker that winds down slowly: SIGTERM alone does not end it
            signal.signal(signal.SIGTERM, lambda *_: None)

    def pid(self) -> int:
        return os.getpid()

    def grow(self, rate_mb_s: float, cap_mb: float, chunk_mb: int = 10) -> int:
        """Allocate (and touch) `chunk_mb` MiB at a time, `rate_mb_s` MiB a second, up to
        `cap_mb` MiB; then hold it. Returns only if nobody stopped it within 60 s."""
        start = time.monotonic()
        chunk = chunk_mb * 1024 * 1024
        while len(self.hoard) * chunk_mb < cap_mb:
            self.hoard.append(b"\x01" * chunk)  # written, so resident (not lazy zero pages)
            ahead = len(self.hoard) * chunk_mb / rate_mb_s - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
        time.sleep(60)
        return len(self.hoard) * chunk_mb


class HangsOnRestart(Worker):
    """On a restart, its `init` connects to the test's socket, sends its pid and waits
    there until the test closes the connection (or kills it)."""

    def init(self, sock_path: str) -> None:
        if self.restarts:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
                conn.connect(sock_path)
                conn.sendall(str(os.getpid()).encode())
                conn.recv(1)

    def ping(self) -> str:
        return "pong"


class Environ(Worker):
    """Reads its own environment."""

    def get(self, name: str) -> str | None:
        return os.environ.get(name)
