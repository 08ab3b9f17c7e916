"""Workers the example trees use."""

from __future__ import annotations

from supervisor import Worker


class Counter(Worker):
    """A counter with state: `incr(k)` adds and returns the new value."""

    def init(self, start: int = 0) -> None:
        self.n = start

    def incr(self, k: int = 1) -> int:
        self.n += k
        return self.n

    def value(self) -> int:
        return self.n
