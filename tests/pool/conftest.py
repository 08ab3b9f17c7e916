"""Helpers for the pool tests: a gate that holds worker calls until the test lets go."""

from __future__ import annotations

import os
import select
import time

import pytest


class Gate:
    """Two FIFOs: a worker's `gate(arrived, release)` call writes its pid to `arrived`,
    then blocks until the test writes a byte to `release`.

    The test side holds both FIFOs open read-write for its whole life, so a worker never
    blocks opening them and a released byte is never lost.
    """

    def __init__(self, tmp_path) -> None:
        self.arrived = str(tmp_path / "arrived")
        self.release_path = str(tmp_path / "release")
        os.mkfifo(self.arrived)
        os.mkfifo(self.release_path)
        self._in = os.open(self.arrived, os.O_RDWR | os.O_NONBLOCK)
        self._out = os.open(self.release_path, os.O_RDWR)
        self._buf = b""

    @property
    def args(self) -> tuple[str, str]:
        return (self.arrived, self.release_path)

    def wait_arrived(self, timeout: float = 10.0) -> int:
        """The pid of the next worker whose gate call is running."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no gate call arrived in time")
            ready, _, _ = select.select([self._in], [], [], remaining)
            if ready:
                self._buf += os.read(self._in, 4096)
        line, self._buf = self._buf.split(b"\n", 1)
        return int(line)

    def release(self, n: int = 1) -> None:
        os.write(self._out, b"x" * n)

    def close(self) -> None:
        os.close(self._in)
        os.close(self._out)


@pytest.fixture
def gate(tmp_path):
    g = Gate(tmp_path)
    yield g
    g.close()


@pytest.fixture
def ex(gate):
    """A thread pool for blocking calls; at teardown every gate is let go first, so a
    failed assertion never leaves a thread blocked in a worker."""
    from concurrent.futures import ThreadPoolExecutor

    pool = ThreadPoolExecutor(8)
    yield pool
    gate.release(64)
    pool.shutdown(wait=True)


def wait_queued(pool, n: int, timeout: float = 10.0) -> None:
    """Wait until `n` blocking callers are queued in the pool (an event, not a sleep)."""
    state = pool._state
    with state.lock:
        if not state.queued.wait_for(lambda: len(state.waiters) >= n, timeout):
            raise AssertionError(f"{len(state.waiters)} callers queued, expected {n}")
