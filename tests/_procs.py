"""Process helpers for tests: wait for foreign processes to exit, without polling."""

from __future__ import annotations

import os
import selectors
import time


def wait_gone(pids, timeout: float) -> list[int]:
    """Wait until every pid has exited (a zombie counts as exited); returns those alive.

    Uses pidfds, which become readable when the process terminates, so the wait is
    event-driven even for processes that are not our children.
    """
    sel = selectors.DefaultSelector()
    fds = {}
    try:
        for pid in pids:
            try:
                fd = os.pidfd_open(pid)
            except ProcessLookupError:  # already gone and reaped
                continue
            fds[fd] = pid
            sel.register(fd, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while fds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for key, _ in sel.select(remaining):
                sel.unregister(key.fd)
                fds.pop(key.fd)
                os.close(key.fd)
        return sorted(fds.values())
    finally:
        for fd in fds:
            os.close(fd)
        sel.close()
