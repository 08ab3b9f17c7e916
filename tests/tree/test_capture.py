"""A child's output pipes in the supervisor: lines are logged, and a finished capture
says so once, so the supervisor forgets it without scanning every child's capture."""

from __future__ import annotations

import os

from supervisor.tree.output import Capture


class FakeLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, str]] = []
        self.attached = 0

    def attach(self) -> None:
        self.attached += 1

    def detach(self) -> None:
        self.attached -= 1

    def write(self, stream: str, level: str, text: str, extra: object = None) -> None:
        self.lines.append((stream, level, text))


class FakeLoop:
    def __init__(self) -> None:
        self.readers: dict[int, object] = {}

    def add_reader(self, fd: int, callback: object) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        del self.readers[fd]


def test_a_capture_reports_done_once_both_pipes_are_finished():
    log, loop, done = FakeLog(), FakeLoop(), []
    capture = Capture("w", log)
    os.write(capture.out_w, b"hello\nno newline")
    os.write(capture.err_w, b"oops\n")
    capture.in_parent(loop, done.append)  # closes our copies of the write ends
    assert sorted(loop.readers) == sorted([capture.out_r, capture.err_r])
    for _ in range(2):  # data, then EOF
        loop.readers[capture.out_r]()
    assert done == []  # stderr is still open
    assert capture.out_r not in loop.readers
    for _ in range(2):
        loop.readers[capture.err_r]()
    assert done == [capture]
    assert loop.readers == {} and log.attached == 0
    assert log.lines == [("stdout", "INFO", "hello"), ("stdout", "INFO", "no newline"),
                         ("stderr", "INFO", "oops")]
