"""Pool throughput and recovery: our pool client against the peers and the raw floor.

Everything uses 2 worker processes and a trivial function (echo of the int 1), so the
numbers measure per-call overhead, which is what a pool adds. Three sections:

    per-call   many calls in flight: submit-all-then-result (and 4 caller threads with
               pool.call) vs ProcessPoolExecutor / multiprocessing.Pool.apply_async /
               loky / pebble, and the raw floor: 2 forked children serving msgspec frames
               over socketpairs with 64 calls in flight each (one write per frame, and
               with writes coalesced per batch)
    map        pool.map(chunksize=256) vs multiprocessing.Pool.map / ProcessPoolExecutor.map
               with the same chunk size
    recovery   SIGKILL one worker mid-load: time until a new call is served, until the
               replacement serves, and how many in-flight calls failed

Each contender is set up, measured `rounds` times (best and median reported) and torn
down before the next, in an order where every forking peer forks before this process has
started any thread. Nothing is asserted: numbers go to the table and to
``benchmarks/results/pool.json``.

Run: ``python -m benchmarks.bench_pool [--quick]``.
"""

from __future__ import annotations

import contextlib
import functools
import operator
import os
import select
import selectors
import signal
import socket
import statistics
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

import msgspec

from benchmarks._util import (
    echo,
    fmt_ratio,
    fork_frame_server,
    parse_args,
    print_table,
    ratio,
    reap,
    report_leftovers,
    write_json,
)

NAME = "pool"
IN_FLIGHT = 64
FLOOR = "raw floor: 64 in flight, a write per frame"
BATCHED = "raw floor: 64 in flight, writes batched"
MP_MAP = "multiprocessing.Pool.map chunksize=256"
OUR_MAP = "ours: pool.map chunksize=256"
_LENGTH = struct.Struct(">I")
_RESULT, _GET = operator.methodcaller("result"), operator.methodcaller("get")
partial = functools.partial


# --------------------------------------------------------------------------- raw floor
def _floor_serve(sock: socket.socket, batched: bool) -> None:
    """The floor child: echo every request frame; one write per reply, or per batch."""
    dec, enc = msgspec.msgpack.Decoder(), msgspec.msgpack.Encoder()
    buf = bytearray()
    while data := sock.recv(262144):
        buf += data
        out = bytearray()
        pos = 0
        while len(buf) - pos >= 4:
            (size,) = _LENGTH.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            cid, _method, args = dec.decode(memoryview(buf)[pos + 4:pos + 4 + size])
            pos += 4 + size
            frame = bytearray(4)
            enc.encode_into((cid, args[0]), frame, 4)
            _LENGTH.pack_into(frame, 0, len(frame) - 4)
            if batched:
                out += frame
            else:
                sock.sendall(frame)
        del buf[:pos]
        if out:
            sock.sendall(out)


class _FloorLink:
    """The parent's side of one floor child: keeps IN_FLIGHT calls on its socket."""

    def __init__(self, sock: socket.socket, calls: int, batched: bool) -> None:
        self.sock, self.calls, self.batched = sock, calls, batched
        self.enc, self.dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
        self.buf = bytearray()
        self.sent = self.done = 0

    def send(self, k: int) -> None:
        k = min(k, self.calls - self.sent)
        frames = []
        for i in range(self.sent, self.sent + k):
            frame = bytearray(4)
            self.enc.encode_into((i, "echo", (1,)), frame, 4)
            _LENGTH.pack_into(frame, 0, len(frame) - 4)
            frames.append(frame)
        self.sent += k
        if self.batched:
            self.sock.sendall(b"".join(frames))
        else:
            for frame in frames:
                self.sock.sendall(frame)

    def on_readable(self) -> bool:
        """Read replies, send as many new calls; True once every call was answered."""
        buf = self.buf
        buf += self.sock.recv(262144)
        pos = got = 0
        while len(buf) - pos >= 4:
            (size,) = _LENGTH.unpack_from(buf, pos)
            if len(buf) - pos - 4 < size:
                break
            self.dec.decode(memoryview(buf)[pos + 4:pos + 4 + size])
            pos += 4 + size
            got += 1
        del buf[:pos]
        self.done += got
        self.send(got)
        return self.done == self.calls


