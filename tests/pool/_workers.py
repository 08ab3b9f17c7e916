"""Workers used by the pool tests (importable by the supervisor processes)."""

from __future__ import annotations

import os
import signal
import time

from supervisor import Worker, idempotent


def _gate(arrived: str, release: str) -> int:
    # Tell the test this call is running (our pid through `arrived`), then block until
    # the test lets one call through (a byte on `release`). See tests/pool/conftest.py.
    fd = os.open(arrived, os.O_WRONLY)
    os.write(fd, f"{os.getpid()}\n".encode())
    os.close(fd)
    fd = os.open(release, os.O_RDONLY)
    try:
        os.read(fd, 1)
    finally:
        os.close(fd)
    return os.getpid()


class Py(Worker):
    """A pool worker: answers with its pid, keeps session state, blocks, fails, dies."""

    def pid(self) -> int:
        return os.getpid()

    def echo(self, value):
        return value

    def square(self, x: int) -> int:
        if x < 0:
            raise ValueError(f"negative: {x}")
        return x * x

    def add_to_session(self, key: str, value: int) -> dict:
        """Append to a list kept in the session; returns our pid and the session's state."""
        self.session.setdefault(key, []).append(value)
        return {"pid": os.getpid(), "state": dict(self.session)}

    def sleep(self, seconds: float) -> int:
        time.sleep(seconds)
        return os.getpid()

    def gate(self, arrived: str, release: str) -> int:
        """Report arrival, block until the test releases it; returns our pid."""
        return _gate(arrived, release)

    def balloon_gate(self, mb: int, arrived: str, release: str) -> int:
        """Grow past the memory limit, then hold the worker at the gate."""
        self.blob = bytearray(b"\x01") * (mb * 1024 * 1024)  # touched pages count in RSS
        return _gate(arrived, release)

    @idempotent
    def pid_idem(self, _: object = None) -> int:
        return os.getpid()

    def die(self) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    def die_if(self, x: int) -> int:
        if x:
            os.kill(os.getpid(), signal.SIGKILL)
        return x

    def add(self, a: int, b: int) -> int:
        return a + b

    def unencodable_at(self, x: int, bad: int) -> object:
        return object() if x == bad else x


class Ordered(Worker):
    """Records the order in which `mark` calls were served."""

    def init(self) -> None:
        self.order: list[int] = []

    def mark(self, n: int) -> int:
        """Record `n`; a negative one is recorded, then raises ValueError."""
        self.order.append(n)
        if n < 0:
            raise ValueError(f"negative: {n}")
        return n

    def served(self) -> list[int]:
        return self.order

    def gate(self, arrived: str, release: str) -> int:
        return _gate(arrived, release)
