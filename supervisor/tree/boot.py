"""Entry point of a root supervisor started by `supervisor.start()`.

The App starts this module with fork+exec (`python -c 'from supervisor.tree.boot import main; ...' FD PPID`), which is
safe from a process that has threads, unlike a bare fork. Over the inherited socket it
sends one boot frame: 4-byte length + pickle of ``{"prep": ..., "spec": bytes}``. `prep` is
multiprocessing's preparation data (sys.path, cwd, the main module), applied before the
spec is unpickled, so Worker classes defined in the caller's ``__main__`` resolve here as
they do under multiprocessing's spawn. The spec is handed over once with pickle on this
private channel between the same user's processes; call traffic never is.
"""

from __future__ import annotations

import os
import pickle
import signal
import socket
import struct
import sys


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise EOFError("the App closed the boot channel")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _log_without_blocking() -> None:
    """loguru's default handler, on the stderr sink that never blocks the loop."""
    from loguru import logger

    from .logsink import stderr_sink

    try:
        logger.remove(0)  # the handler loguru adds on import, with its defaults
    except ValueError:  # LOGURU_AUTOINIT=0: no default handler, nothing to replace
        return
    logger.add(stderr_sink())


def main() -> int:
    fd, parent = int(sys.argv[-2]), int(sys.argv[-1])
    from .proc import set_parent_death_signal

    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != parent:  # the App died before we could ask to die with it
        return 1
    # Ctrl-C in a terminal reaches the whole process group: the App decides, not us.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _log_without_blocking()
    sock = socket.socket(fileno=fd)
    sock.setblocking(True)
    (size,) = struct.unpack(">I", _recv_exact(sock, 4))
    boot = pickle.loads(_recv_exact(sock, size))
    if boot.get("prep"):
        import multiprocessing.spawn

        multiprocessing.spawn.prepare(boot["prep"])
    spec = pickle.loads(boot["spec"])
    from .childlog import install
    from .process import SupervisorProcess

    install(boot.get("logs"))  # before any child starts: they inherit it

    return SupervisorProcess(spec, "", sock, root=True).main()


if __name__ == "__main__":
    sys.exit(main())