def floor_run(n: int, batched: bool) -> float:
    """Calls/s through 2 forked frame servers, IN_FLIGHT calls in flight on each."""
    children: list[tuple[int, socket.socket]] = []
    for _ in range(2):
        children.append(fork_frame_server([s.fileno() for _, s in children],
                                          functools.partial(_floor_serve, batched=batched)))
    sel = selectors.DefaultSelector()
    for _pid, sock in children:
        sel.register(sock, selectors.EVENT_READ, _FloorLink(sock, n // 2, batched))
    t0 = time.perf_counter()
    for key in list(sel.get_map().values()):
        key.data.send(IN_FLIGHT)
    while sel.get_map():
        for key, _ in sel.select():
            if key.data.on_readable():
                sel.unregister(key.fileobj)
    elapsed = time.perf_counter() - t0
    for pid, sock in children:
        sock.close()
        reap(pid)
    return 2 * (n // 2) / elapsed


# --------------------------------------------------------------------------- per-call
def _submit_all(submit: Callable[[], Any], result: Callable[[Any], Any], n: int) -> float:
    """Calls/s of `n` submits, then every result in order. `submit` and `result` are
    C-level callables (a functools.partial, an operator.methodcaller), so the window
    times the contender's own code, not a Python frame of ours per call."""
    t0 = time.perf_counter()
    handles = [submit() for _ in range(n)]
    for h in handles:
        result(h)
    return n / (time.perf_counter() - t0)


def _threads(call: Callable[[], Any], n: int, threads: int = 4) -> float:
    per = n // threads

    def run() -> None:
        for _ in range(per):
            call()

    workers = [threading.Thread(target=run) for _ in range(threads)]
    t0 = time.perf_counter()
    for t in workers:
        t.start()
    for t in workers:
        t.join()
    return per * threads / (time.perf_counter() - t0)


def _rounds(fn: Callable[[], float], rounds: int) -> dict[str, float]:
    fn()  # warm-up (imports, first forks, caches)
    rates = [fn() for _ in range(rounds)]
    return {"best": max(rates), "median": statistics.median(rates)}


def peers_per_call(n: int, rounds: int) -> dict[str, dict[str, float]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = {}
    with ProcessPoolExecutor(2) as ex:
        out["ProcessPoolExecutor submit"] = _rounds(
            lambda: _submit_all(partial(ex.submit, echo, 1), _RESULT, n), rounds)
        out["ProcessPoolExecutor submit().result(), 4 threads"] = _rounds(
            lambda: _threads(lambda: ex.submit(echo, 1).result(), n // 4), rounds)
    with multiprocessing.Pool(2) as mp:
        out["multiprocessing.Pool apply_async"] = _rounds(
            lambda: _submit_all(partial(mp.apply_async, echo, (1,)), _GET, n),
            rounds)
        out["multiprocessing.Pool apply, 4 threads"] = _rounds(
            lambda: _threads(lambda: mp.apply(echo, (1,)), n // 4), rounds)
    try:
        import pebble
    except ImportError:
        print("pebble: not installed, skipped")
    else:
        pp = pebble.ProcessPool(max_workers=2)
        out["pebble schedule"] = _rounds(
            lambda: _submit_all(partial(pp.schedule, echo, args=(1,)), _RESULT, n),
            rounds)
        pp.stop()
        pp.join()
    try:
        import loky
    except ImportError:
        print("loky: not installed, skipped")
    else:
        lx = loky.get_reusable_executor(max_workers=2)
        out["loky submit"] = _rounds(
            lambda: _submit_all(partial(lx.submit, echo, 1), _RESULT, n), rounds)
        lx.shutdown(wait=True, kill_workers=True)
    return out


def _start_pool():
    import supervisor
    from supervisor import Pool, Supervisor, telemetry
    from workers.echo import Echo

    app = supervisor.start(Supervisor("root", children=[Pool("p", Echo, size=2)]))
    telemetry.detach(telemetry.DEFAULT_REPORTER)  # log lines would be measured too
    return app


def ours_per_call(app: Any, n: int, rounds: int) -> dict[str, dict[str, float]]:
    pool = app.pool("p")
    wide = pool.options(max_in_flight=8)
    return {
        "ours: pool.submit": _rounds(
            lambda: _submit_all(partial(pool.submit, "echo", 1), _RESULT, n),
            rounds),
        "ours: pool.call, 4 threads": _rounds(
            lambda: _threads(lambda: pool.call("echo", 1), n // 4), rounds),
        "ours: pool.call, 4 threads, max_in_flight=8": _rounds(
            lambda: _threads(lambda: wide.call("echo", 1), n // 4), rounds),
    }


# --------------------------------------------------------------------------- map
def map_rates(app: Any | None, m: int, rounds: int) -> dict[str, dict[str, float]]:
    items = range(m)

    def rate(run: Callable[[], Any]) -> float:
        t0 = time.perf_counter()
        run()
        return m / (time.perf_counter() - t0)

    if app is not None:
        pool = app.pool("p")
        return {OUR_MAP: _rounds(
            lambda: rate(lambda: list(pool.map("echo", items, chunksize=256))), rounds)}
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    out = {}
    with multiprocessing.Pool(2) as mp:
        out[MP_MAP] = _rounds(
            lambda: rate(lambda: mp.map(echo, items, chunksize=256)), rounds)
    with ProcessPoolExecutor(2) as ex:
        out["ProcessPoolExecutor.map chunksize=256"] = _rounds(
            lambda: rate(lambda: list(ex.map(echo, items, chunksize=256))), rounds)
    return out


# --------------------------------------------------------------------------- recovery
def _isolated(fn: Callable[[], dict[str, Any]], timeout: float = 60.0) -> dict[str, Any]:
    """Run `fn` in a forked child in its own process group, and return its result.

    A peer whose worker is SIGKILLed can be left unable to shut down:
    multiprocessing.Pool's terminate() blocks forever when the killed worker held the
    task queue's lock (a shared locked queue a dying process left locked). The child
    leaves with os._exit, and its whole group is SIGKILLed afterwards, so no peer
    process outlives the measurement.
    """
    import json

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.setpgrp()
        try:
            data = json.dumps(fn())
        except BaseException as exc:
            data = json.dumps({"error": f"{type(exc).__name__}: {exc}"})
        os.write(w, data.encode())
        os._exit(0)
    os.close(w)
    chunks = []
    deadline = time.monotonic() + timeout
    with os.fdopen(r, "rb") as pipe:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                continue
            chunk = os.read(pipe.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    reap(pid)
    if not chunks:
        return {"error": f"no result within {timeout}s"}
    return json.loads(b"".join(chunks))


def _first_success(attempt: Callable[[], Any], t0: float, limit: float = 10.0) -> float:
    """Seconds from `t0` until `attempt()` returns without raising (tries again at once)."""
    while time.perf_counter() - t0 < limit:
        try:
            attempt()
        except Exception:  # a broken peer raises its own errors: any of them means "not yet"
            continue
        return time.perf_counter() - t0
    return float("nan")


def ppe_recovery(n: int) -> dict[str, Any]:
    """ProcessPoolExecutor breaks when a worker dies: time to a working executor again."""
    from concurrent.futures import ProcessPoolExecutor, wait

    ex = ProcessPoolExecutor(2)
    ex.submit(echo, 1).result()
    futures = [ex.submit(echo, 1) for _ in range(n)]
    futures[n // 10].result()
    victim = next(iter(ex._processes))  # private, but the only way to name a worker
    pending = sum(1 for f in futures if not f.done())
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    wait(futures, timeout=30)
    fresh: list[Any] = []

    def rebuild() -> None:
        ex.shutdown(wait=False, cancel_futures=True)
        fresh.append(ProcessPoolExecutor(2))
        fresh[-1].submit(echo, 1).result(timeout=10)

    served = _first_success(rebuild, t0)
    failed = sum(1 for f in futures if f.exception() is not None)
    for other in fresh:
        other.shutdown(wait=True)
    return {"first_served_ms": served * 1e3, "replacement_ms": served * 1e3,
            "failed": failed, "in_flight": n, "pending": pending,
            "note": "executor broken: rebuilt"}


def mp_recovery(n: int) -> dict[str, Any]:
    """multiprocessing.Pool replaces a killed worker; the call it ran never completes."""
    import multiprocessing

    mp = multiprocessing.Pool(2)  # never shut down: see _isolated
    mp.apply(echo, (1,))
    results = [mp.apply_async(echo, (1,)) for _ in range(n)]
    results[n // 10].get()
    victim = mp._pool[0].pid  # private, as above
    pending = sum(1 for r in results if not r.ready())
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    served = _first_success(lambda: mp.apply_async(echo, (1,)).get(timeout=1), t0)
    deadline = time.monotonic() + 3.0
    for r in results:
        r.wait(max(0.0, deadline - time.monotonic()))
    failed = sum(1 for r in results if not r.ready())
    return {"first_served_ms": served * 1e3, "replacement_ms": None, "failed": failed,
            "in_flight": n, "pending": pending,
            "note": "lost calls hang forever (counted after 3 s)"}


def ours_recovery(app: Any, n: int) -> dict[str, Any]:
    """SIGKILL one pool worker with `n` calls submitted: the rest of the pool serves on."""
    pool = app.pool("p")
    pids = {c.id: c.pid for c in app.which_children("p")}
    victim, survivor = pids["p-0"], pids["p-1"]
    futures = [pool.submit("echo", 1) for _ in range(n)]
    futures[n // 10].result()
    pending = sum(1 for f in futures if not f.done())
    t0 = time.perf_counter()
    os.kill(victim, signal.SIGKILL)
    served = _first_success(lambda: pool.call("echo", 1), t0)

    def replacement_serves() -> None:
        # A blocking call goes before queued async calls, to the first worker that frees.
        if pool.call("pid") in (victim, survivor):
            raise LookupError("the replacement has not served yet")

    replaced = _first_success(replacement_serves, t0)
    failed = sum(1 for f in futures if f.exception() is not None)
    return {"first_served_ms": served * 1e3, "replacement_ms": replaced * 1e3,
            "failed": failed, "in_flight": n, "pending": pending,
            "note": "only calls in flight on it fail"}


# --------------------------------------------------------------------------- report
def _ms(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN: never within the limit
        return "never (10 s limit)"
    return f"{value:.1f} ms"


def _rate_rows(rates: dict[str, dict[str, float]], best_peer: float | None,
               floor: float | None) -> list[list[str]]:
    rows = []
    for name, r in rates.items():
        rows.append([name, f"{r['best']:,.0f}", f"{r['median']:,.0f}",
                     fmt_ratio(ratio(r["best"], best_peer)), fmt_ratio(ratio(r["best"], floor))])
    return rows


def measure(quick: bool) -> dict[str, Any]:
    """Every contender, forking ones first (this process has no thread yet then)."""
    n_ours, n_peer, n_floor = (10_000, 5_000, 50_000) if quick else (50_000, 50_000, 400_000)
    m, rounds, n_kill = (100_000, 2, 2_000) if quick else (1_000_000, 3, 20_000)
    floor = {
        FLOOR: _rounds(lambda: floor_run(n_floor, False), rounds),
        BATCHED: _rounds(
            lambda: floor_run(n_floor, True), rounds),
    }
    peers = peers_per_call(n_peer, rounds)
    peer_map = map_rates(None, m, rounds)
    recovery = {"ProcessPoolExecutor": _isolated(lambda: ppe_recovery(n_kill)),
                "multiprocessing.Pool": _isolated(lambda: mp_recovery(n_kill))}
    app = _start_pool()
    try:
        ours = ours_per_call(app, n_ours, rounds)
        our_map = map_rates(app, m, rounds)
        recovery["ours"] = ours_recovery(app, n_kill)
    finally:
        app.stop()
    report_leftovers()
    return {"quick": quick, "rounds": rounds, "sizes": {"ours": n_ours, "peers": n_peer,
            "floor": n_floor, "map": m, "kill": n_kill},
            "per_call": {**floor, **peers, **ours}, "peers": list(peers),
            "map": {**peer_map, **our_map}, "recovery": recovery}


def report(res: dict[str, Any]) -> dict[str, float | None]:
    sizes, per_call = res["sizes"], res["per_call"]
    best_peer = max(per_call[name]["best"] for name in res["peers"])
    floor_rate = per_call[FLOOR]["best"]
    print_table(f"per-call throughput, 2 workers, trivial function ({sizes['ours']:,} calls "
                f"ours, {sizes['peers']:,} peers; best of {res['rounds']})",
                ["contender", "best calls/s", "median", "vs best peer", "vs raw floor"],
                _rate_rows(per_call, best_peer, floor_rate))
    mp_map = res["map"][MP_MAP]["best"]
    print_table(f"map of {sizes['map']:,} items, chunksize=256",
                ["contender", "best items/s", "median", "vs mp.Pool.map", "vs raw floor"],
                [[n, f"{r['best']:,.0f}", f"{r['median']:,.0f}",
                  fmt_ratio(ratio(r["best"], mp_map)), fmt_ratio(ratio(r["best"], floor_rate))]
                 for n, r in res["map"].items()])
    print_table(f"SIGKILL of one worker with {sizes['kill']:,} calls submitted",
                ["contender", "kill -> a call served", "kill -> replacement serves",
                 "not done at kill", "calls failed", "note"],
                [[n, "-", "-", "-", "-", r["error"]] if "error" in r else
                 [n, _ms(r["first_served_ms"]), _ms(r["replacement_ms"]),
                  f"{r['pending']:,}", f"{r['failed']:,} of {r['in_flight']:,}", r["note"]]
                 for n, r in res["recovery"].items()])
    submit = per_call["ours: pool.submit"]["best"]
    summary = {"submit_vs_best_peer": ratio(submit, best_peer),
               "submit_vs_floor": ratio(submit, floor_rate),
               "submit_vs_batched_floor": ratio(submit, per_call[BATCHED]["best"]),
               "map_vs_mp_map": ratio(res["map"][OUR_MAP]["best"], mp_map)}
    print(f"\nsummary: pool.submit {fmt_ratio(summary['submit_vs_best_peer'])} the best peer, "
          f"{fmt_ratio(summary['submit_vs_floor'])} the raw floor, "
          f"{fmt_ratio(summary['submit_vs_batched_floor'])} the batched raw floor; pool.map "
          f"{fmt_ratio(summary['map_vs_mp_map'])} multiprocessing.Pool.map")
    return summary


def main(argv: list[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    res = measure(args.quick)
    res["summary"] = report(res)
    write_json(NAME, res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
