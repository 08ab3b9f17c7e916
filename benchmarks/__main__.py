"""``python -m benchmarks [name ...] [--quick] [--plot DIR]``: run all benchmarks, or the
named ones; with ``--plot DIR``, then draw the charts of the results (`benchmarks.plot`).

Each one runs as ``python -m benchmarks.bench_<name>`` in a fresh process; the exit
status is non-zero when any of them failed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

from benchmarks import BENCHMARKS

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks",
                                     description="Run benchmarks side by side with peers "
                                     "and the raw floor.")
    parser.add_argument("names", nargs="*", metavar="name",
                        help=f"benchmarks to run (default: all of {', '.join(BENCHMARKS)})")
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--plot", metavar="DIR", default=None,
                        help="then write PNG charts of the results to DIR (needs matplotlib)")
    args = parser.parse_args(argv)
    names = [n.removeprefix("bench_") for n in args.names] or list(BENCHMARKS)
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; "
                     f"expected {', '.join(BENCHMARKS)}")
    failed = []
    for name in names:
        print(f"\n=== {name} {'(quick)' if args.quick else ''}".rstrip(), flush=True)
        cmd = [sys.executable, "-m", f"benchmarks.bench_{name}"]
        if args.quick:
            cmd.append("--quick")
        t0 = time.perf_counter()
        code = subprocess.call(cmd, cwd=ROOT)
        print(f"=== {name}: exit {code} in {time.perf_counter() - t0:.1f}s", flush=True)
        if code:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}")
    if args.plot is not None:
        from benchmarks.plot import plot

        plot(args.plot)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
