"""Prometheus metrics of one app, in a ``CollectorRegistry`` of its own.

Request counters and latency histograms are updated by the app; the runtime's numbers
(queue depth per level, limiter limit and in-flight, breaker state, pool statistics,
longest event-loop step) are read from ``runtime.metrics_snapshot()`` at scrape time,
so they cost nothing between scrapes.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["CONTENT_TYPE", "AppMetrics"]

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"

logger = logging.getLogger("dtesn_trio.server")

_LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
_MAX_CHILDREN = 1000  # methods are client-chosen: bound the cache
_BAD_CHARS = re.compile(r"[^a-zA-Z0-9_]")


def _metric_name(key: str) -> str:
    name = _BAD_CHARS.sub("_", key).strip("_").lower()
    return f"dtesn_{name}"


class _SnapshotCollector(Collector):
    """Turns a nested ``{name: number}`` snapshot into gauges at scrape time.

    Keys join with ``_`` into the metric name; a mapping whose keys are all indices
    (``queue.queued.0`` ... ``queue.queued.4``, one per priority level) becomes one
    gauge with a ``level`` label.
    """

    def __init__(self, prefix: str, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._prefix = prefix
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            values = self._snapshot()
        except Exception:
            logger.exception("metrics snapshot failed")
            return
        families: dict[str, list[tuple[str | None, float]]] = {}
        _flatten(values, self._prefix, families)
        for key in sorted(families):
            samples = families[key]
            name = _metric_name(key)
            if samples[0][0] is None:
                yield GaugeMetricFamily(name, key, value=samples[0][1])
            else:
                family = GaugeMetricFamily(name, key, labels=["level"])
                for level, value in samples:
                    family.add_metric([str(level)], value)
                yield family


def _is_number(value: Any) -> bool:
    return isinstance(value, bool | int | float)


def _flatten(
    values: Mapping[str, Any], prefix: str, out: dict[str, list[tuple[str | None, float]]]
) -> None:
    for key, value in values.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if _is_number(value):
            out[name] = [(None, float(value))]
        elif isinstance(value, Mapping) and value:
            if all(str(k).isdigit() for k in value) and all(map(_is_number, value.values())):
                out[name] = [(str(k), float(v)) for k, v in value.items()]
            else:
                _flatten(value, name, out)


class _GCCollector(Collector):
    """The server's garbage-collector figures (``GCMonitor``), read at scrape time."""

    def __init__(self, statistics: Callable[[], Any]) -> None:
        self._statistics = statistics

    def collect(self) -> Iterator[Metric]:
        stats = self._statistics()
        if stats is None:
            return
        collections = CounterMetricFamily(
            "dtesn_gc_collections", "Cyclic GC collections by generation.", labels=["generation"]
        )
        paused = CounterMetricFamily(
            "dtesn_gc_pause_seconds", "Time spent in GC collections.", labels=["generation"]
        )
        longest = GaugeMetricFamily(
            "dtesn_gc_longest_pause_seconds",
            "The longest GC collection so far.",
            labels=["generation"],
        )
        threshold = GaugeMetricFamily(
            "dtesn_gc_threshold", "gc.get_threshold() of the process.", labels=["generation"]
        )
        for gen in range(3):
            label = [str(gen)]
            collections.add_metric(label, stats.collections[gen])
            paused.add_metric(label, stats.total_pause[gen])
            longest.add_metric(label, stats.longest_pause[gen])
            threshold.add_metric(label, stats.threshold[gen])
        yield collections
        yield paused
        yield longest
        yield threshold
        yield GaugeMetricFamily(
            "dtesn_gc_frozen_objects", "gc.get_freeze_count() of the process.", value=stats.frozen
        )


class AppMetrics:
    """The metrics of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "dtesn_http_requests",
            "HTTP requests by route, method and status.",
            ("route", "method", "status"),
            registry=self.registry,
        )
        self.duration = Histogram(
            "dtesn_http_request_duration_seconds",
            "HTTP request latency by route.",
            ("route",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.process_latency = Histogram(
            "dtesn_process_latency_seconds",
            "Latency of processed inputs by priority (successful requests).",
            ("priority",),
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self._request_children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._priority_children: dict[int, Any] = {}
        self.in_flight = Gauge(
            "dtesn_http_requests_in_flight",
            "HTTP requests being handled.",
            registry=self.registry,
        )

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one finished request and its latency (label children cached: the
        ``labels()`` lookup is most of the cost of an update)."""
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            children = (
                self.requests.labels(route, method, str(status)),
                self.duration.labels(route),
            )
            if len(self._request_children) < _MAX_CHILDREN:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def observe_process(self, priority: int, seconds: float) -> None:
        child = self._priority_children.get(priority)
        if child is None:
            child = self._priority_children[priority] = self.process_latency.labels(str(priority))
        child.observe(seconds)

    def add_snapshot(self, prefix: str, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        """Expose ``snapshot()`` (flat or nested numbers) as gauges named after its keys."""
        self.registry.register(_SnapshotCollector(prefix, snapshot))

    def add_gc(self, statistics: Callable[[], Any]) -> None:
        """Expose ``statistics()`` (a ``GCStatistics`` or None) as ``dtesn_gc_*``."""
        self.registry.register(_GCCollector(statistics))

    def render(self) -> bytes:
        return generate_latest(self.registry)
