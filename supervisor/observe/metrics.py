"""The tree in Prometheus text format (through prometheus_client, the `metrics` extra).

One scrape is one consistent look: the status document (one `GetStatus` per supervisor),
each worker's call counters (one `GetMetrics` each, answered by the worker's control
thread from plain integers it keeps while serving), the process facts (psutil) and the
failure counts the root's loop published to the hub. Metric names and labels:

    supervisor_child_up{path,kind}                          1 running, else 0
    supervisor_child_restarts_total{path}                   restarts of the child
    supervisor_child_failures_total{path,category,action}   classified failures, decisions
    supervisor_child_circuit{path,state}                    1 for the circuit's state
    supervisor_child_circuit_retry_timestamp_seconds{path}  next half-open trial (open only)
    supervisor_child_resident_memory_bytes{path}            RSS
    supervisor_child_cpu_seconds_total{path}                user + system CPU of the process
    supervisor_child_uptime_seconds{path}                   since its last start
    supervisor_intensity_restarts{path}                     restarts in the current window
    supervisor_intensity_max_restarts{path}                 the limit (max_restarts)
    supervisor_intensity_window_seconds{path}               the window (max_seconds)
    supervisor_recovery_total{path,result}                  initiated, succeeded, failed
    supervisor_worker_calls_total{path}                     commands served
    supervisor_worker_call_errors_total{path,category}      commands that failed
    supervisor_worker_call_duration_seconds{path}           histogram, per command frame
    supervisor_events_total{event}                          telemetry events seen by the root

Counters are those of the process now running for a child (a restarted worker's call
counters start again at zero, as Prometheus' counter resets expect).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import psutil

from ..errors import SupervisorError
from ..wire import messages as P
from .hub import Hub
from .status import walk

__all__ = ["render", "available", "CONTENT_TYPE"]

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
WORKER_WAIT = 2.0  # seconds a scrape waits for one worker's counters


def available() -> bool:
    """Import prometheus_client now (False when it is not installed).

    Called on the root's loop thread before the server thread starts: an import running
    in a server thread while the loop forks would leave the child a held module lock."""
    try:
        import prometheus_client.core  # noqa: F401
        import prometheus_client.exposition  # noqa: F401
    except ImportError:
        return False
    return True


def render(doc: dict[str, Any], raws: dict[str, dict[str, Any]], hub: Hub,
           request: Callable[..., Any]) -> bytes:
    """The exposition text for one scrape (`request` asks the tree for worker counters)."""
    from prometheus_client.core import CollectorRegistry
    from prometheus_client.exposition import generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Scrape(doc, raws, hub, request))
    return generate_latest(registry)


class _Scrape:
    def __init__(self, doc: dict[str, Any], raws: dict[str, dict[str, Any]], hub: Hub,
                 request: Callable[..., Any]) -> None:
        self.doc, self.raws, self.hub, self.request = doc, raws, hub, request

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        def gauge(name: str, text: str, labels: list[str]) -> Any:
            return GaugeMetricFamily(name, text, labels=labels)

        def counter(name: str, text: str, labels: list[str]) -> Any:
            return CounterMetricFamily(name, text, labels=labels)

        up = gauge("supervisor_child_up", "1 while the child runs", ["path", "kind"])
        restarts = counter("supervisor_child_restarts", "Restarts of the child", ["path"])
        circuit = gauge("supervisor_child_circuit", "1 for the state of the child's circuit",
                        ["path", "state"])
        retry = gauge("supervisor_child_circuit_retry_timestamp_seconds",
                      "When the open circuit's half-open trial runs", ["path"])
        rss = gauge("supervisor_child_resident_memory_bytes", "Resident memory", ["path"])
        cpu = counter("supervisor_child_cpu_seconds", "User and system CPU time", ["path"])
        uptime = gauge("supervisor_child_uptime_seconds", "Seconds since the last start",
                       ["path"])
        used = gauge("supervisor_intensity_restarts", "Restarts in the current window",
                     ["path"])
        limit = gauge("supervisor_intensity_max_restarts", "max_restarts", ["path"])
        window = gauge("supervisor_intensity_window_seconds", "max_seconds", ["path"])
        recovery = counter("supervisor_recovery", "Recoveries by result",
                           ["path", "result"])
        calls = counter("supervisor_worker_calls", "Commands served", ["path"])
        errors = counter("supervisor_worker_call_errors", "Commands that failed",
                         ["path", "category"])
        latency = HistogramMetricFamily(
            "supervisor_worker_call_duration_seconds",
            "Time to run a command frame and encode its reply, in the worker", labels=["path"])
        now = time.time()
        for node, depth in walk(self.doc):
            path = node["path"]
            if node["kind"] == "supervisor" and path in self.raws:
                raw = self.raws[path]
                used.add_metric([path], raw["recent_restarts"])
                limit.add_metric([path], raw["max_restarts"])
                window.add_metric([path], raw["max_seconds"])
                for result in ("initiated", "succeeded", "failed"):
                    recovery.add_metric([path, result], raw["recovery"].get(result, 0))
            if depth == 0:
                continue  # the root is no one's child
            up.add_metric([path, node["kind"]], 1 if node["state"] == "running" else 0)
            restarts.add_metric([path], node.get("restarts", 0))
            state = node.get("circuit") or "closed"
            for name in ("closed", "open", "half_open"):
                circuit.add_metric([path, name], 1 if name == state else 0)
            if node.get("retry_at"):
                retry.add_metric([path], node["retry_at"])
            self._process(node, path, rss, cpu, uptime, now)
            if node["kind"] == "worker" and node["state"] == "running":
                self._worker(path, calls, errors, latency)
        yield from (up, restarts, circuit, retry, rss, cpu, uptime, used, limit, window,
                    recovery, calls, errors, latency)
        failures = counter("supervisor_child_failures", "Classified failures and decisions",
                           ["path", "category", "action"])
        by_failure, by_event = self.hub.counters()
        for (path, category, action), count in sorted(by_failure.items()):
            failures.add_metric([path, category, action], count)
        events = counter("supervisor_events", "Telemetry events seen by the root", ["event"])
        for name, count in sorted(by_event.items()):
            events.add_metric([name], count)
        yield failures
        yield events

    @staticmethod
    def _process(node: dict[str, Any], path: str, rss: Any, cpu: Any, uptime: Any,
                 now: float) -> None:
        if node.get("pid") is None:
            return
        try:
            proc = psutil.Process(node["pid"])
            with proc.oneshot():
                rss.add_metric([path], proc.memory_info().rss)
                times = proc.cpu_times()
                cpu.add_metric([path], times.user + times.system)
                if node.get("uptime") is None:  # a supervisor: its process's own age
                    uptime.add_metric([path], max(0.0, now - proc.create_time()))
        except psutil.Error:  # exited since the status was taken
            return
        if node.get("uptime") is not None:
            uptime.add_metric([path], node["uptime"])

    def _worker(self, path: str, calls: Any, errors: Any, latency: Any) -> None:
        try:
            # The worker's control thread answers even while a command runs; one that
            # does not answer soon is wedged (its heartbeat, if any, will say so): the
            # scrape goes on without it rather than waiting out Prometheus' timeout.
            meter = self.request(P.GetMetrics(id=0, path=path), timeout=WORKER_WAIT)
        except (SupervisorError, TimeoutError):  # a program (no calls), gone, or wedged
            return
        calls.add_metric([path], meter["calls"])
        for category, count in sorted(meter["errors"].items()):
            errors.add_metric([path, category], count)
        buckets, running = [], 0
        for bound, count in zip([*meter["bounds"], float("inf")], meter["counts"],
                                strict=True):
            running += count
            buckets.append(("+Inf" if bound == float("inf") else repr(float(bound)), running))
        latency.add_metric([path], buckets, sum_value=meter["seconds"])
