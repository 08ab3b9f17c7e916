"""`run` under systemd's Type=notify: READY, STATUS, WATCHDOG and STOPPING datagrams,
received on a socket the test creates (as systemd would)."""

from __future__ import annotations

import os
import signal
import socket

import pytest

from supervisor.service.notify import Notifier

from .._service import running

pytestmark = pytest.mark.integration

TREE = """
[tree]
id = "unit"

[[tree.children]]
id = "echo"
worker = "workers.echo:Echo"
"""


def receive(sock: socket.socket, wanted: str, timeout: float = 20.0) -> list[dict[str, str]]:
    """The notifications received until one has the key `wanted` (each a dict)."""
    sock.settimeout(timeout)
    seen = []
    while True:
        data = sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines())
        seen.append(fields)
        if wanted in fields:
            return seen


def test_run_tells_systemd_ready_watchdog_and_stopping(tmp_path):
    address = tmp_path / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(address))
    env = {**os.environ, "NOTIFY_SOCKET": str(address), "WATCHDOG_USEC": "200000"}
    with listener, running(tmp_path) as start:
        svc = start(TREE, env=env)
        ready = receive(listener, "READY")[-1]
        assert ready == {"READY": "1", "STATUS": "tree 'unit' is up: 1 children"}
        # Every 0.1 s (half of WATCHDOG_USEC), from the supervisor's loop.
        assert receive(listener, "WATCHDOG")[-1] == {"WATCHDOG": "1"}
        assert receive(listener, "WATCHDOG")[-1] == {"WATCHDOG": "1"}
        svc.proc.send_signal(signal.SIGTERM)
        stopping = receive(listener, "STOPPING")[-1]
        assert stopping == {"STOPPING": "1", "STATUS": "stopping (normal)"}
        assert svc.finish() == 0


def notifier(environ: dict[str, str]) -> Notifier:
    made = Notifier(environ)
    made.close()  # only its reading of the environment is looked at
    return made


def test_an_abstract_socket_name_and_no_socket_at_all():
    assert notifier({"NOTIFY_SOCKET": "@unit/notify"}).address == "\0unit/notify"
    quiet = Notifier({})
    assert quiet.sock is None and quiet.watchdog is None
    quiet.send(READY=1)  # nothing to send it to: a no-op
    assert notifier({"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000"}).watchdog == 1.5
    # A watchdog meant for another process is not ours to feed.
    other = {"NOTIFY_SOCKET": "/x", "WATCHDOG_USEC": "3000000", "WATCHDOG_PID": "1"}
    assert notifier(other).watchdog is None
