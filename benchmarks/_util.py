"""Shared helpers: percentiles, a table printer, JSON results, and the raw floor.

The raw floor is the least a supervisor could possibly cost: a forked child serving
length-prefixed msgspec frames over an AF_UNIX socketpair, with nothing in between.

    parent ── | 4-byte big-endian length | MessagePack body | ──▶ forked child
           ◀──────────────── same framing, echoed value ────────────────

Benchmarks report every contender as p50/p99 and as a ratio to that floor. Nothing here
asserts anything about speed: the numbers are printed and written to
``benchmarks/results/<name>.json`` (git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import statistics
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

__all__ = [
    "RESULTS_DIR",
    "FrameClient",
    "echo",
    "fork_frame_server",
    "fmt_ratio",
    "fmt_us",
    "machine_info",
    "parse_args",
    "print_table",
    "quiet_reporter",
    "raise_nofile",
    "ratio",
    "reap",
    "report_leftovers",
    "summarize",
    "write_json",
]

RESULTS_DIR = Path(__file__).resolve().parent / "results"
_START: dict[str, Any] = {}  # when the run started and the code it started on
_LENGTH = struct.Struct(">I")


def echo(x: Any) -> Any:
    """The peers' tiny job: module-level, so every pool can pickle it by reference."""
    return x


# --------------------------------------------------------------------------- statistics
def summarize(samples_ns: Sequence[int]) -> dict[str, Any]:
    """p50/p99/mean/min/max of nanosecond samples, in microseconds."""
    if not samples_ns:
        return {"n": 0}
    us = [s / 1000.0 for s in samples_ns]
    if len(us) == 1:
        p50 = p99 = us[0]
    else:
        cuts = statistics.quantiles(us, n=100, method="inclusive")
        p50, p99 = cuts[49], cuts[98]
    return {"n": len(us), "p50_us": p50, "p99_us": p99, "mean_us": statistics.fmean(us),
            "min_us": min(us), "max_us": max(us)}


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def fmt_us(value: float | None) -> str:
    """Microseconds, switching to ms above 10 ms so long tables stay readable."""
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:.1f} ms"
    if value >= 1000:
        return f"{value / 1000:.2f} ms"
    return f"{value:.1f} us"


def fmt_ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def print_table(title: str, headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    rows = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = "  ".join("-" * w for w in widths)
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print(line)
    for row in rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:],
                                                                      strict=True)]
        print("  ".join(cells))
    sys.stdout.flush()


# --------------------------------------------------------------------------- run context
def parse_args(description: str, argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--log", action="store_true",
                        help="keep supervisor's default loguru reporter on in this process "
                        "(it logs every tree event to stderr)")
    args = parser.parse_args(argv)
    _START.update(started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), git_at_start=_git_state())
    if not args.log:
        quiet_reporter()
    return args


def quiet_reporter() -> None:
    """Silence the App-side loguru lines of the `supervisor` package in this process.

    `supervisor.start()` attaches a reporter that logs every event (1,000 workers = 2,000
    lines at start and stop). Its handler still runs; loguru drops the records early.
    Supervisor and worker processes keep logging their own warnings.
    """
    from loguru import logger

    logger.disable("supervisor")


def machine_info() -> dict[str, Any]:
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
        else None,
        "loadavg": load,
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": _git_state(),  # at the end of the run; git_at_start: at its start
        # No .pyc files means every module a forked worker imports is compiled anew.
        "env": {k: os.environ.get(k) for k in ("PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")},
    }


def _git_state() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return {"head": head or None, "modified_files": dirty.split()[1::2]}


def report_leftovers() -> None:
    """Print any descendant still alive a moment after cleanup (honesty, not a test).

    loky and multiprocessing leave their resource trackers running until this process
    exits (they leave on EOF from us); anything else here is a leak worth a look.
    """
    import psutil

    alive = psutil.Process().children(recursive=True)
    _, alive = psutil.wait_procs(alive, timeout=3.0)
    for proc in alive:
        try:
            cmd = " ".join(proc.cmdline())
        except psutil.Error:
            continue
        print(f"note: still running after cleanup: pid {proc.pid}: {cmd[:100]}")


