"""Charts of the latest benchmark results: ``python -m benchmarks.plot DIR`` (or
``python -m benchmarks ... --plot DIR`` after a run). Needs matplotlib (the bench extra).

Writes, from ``benchmarks/results/`` (a full run's file when there is one, else the quick
one's):
    call_latency.png     tiny call round trip p50 and p99 per contender, per placement
    restart_latency.png  SIGKILL to the replacement serving, p50 and p99 per contender
    rolling_restart.png  throughput around a rolling restart, per contender
Each chart draws ours and the raw floor in their own colours, the peers in grey, on a
logarithmic axis (the peers are up to 100x apart).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from benchmarks._util import RESULTS_DIR

__all__ = ["plot"]

OURS_COLOR, FLOOR_COLOR, PEER_COLOR = "#1f77b4", "#2ca02c", "#9a9a9a"


def _latest(name: str, results_dir: Path) -> tuple[dict[str, Any], bool] | None:
    for suffix, quick in ((".json", False), (".quick.json", True)):
        path = results_dir / f"{name}{suffix}"
        if path.exists():
            return json.loads(path.read_text()), quick
    return None


def _color(contender: str) -> str:
    if contender.startswith("ours"):
        return OURS_COLOR
    if contender.startswith("raw floor"):
        return FLOOR_COLOR
    return PEER_COLOR


def _bars(ax: Any, rows: list[tuple[str, float, float]], unit: str) -> None:
    """Horizontal p50 (solid) and p99 (pale) bars, one pair per contender."""
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter, NullFormatter

    rows = sorted(rows, key=lambda row: row[1])
    labels = [row[0] for row in rows]
    for i, (name, p50, p99) in enumerate(rows):
        color = _color(name)
        ax.barh(i + 0.2, p99, height=0.4, color=color, alpha=0.35)
        ax.barh(i - 0.2, p50, height=0.4, color=color)
        ax.text(p50 * 1.08, i - 0.2, f"{p50:.3g} {unit}", va="center", fontsize=8)
        ax.text(p99 * 1.08, i + 0.2, f"{p99:.3g}", va="center", fontsize=7, color="#555")
    ax.set_yticks(range(len(labels)), labels, fontsize=9)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(f"{unit} (log scale; lower is better)")
    ax.grid(axis="x", which="both", alpha=0.25)
    ax.legend(handles=[Patch(color="#555", label="p50"), Patch(color="#555", alpha=0.35,
                                                                label="p99"),
                       Patch(color=OURS_COLOR, label="ours"),
                       Patch(color=FLOOR_COLOR, label="raw floor"),
                       Patch(color=PEER_COLOR, label="peers")],
              loc="upper center", bbox_to_anchor=(0.5, -0.32), fontsize=7, ncol=5,
              frameon=False)


def plot(out_dir: str | Path, results_dir: Path = RESULTS_DIR) -> list[Path]:
    """Write the charts that have results; the paths written. Prints what is missing."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    call = _latest("call", results_dir)
    if call is None:
        print("no call results: run python -m benchmarks call first")
    else:
        data, quick = call
        placements = list(data["results"])
        fig, axes = plt.subplots(len(placements), 1, figsize=(9, 2.6 * len(placements)),
                                 squeeze=False)
        for ax, placement in zip(axes[:, 0], placements, strict=True):
            rows = [(name, r["p50_us"], r["p99_us"])
                    for name, r in data["results"][placement].items() if r.get("p50_us")]
            _bars(ax, rows, "us")
            ax.set_title(f"tiny call round trip, placement '{placement}'", fontsize=10)
        fig.suptitle(_title("Call latency", data, quick), fontsize=11)
        fig.tight_layout()
        written.append(_save(fig, out / "call_latency.png"))
        plt.close(fig)
    restart = _latest("restart", results_dir)
    if restart is None:
        print("no restart results: run python -m benchmarks restart first")
    else:
        data, quick = restart
        rows = [(name, r["serving"]["p50_us"] / 1000, r["serving"]["p99_us"] / 1000)
                for name, r in data["results"].items() if r["serving"].get("p50_us")]
        fig, ax = plt.subplots(figsize=(9, 3.2))
        _bars(ax, rows, "ms")
        ax.set_title(_title("SIGKILL of an idle worker -> its replacement serving", data,
                            quick), fontsize=11)
        fig.tight_layout()
        written.append(_save(fig, out / "restart_latency.png"))
        plt.close(fig)
    rolling = _latest("rolling", results_dir)
    if rolling is None:
        print("no rolling results: run python -m benchmarks rolling first")
    else:
        data, quick = rolling
        written.append(_rolling(plt, data, quick, out / "rolling_restart.png"))
    return written


def _rolling(plt: Any, data: dict[str, Any], quick: bool, path: Path) -> Path:
    """Calls completed per second around a roll (its median-length round), per contender,
    each as a share of its own rate before the roll; the roll's span shaded."""
    bucket = data.get("bucket_ms", 10)
    fig, ax = plt.subplots(figsize=(9, 3.4))
    for name, result in data["results"].items():
        rounds = sorted(result["samples"], key=lambda r: r["roll_s"])
        median = rounds[len(rounds) // 2]
        line = median["timeline"]
        rate = median["rate_before"] * bucket / 1000  # completions per bucket, before
        xs = [i * bucket - 200 for i in range(len(line))]
        label = f"{name} (roll {median['roll_s'] * 1000:.0f} ms, {median['failed']} failed)"
        ours = name.startswith("ours: rolling")
        color = OURS_COLOR if ours else "#ff7f0e" if name.startswith("ours") else PEER_COLOR
        ax.plot(xs, [n / rate for n in line], label=label, color=color,
                linewidth=1.8 if ours else 1.0)
        if ours:
            ax.axvspan(0, median["roll_s"] * 1000, color=OURS_COLOR, alpha=0.08)
    ax.axhline(1.0, color="#555", linewidth=0.6, linestyle=":")
    ax.set_xlabel("ms from the start of the roll")
    ax.set_ylabel("throughput / before")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.25)
    ax.set_title(_title(f"Replacing all {data.get('size', 4)} pool workers under load",
                        data, quick), fontsize=11)
    fig.tight_layout()
    saved = _save(fig, path)
    plt.close(fig)
    return saved


def _title(what: str, data: dict[str, Any], quick: bool) -> str:
    machine = data.get("machine", {})
    head = (machine.get("git") or {}).get("head", "")[:7]
    return (f"{what}{' (quick run)' if quick else ''}: {machine.get('cpus', '?')} CPUs, "
            f"{machine.get('when', '')[:16]}, commit {head}")


def _save(fig: Any, path: Path) -> Path:
    fig.savefig(path, dpi=110, bbox_inches="tight")
    print(f"wrote {path}")
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m benchmarks.plot DIR", file=sys.stderr)
        return 2
    return 0 if plot(args[0]) else 1


if __name__ == "__main__":
    raise SystemExit(main())
