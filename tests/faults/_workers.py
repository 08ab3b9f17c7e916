"""Workers for the fault campaign (importable by the supervisor processes and the CLI).

Only `Target` is ever sent fuzzed or random frames: every command it has is harmless (none
crashes, stops or sleeps), so a fuzzed frame that happens to decode into a valid call can
only be answered, never take the worker down by itself.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from supervisor import Worker


class Target(Worker):
    """Echoes tokens back; the caller checks it got its own token (no mixed replies)."""

    def echo(self, token: Any) -> Any:
        return token

    def ping(self) -> str:
        return "pong"

    def pid(self) -> int:
        return os.getpid()

    def add(self, a: int, b: int = 0) -> int:
        return a + b


class Edgy(Worker):
    """Commands whose results msgspec cannot encode, and one that sleeps."""

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        return "pong"

    def add(self, a: int, b: int = 0) -> int:
        return a + b

    def unencodable(self, kind: str) -> Any:
        if kind == "object":
            return object()
        if kind == "huge_int":
            return 2**70
        if kind == "cycle":
            loop: list = []
            loop.append(loop)
            return loop
        if kind == "generator":
            return (i for i in range(3))
        raise ValueError(f"unknown kind {kind!r}")

    def slow(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds


class Chatter(Worker):
    """Writes garbage to its stdout and stderr (straight to the fds, as C code would)."""

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> str:
        return "pong"

    def garbage(self, fd: int, marker: str) -> int:
        """Invalid UTF-8, a 1 MiB line, a flood of short lines, then `marker` + newline."""
        chunks = [
            b"\xff\xfe\xc3\x28 invalid utf-8 \xed\xa0\x80\n",
            b"L" * (1024 * 1024) + b"\n",
            b"".join(b"line %d\r\n" % i for i in range(20_000)),
            b"no newline here, ",  # continued by the marker: one line in the log
            marker.encode() + b"\n",
        ]
        written = 0
        for chunk in chunks:
            view = memoryview(chunk)
            while view:
                n = os.write(fd, view)
                written += n
                view = view[n:]
        return written

    def die_mid_line(self, text: str) -> None:
        """Write `text` without a newline to stdout and exit at once."""
        os.write(1, text.encode())
        os._exit(7)


class Forker(Worker):
    """Starts processes of its own, then dies: a subreaper must not let them survive."""

    def pid(self) -> int:
        return os.getpid()

    def spawn(self) -> list[int]:
        """A subprocess, a bare fork that ignores SIGTERM, and a double-forked daemon in
        its own session (its parent exits at once: it is an orphan already)."""
        pids = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"]).pid]
        pid = os.fork()
        if pid == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            time.sleep(300)
            os._exit(0)
        pids.append(pid)
        pids.append(self._daemon())
        return pids

    def _daemon(self) -> int:
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.setsid()
            if os.fork() == 0:
                os.write(w, str(os.getpid()).encode())
                time.sleep(300)
                os._exit(0)
            os._exit(0)
        os.close(w)
        os.waitpid(pid, 0)
        daemon = int(os.read(r, 32))
        os.close(r)
        return daemon

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)


class Farewell(Worker):
    """Appends its id to the file `record` from `terminate`: a test reads in which order
    a graceful stop reached the workers (one write each, O_APPEND)."""

    def init(self, record: str) -> None:
        self.record = record

    def ping(self) -> str:
        return "pong"

    def terminate(self, reason: str) -> None:
        with open(self.record, "a") as fh:
            fh.write(f"{self.id} {reason}\n")


class Chatty(Worker):
    """Writes log lines on demand: its supervisor logs each one (the log-backpressure tests)."""

    def pid(self) -> int:
        return os.getpid()

    def say(self, lines: int, width: int = 200) -> int:
        """Print `lines` lines of `width` characters to stdout; returns the bytes written."""
        line = "x" * width
        for i in range(lines):
            print(f"{i:08d} {line}")
        sys.stdout.flush()
        return lines * (width + 10)
