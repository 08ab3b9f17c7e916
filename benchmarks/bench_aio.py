"""The asyncio client side by side with the blocking client, the ways people await a
process pool from asyncio today, and the raw floor, in one run of one process.

    latency     one tiny call at a time (the int 1 echoed), p50/p99: the raw floor
                (blocking, and awaited through loop.add_reader), ours blocking
                (`app.call`), ours awaited (`await app.call`), `asyncio.wrap_future(
                pool.submit(...))` on our blocking pool client, and
                `loop.run_in_executor(ProcessPoolExecutor(1), echo, 1)`
    throughput  2 workers, every call in flight at once, calls/s (best and median of
                `rounds`): the raw floor (64 in flight per child), ours blocking
                (`pool.submit` all, then results), ours awaited (`await pool.call` in
                tasks, `pool.submit` futures gathered, and `await app.call` straight to
                the two workers' channels), `asyncio.wrap_future(pool.submit(...))`, and
                `loop.run_in_executor(ProcessPoolExecutor(2), ...)`

Everything runs inside one `asyncio.run` (uvloop's loop with ``--uvloop``); the blocking
contenders are called from the loop's thread while the loop waits. Every forking peer
forks before this process starts a thread. Nothing is asserted: numbers go to the table
and to ``benchmarks/results/aio.json`` (``aio.uvloop.json`` with ``--uvloop``).

Run: ``python -m benchmarks.bench_aio [--quick] [--uvloop]``.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import msgspec

from benchmarks._util import (
    FrameClient,
    echo,
    fmt_ratio,
    fmt_us,
    fork_frame_server,
    parse_args,
    print_table,
    ratio,
    reap,
    report_leftovers,
    summarize,
    write_json,
)
from benchmarks.bench_pool import floor_run

NAME = "aio"
FLOOR = "raw floor, blocking"
FLOOR_AIO = "raw floor, awaited (loop.add_reader)"
BLOCKS = 10


class _AioFloor:
    """The floor's client awaited on the loop: send a frame, a reader callback sets the
    future."""

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.sock, self.loop = sock, loop
        sock.setblocking(False)
        self.enc, self.dec = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
        self.fut: asyncio.Future | None = None
        self.next_id = 0
        loop.add_reader(sock.fileno(), self._readable)

    def _readable(self) -> None:
        data = self.sock.recv(65536)
        _cid, value = self.dec.decode(memoryview(data)[4:])  # one tiny frame at a time
        self.fut.set_result(value)

    async def call(self, value: Any) -> Any:
        self.next_id += 1
        frame = bytearray(4)
        self.enc.encode_into((self.next_id, "echo", (value,)), frame, 4)
        frame[:4] = (len(frame) - 4).to_bytes(4, "big")
        self.fut = self.loop.create_future()
        self.sock.send(frame)
        return await self.fut

    def close(self) -> None:
        self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


async def _measure(contenders: dict[str, Callable[[], Any]], n: int, warmup: int
                   ) -> dict[str, dict[str, Any]]:
    """Latency samples, interleaved in BLOCKS blocks (rotating who goes first) so load
    drift hits all alike. A contender is a function returning an awaitable or a value."""
    samples: dict[str, list[int]] = {name: [] for name in contenders}
    for fn in contenders.values():
        for _ in range(warmup):
            out = fn()
            if isinstance(out, Awaitable):
                await out
    names = list(contenders)
    per = max(1, n // BLOCKS)
    for block in range(BLOCKS):
        order = names[block % len(names):] + names[:block % len(names)]
        for name in order:
            fn, out_samples = contenders[name], samples[name]
            clock = time.perf_counter_ns
            for _ in range(per):
                t0 = clock()
                out = fn()
                if isinstance(out, Awaitable):
                    out = await out
                out_samples.append(clock() - t0)
                if out != 1:
                    raise RuntimeError(f"{name}: expected 1, got {out!r}")
    return {name: summarize(s) for name, s in samples.items()}


async def _rate(fn: Callable[[int], Awaitable[None]], n: int, rounds: int) -> dict[str, float]:
    await fn(n // 4)  # warm-up
    rates = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        await fn(n)
        rates.append(n / (time.perf_counter() - t0))
    return {"best": max(rates), "median": statistics.median(rates)}


async def run(quick: bool) -> dict[str, Any]:
    import supervisor
    import supervisor.aio
    from supervisor import Pool, Supervisor, child
    from workers.echo import Echo

    n_lat, warm = (500, 50) if quick else (5000, 300)
    n_put, rounds = (5000, 2) if quick else (40000, 3)
    loop = asyncio.get_running_loop()

    # Forks first, before any thread of ours exists.
    floor_pid, floor_sock = fork_frame_server()
    afloor_pid, afloor_sock = fork_frame_server([floor_sock.fileno()])
    ppe1, ppe2 = ProcessPoolExecutor(1), ProcessPoolExecutor(2)
    ppe1.submit(echo, 1).result()
    for fut in [ppe2.submit(echo, 1) for _ in range(8)]:
        fut.result()
    floor_rates = {"raw floor: 64 in flight, a write per frame": [],
                   "raw floor: 64 in flight, writes batched": []}
    for _ in range(rounds):
        floor_rates["raw floor: 64 in flight, a write per frame"].append(floor_run(n_put, False))
        floor_rates["raw floor: 64 in flight, writes batched"].append(floor_run(n_put, True))

    tree = Supervisor("root", children=[child("w", Echo), Pool("p", Echo, size=2)])
    app = supervisor.start(tree)
    floor = FrameClient(floor_sock)
    afloor = _AioFloor(afloor_sock, loop)
    try:
        async with supervisor.aio.start(tree) as aapp:
            pool, apool = app.pool("p"), aapp.pool("p")
            latency = await _measure({
                FLOOR: lambda: floor.call(1),
                FLOOR_AIO: lambda: afloor.call(1),
                "ours: app.call": lambda: app.call("w", "echo", 1),
                "ours: await aio app.call": lambda: aapp.call("w", "echo", 1),
                "ours: await aio pool.call": lambda: apool.call("echo", 1),
                "asyncio.wrap_future(pool.submit(...))":
                    lambda: asyncio.wrap_future(pool.submit("echo", 1)),
                "loop.run_in_executor(ProcessPoolExecutor(1))":
                    lambda: loop.run_in_executor(ppe1, echo, 1),
            }, n_lat, warm)

            async def blocking_submit(n: int) -> None:
                for fut in [pool.submit("echo", 1) for _ in range(n)]:
                    fut.result()

            async def aio_pool_call(n: int) -> None:
                await asyncio.gather(*(apool.call("echo", 1) for _ in range(n)))

            async def aio_pool_submit(n: int) -> None:
                await asyncio.gather(*[apool.submit("echo", 1) for _ in range(n)])

            async def aio_direct(n: int) -> None:
                await asyncio.gather(*(aapp.call(f"p/p-{i % 2}", "echo", 1)
                                       for i in range(n)))

            async def wrapped(n: int) -> None:
                await asyncio.gather(*[asyncio.wrap_future(pool.submit("echo", 1))
                                       for _ in range(n)])

            async def executor(n: int) -> None:
                await asyncio.gather(*[loop.run_in_executor(ppe2, echo, 1)
                                       for _ in range(n)])

            throughput = {name: {"best": max(r), "median": statistics.median(r)}
                          for name, r in floor_rates.items()}
            for name, fn, size in [
                ("ours: pool.submit, then results (blocking)", blocking_submit, n_put),
                ("ours: await aio pool.call, in tasks", aio_pool_call, n_put),
                ("ours: aio pool.submit futures, gathered", aio_pool_submit, n_put),
                ("ours: await aio app.call to p-0/p-1, in tasks", aio_direct, n_put),
                ("asyncio.wrap_future(pool.submit(...)), gathered", wrapped, n_put),
                ("loop.run_in_executor(ProcessPoolExecutor(2)), gathered", executor,
                 n_put // 4),
            ]:
                throughput[name] = await _rate(fn, size, rounds)
    finally:
        afloor.close()
        floor.close()
        app.stop()
        ppe1.shutdown()
        ppe2.shutdown()
        reap(floor_pid)
        reap(afloor_pid)
    return {"latency": latency, "throughput": throughput}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    use_uvloop = "--uvloop" in argv  # asyncio's own loop by default
    if use_uvloop:
        argv.remove("--uvloop")
    args = parse_args("asyncio client: latency and pool throughput", argv)
    if use_uvloop:
        import uvloop
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            out = runner.run(run(args.quick))
    else:
        out = asyncio.run(run(args.quick))
    lat, put = out["latency"], out["throughput"]
    floor = lat[FLOOR]["p50_us"]
    print_table(f"tiny call latency, one at a time ({'uvloop' if use_uvloop else 'asyncio'})",
                ["contender", "p50", "p99", "p50 / floor"],
                [[name, fmt_us(s["p50_us"]), fmt_us(s["p99_us"]),
                  fmt_ratio(ratio(s["p50_us"], floor))] for name, s in lat.items()])
    best_floor = max(v["best"] for k, v in put.items() if k.startswith("raw floor"))
    print_table("throughput, 2 workers, all in flight (calls/s)",
                ["contender", "best", "median", "best / floor"],
                [[name, f"{r['best']:,.0f}", f"{r['median']:,.0f}",
                  fmt_ratio(ratio(r["best"], best_floor))] for name, r in put.items()])
    write_json(f"{NAME}.uvloop" if use_uvloop else NAME,
               {"quick": args.quick, "uvloop": use_uvloop, **out})
    report_leftovers()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
