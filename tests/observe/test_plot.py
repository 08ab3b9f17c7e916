"""`python -m benchmarks --plot DIR`: PNG charts from the saved benchmark results."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("matplotlib", reason="matplotlib is in the bench and test extras")

from benchmarks.plot import plot  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


def _stats(p50: float, p99: float) -> dict:
    return {"p50_us": p50, "p99_us": p99, "n": 10}


def test_plot_draws_call_and_restart_latency_and_a_rolling_restart(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    call = {"results": {placement: {"raw floor (msgspec/socketpair)": _stats(16, 40),
                                    "ours: app.call": _stats(30, 90),
                                    "ProcessPoolExecutor": _stats(140, 400)}
                        for placement in ("free", "same", "split")},
            "machine": {"cpus": 2, "when": "2026-12-06T08:00:00+0000",
                        "git": {"head": "0123456789"}}}
    (results / "call.json").write_text(json.dumps(call))
    restart = {"results": {"raw floor": {"serving": _stats(2900, 5000)},
                           "ours": {"serving": _stats(8000, 15000)},
                           "ProcessPoolExecutor": {"serving": _stats(7300, 9000)}},
               "machine": {}}
    (results / "restart.quick.json").write_text(json.dumps(restart))
    rounds = [{"roll_s": 0.05 + i / 100, "rate_before": 100_000.0, "failed": i,
               "timeline": [1000] * 20 + [200] * 5 + [1000] * 20} for i in range(3)]
    rolling = {"results": {name: {"samples": rounds} for name in (
        "ProcessPoolExecutor swap", "ours: rolling_restart", "ours: stop-then-start")},
        "bucket_ms": 10, "size": 4, "machine": {}}
    (results / "rolling.json").write_text(json.dumps(rolling))
    written = plot(tmp_path / "charts", results_dir=results)
    assert [p.name for p in written] == ["call_latency.png", "restart_latency.png",
                                         "rolling_restart.png"]
    for path in written:
        assert path.read_bytes().startswith(PNG) and path.stat().st_size > 10_000


def test_plot_says_which_results_are_missing(tmp_path, capsys):
    assert plot(tmp_path / "charts", results_dir=tmp_path) == []
    assert capsys.readouterr().out.splitlines() == [
        "no call results: run python -m benchmarks call first",
        "no restart results: run python -m benchmarks restart first",
        "no rolling results: run python -m benchmarks rolling first"]
