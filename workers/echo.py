"""Echo: a worker for demos and tests that echoes, counts, sleeps and crashes on demand."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

from supervisor import Worker

__all__ = ["Echo"]


class Echo(Worker):
    """Echoes its arguments; `crash()` kills its own process, `fail()` raises."""

    def init(self, prefix: str = "", fail_init: bool = False) -> None:
        if fail_init:
            raise RuntimeError("init asked to fail")
        self.prefix = prefix
        self.count = 0

    def echo(self, value: Any) -> Any:
        self.count += 1
        return f"{self.prefix}{value}" if self.prefix and isinstance(value, str) else value

    def ping(self) -> str:
        return "pong"

    def pid(self) -> int:
        return os.getpid()

    def calls(self) -> int:
        return self.count

    def sleep(self, seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    def fail(self, message: str = "asked to fail") -> None:
        raise ValueError(message)

    def crash(self, sig: int = signal.SIGKILL) -> None:
        """Die at once by `sig` (SIGKILL by default): no reply, no terminate."""
        os.kill(os.getpid(), sig)

    def exit(self, reason: str = "normal") -> str:
        """Leave after this reply with `reason` (normal = a clean exit)."""
        self.stop(reason)
        return reason
