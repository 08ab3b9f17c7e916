"""Workers the Ray tests run on both backends (importable on the cluster's workers)."""

from __future__ import annotations

import os
import time

from supervisor import Worker, idempotent


class Counter(Worker):
    def init(self, start: int = 0) -> None:
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def pid(self) -> int:
        return os.getpid()

    def boom(self, message: str = "bad input") -> None:
        raise ValueError(message)

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def unencodable(self) -> object:
        return object()

    def restarts_seen(self) -> int:
        return self.restarts

    def quit(self, reason: str = "normal") -> None:
        self.stop(reason)


class FailingInit(Worker):
    def init(self) -> None:
        raise RuntimeError("no model file at /models/x")


def _signal_arrival(fifo: str) -> None:
    with open(fifo, "w") as f:
        f.write("x")


class Slow(Counter):
    def busy(self, fifo: str, seconds: float) -> str:
        """Tell the test the call arrived (through a FIFO), then take `seconds`."""
        _signal_arrival(fifo)
        time.sleep(seconds)
        return "done"

    @idempotent
    def slow_once(self, fifo: str, marker: str) -> str:
        """The first call leaves a marker, says it arrived and hangs; a re-sent one returns."""
        if os.path.exists(marker):
            return "again"
        with open(marker, "w"):
            pass
        _signal_arrival(fifo)
        time.sleep(60)
        return "first"


class FailsWhenMarked(Counter):
    def init(self, marker: str) -> None:
        if os.path.exists(marker):
            raise RuntimeError(f"{marker} says broken")
        super().init()
