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
from prometheus_client.core import GaugeMetricFamily, Metric
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
    """Turns a flat ``{name: number}`` snapshot into gauges at scrape time."""

    def __init__(self, prefix: str, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        self._prefix = prefix
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        try:
            values = self._snapshot()
        except Exception:
            logger.exception("metrics snapshot failed")
            return
        for key, value in sorted(_flatten(values, self._prefix).items()):
            yield GaugeMetricFamily(_metric_name(key), key, value=value)


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, float]:
    flat: dict[str, float] = {}
    for key, value in values.items():
        name = f"{prefix}_{key}" if prefix else str(key)
        if isinstance(value, bool | int | float):
            flat[name] = float(value)
        elif isinstance(value, Mapping):
            flat.update(_flatten(value, name))
    return flat


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

    def render(self) -> bytes:
        return generate_latest(self.registry)
