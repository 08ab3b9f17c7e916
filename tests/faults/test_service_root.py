"""The root of `python -m supervisor run` under pressure on its control socket, and SIGHUP.

- Out of descriptors, accept() fails: the root stops accepting for a moment (0.1 s doubling
  to 1 s while it lasts), says so once, and accepts again when descriptors are free. It
  once died of the uncaught EMFILE, taking the whole tree with it.
- Partial control frames of all clients together are bounded (PARTIAL_BUDGET): past it,
  the client holding the most is dropped. Ten clients each sending 63 MiB of a frame once
  made the root hold 662 MiB.
- SIGHUP (`kill -HUP`, or a closed terminal) reloads the tree file: with the file
  unchanged, nothing is stopped and the tree runs on. It once killed the root at once: no
  terminate(), exit 129, a stale socket; later it stopped the tree gracefully.
"""

from __future__ import annotations

import os
import signal
import struct
import time
from pathlib import Path

import psutil
import pytest

import supervisor
from supervisor import WorkerError
from supervisor.service.control import PARTIAL_BUDGET, accept_pause

pytestmark = pytest.mark.integration

MIB = 1024 * 1024

TREE = """
[tree]
id = "pressed"

[[tree.children]]
id = "w"
worker = "tests.faults._workers:Target"
max_memory_mb = 1000  # its RSS is read from /proc every second: a descriptor each time

[[tree.children]]
id = "v"
worker = "tests.faults._workers:Target"
"""

FAREWELL_TREE = """
[tree]
id = "hangup"

[[tree.children]]
id = "first"
worker = "tests.faults._workers:Farewell"
kwargs = {{ record = "{record}" }}

[[tree.children]]
id = "second"
worker = "tests.faults._workers:Farewell"
kwargs = {{ record = "{record}" }}
"""


def peak_rss(pid: int) -> int:
    """The highest resident set size `pid` ever had, in bytes (VmHWM). psutil has no
    peak RSS on Linux, and sampling the current RSS could miss a short peak."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM in /proc/{pid}/status")


def test_the_root_survives_running_out_of_descriptors(service):
    svc = service(TREE)
    root = psutil.Process(svc.proc.pid)
    start = len(svc.lines)
    with supervisor.connect(svc.socket) as app:
        assert app.call("w", "ping") == "pong"  # its channel to w is open from now on
        _, hard = root.rlimit(psutil.RLIMIT_NOFILE)
        headroom = 8
        root.rlimit(psutil.RLIMIT_NOFILE, (root.num_fds() + headroom, hard))
        idle = []
        try:
            # connect() completes in the kernel (the listen backlog) whether or not the
            # root can accept: more connections than the root has descriptors for.
            for _ in range(headroom + 4):
                idle.append(svc.connect())
            svc.wait_line("control socket: cannot accept a connection (Too many open "
                          "files); not accepting for a moment, the tree runs on",
                          start=start)
            # Meanwhile the tree serves: open channels work, a new one is refused (its
            # socket cannot be received), the root lives; for 2.5 s, so that w's memory
            # check has run twice without a descriptor.
            until = time.monotonic() + 2.5
            while time.monotonic() < until:
                assert app.call("w", "ping") == "pong"
                assert svc.proc.poll() is None
            with pytest.raises(WorkerError, match="out of file descriptors"):
                app.call("v", "ping")
            assert svc.proc.poll() is None
        finally:
            for sock in idle:
                sock.close()
        # The root is still at its low limit: what the idle clients held is free again.
        done = svc.cmd("call", "v", "ping")
        assert (done.returncode, done.stdout) == (0, '"pong"\n'), done.stderr
        svc.wait_line("control socket: accepting again after ", start=start)
        assert app.call("v", "ping") == "pong"
        assert app.pid == root.pid
    # Said once when accepting stops and once when it resumes, not once per pause.
    lines = svc.lines[start:]
    paused = sum("control socket: cannot accept" in line for line in lines)
    assert paused == sum("control socket: accepting again" in line for line in lines)
    assert svc.stop() == 0


def test_accept_pauses_double_up_to_a_second():
    assert [accept_pause(n) for n in range(7)] == [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0]
    assert accept_pause(10_000) == 1.0  # a shortage that lasts for hours


@pytest.mark.timeout(180)
def test_partial_frames_of_all_clients_together_are_bounded(service):
    """Ten clients each send 63 MiB of a frame announced at 63 MiB + 1 (under the 64 MiB
    frame limit, so each alone is legal) and stop there."""
    svc = service(TREE)
    root = psutil.Process(svc.proc.pid)
    rss_before = root.memory_info().rss
    size = 63 * MIB
    payload = memoryview(bytes(size))
    clients = []
    start = len(svc.lines)
    try:
        for _ in range(10):
            sock = svc.connect()
            sock.settimeout(60)
            sock.sendall(struct.pack(">I", size + 1))
            sock.sendall(payload)
            clients.append(sock)
        # Once the root answers this, it has read every byte sent before it.
        done = svc.cmd("status")
        assert done.returncode == 0, done.stderr
        peak = peak_rss(root.pid)
        grown = (peak - rss_before) / MIB
        print(f"10 clients x 63 MiB partial frames: the root's RSS {rss_before / MIB:.1f} "
              f"MiB, peak {peak / MIB:.1f} MiB (+{grown:.1f} MiB; budget "
              f"{PARTIAL_BUDGET // MIB} MiB)")
        assert grown < PARTIAL_BUDGET / MIB + 32
        dropped = [line for line in svc.lines[start:]
                   if "dropped the client holding the most partial frame bytes" in line]
        # 126 MiB (two full frames) fit the 128 MiB budget; each later client pushed the
        # total over it and the oldest full one went.
        assert len(dropped) == 8, dropped
        assert svc.proc.poll() is None
    finally:
        for sock in clients:
            sock.close()
    with supervisor.connect(svc.socket) as app:
        assert app.pid == root.pid
        assert app.call("w", "ping") == "pong"


def _pids(svc) -> list[int]:
    with supervisor.connect(svc.socket) as app:
        return [info.pid for info in app.which_children()]


def test_sighup_reloads_and_the_tree_runs_on(service, tmp_path):
    record = tmp_path / "terminated"
    svc = service(FAREWELL_TREE.format(record=record))
    before = _pids(svc)
    start = len(svc.lines)
    svc.proc.send_signal(signal.SIGHUP)
    line = svc.lines[svc.wait_line("reloaded ", start=start)]
    assert line.endswith("0 added, 0 removed, 0 changed, 0 updated, 2 unchanged"), line
    assert _pids(svc) == before and not record.exists()  # nothing was stopped
    assert svc.stop() == 0  # SIGTERM: the graceful stop, in reverse order
    assert record.read_text() == "second shutdown\nfirst shutdown\n"
    assert not os.path.exists(svc.socket)


def test_a_terminal_hangup_reloads_and_the_workers_ignore_it(service, tmp_path):
    """A terminal that closes sends SIGHUP to its whole foreground process group: the
    workers ignore it (as they ignore Ctrl-C), the root reloads its file."""
    record = tmp_path / "terminated"
    svc = service(FAREWELL_TREE.format(record=record), own_group=True)
    before = _pids(svc)
    start = len(svc.lines)
    svc.signal_group(signal.SIGHUP)
    svc.wait_line("reloaded ", start=start)
    assert _pids(svc) == before and not record.exists()
    assert svc.stop() == 0
    assert record.read_text() == "second shutdown\nfirst shutdown\n"
    assert not os.path.exists(svc.socket)