def write_json(name: str, payload: dict[str, Any]) -> Path:
    """Write ``results/<name>.json`` (``<name>.quick.json`` for a --quick run, so a smoke
    run never replaces the numbers of a full one)."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    suffix = ".quick" if payload.get("quick") else ""
    path = RESULTS_DIR / f"{name}{suffix}.json"
    data = {"benchmark": name, "machine": {**machine_info(), **_START}, **payload}
    path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    print(f"\nresults written to {path}")
    return path


def raise_nofile() -> tuple[int, int, int]:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; (old soft, new soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    new = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if new != soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
    return soft, new, hard


def reap(pid: int, timeout: float = 5.0) -> None:
    """SIGKILL one of *our* children (if still there) and wait for it."""
    try:
        os.kill(pid, 9)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + timeout
    while True:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:  # already reaped
            return
        if done or time.monotonic() > deadline:
            return
        time.sleep(0.001)


# --------------------------------------------------------------------------- raw floor
def _recv_frame(sock: socket.socket, buf: bytearray) -> memoryview | None:
    """Read one frame into `buf`; its body, or None at EOF.

    Request/reply with one frame in flight, so a read never runs into the next frame.
    The floor's frames are tiny; one larger than `buf` is refused, not buffered.
    """
    view = memoryview(buf)
    got = 0
    need = 4
    while got < need:
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            return None
        got += n
        if need == 4 and got >= 4:
            need = 4 + _LENGTH.unpack_from(buf)[0]
            if need > len(buf):
                raise ValueError(f"frame of {need} bytes exceeds the floor's {len(buf)}")
    return view[4:need]


def _encode_frame(encoder: msgspec.msgpack.Encoder, msg: Any) -> bytearray:
    out = bytearray(4)
    encoder.encode_into(msg, out, 4)
    _LENGTH.pack_into(out, 0, len(out) - 4)
    return out


def _serve_frames(sock: socket.socket) -> None:
    """The floor child: decode each request, echo its argument, until EOF."""
    encoder = msgspec.msgpack.Encoder()
    decoder = msgspec.msgpack.Decoder()
    buf = bytearray(65536)
    while True:
        body = _recv_frame(sock, buf)
        if body is None:
            return
        cid, _method, args = decoder.decode(body)
        sock.sendall(_encode_frame(encoder, (cid, args[0])))


def fork_frame_server(close_fds: Iterable[int] = (),
                      serve: Callable[[socket.socket], None] | None = None,
                      ) -> tuple[int, socket.socket]:
    """Fork a child serving frames; returns (pid, the parent's end of the socketpair).

    The child closes the parent's end (and `close_fds`, fds of other children it must not
    keep open), serves until EOF (`serve(sock)`, by default one reply per request frame),
    then leaves with ``os._exit`` so none of the parent's atexit handlers run twice. It
    also gets EOF, and so exits, when the parent dies.
    """
    mine, theirs = socket.socketpair()
    close_fds = list(close_fds)
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            mine.close()
            for fd in close_fds:
                try:
                    os.close(fd)
                except OSError:
                    pass
            (serve or _serve_frames)(theirs)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    theirs.close()
    return pid, mine


class FrameClient:
    """The parent side of the floor: send one frame, block for the reply."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.encoder = msgspec.msgpack.Encoder()
        self.decoder = msgspec.msgpack.Decoder()
        self.buf = bytearray(65536)
        self.next_id = 0

    def call(self, value: Any) -> Any:
        self.next_id += 1
        self.sock.sendall(_encode_frame(self.encoder, (self.next_id, "echo", (value,))))
        body = _recv_frame(self.sock, self.buf)
        if body is None:
            raise EOFError("the floor server closed the channel")
        cid, result = self.decoder.decode(body)
        if cid != self.next_id:
            raise RuntimeError(f"reply id {cid} does not match {self.next_id}")
        return result

    def close(self) -> None:
        self.sock.close()
