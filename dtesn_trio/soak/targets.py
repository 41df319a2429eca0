"""What a soak drives: a dtesn-trio server over HTTP, or an embedded runtime in-process.

A target turns a `RequestSpec` into an `Outcome` (never raising, except on cancellation)
and can report the server's own view (``/v1/stats`` and ``/metrics``) for the sampler.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import trio

from dtesn_trio.errors import DTESNError
from dtesn_trio.soak.http_client import HTTPClient, HTTPClientError, open_http_client
from dtesn_trio.soak.loadgen import RequestSpec
from dtesn_trio.soak.recorder import Outcome

__all__ = [
    "EmbeddedTarget",
    "HTTPTarget",
    "SoakTarget",
    "TargetUnreachable",
    "flatten",
    "open_embedded_target",
    "open_http_target",
    "parse_prometheus",
]

_PROCESS_PATH = "/v1/process"


class TargetUnreachable(Exception):
    """The target could not be reached (or started) at all; the soak cannot run."""


class SoakTarget(Protocol):
    """A target with its description and a way to sample its own statistics."""

    kind: str

    async def call(self, request: RequestSpec) -> Outcome:
        """Send one request; return its outcome. Raise only on cancellation."""
        ...

    async def sample(self) -> dict[str, Any]:
        """The target's stats (flattened) and metrics now: ``{"stats": {...}, "metrics": {...}}``."""
        ...

    def describe(self) -> dict[str, Any]:
        """What this target is, for the report."""
        ...


def flatten(value: Any, prefix: str = "") -> dict[str, float | str]:
    """Flatten nested JSON into ``{"a.b.c": leaf}``, keeping numbers, bools (as 0/1) and
    short strings."""
    out: dict[str, float | str] = {}
    if isinstance(value, Mapping):
        for k, v in value.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value[:32]):
            out.update(flatten(v, f"{prefix}.{i}"))
    elif isinstance(value, bool):
        out[prefix] = float(value)
    elif isinstance(value, int | float):
        if math.isfinite(value):
            out[prefix] = float(value)
    elif isinstance(value, str) and len(value) <= 64:
        out[prefix] = value
    return out


def parse_prometheus(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{"name{label=value,...}": value}``.

    Histogram buckets and ``_created`` timestamps are dropped (the report needs gauges and
    totals, not every bucket of every histogram).
    """
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name
            if name.endswith(("_bucket", "_created")):
                continue
            value = float(sample.value)
            if not math.isfinite(value):
                continue
            if sample.labels:
                labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
                name = f"{name}{{{labels}}}"
            out[name] = value
    return out


def _own_rss_bytes() -> float | None:
    """This process's resident set size (Linux), or None."""
    try:
        with open("/proc/self/statm", "rb") as f:
            pages = int(f.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return float(pages * os.sysconf("SC_PAGE_SIZE"))


def _parse_stats(body: bytes) -> dict[str, float | str]:
    return flatten(json.loads(body))


def _error_code(body: bytes) -> str:
    try:
        data = json.loads(body)
        code = data["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return ""
    return code if isinstance(code, str) else ""


class HTTPTarget:
    """A dtesn-trio server (or anything speaking its API) at ``url``."""

    kind = "http"

    def __init__(self, url: str, client: HTTPClient, stats_client: HTTPClient) -> None:
        self.url = url
        self.client = client
        self._stats_client = stats_client
        self._content_type = ((b"content-type", b"application/json"),)

    async def call(self, request: RequestSpec) -> Outcome:
        """POST /v1/process; the outcome is the status and the error body's code."""
        if request.deadline_ms is None:
            payload = {"input": request.input, "priority": request.priority}
        else:
            payload = {
                "input": request.input,
                "priority": request.priority,
                "deadline_ms": request.deadline_ms,
            }
        body = json.dumps(payload, separators=(",", ":")).encode()
        try:
            response = await self.client.request("POST", _PROCESS_PATH, body, self._content_type)
        except HTTPClientError as exc:
            return Outcome(0, exc.kind)
        status = response.status
        if 200 <= status < 300:
            return Outcome(status)
        return Outcome(status, _error_code(response.body))

    async def sample(self) -> dict[str, Any]:
        """GET /v1/stats and /metrics on a connection of their own."""
        out: dict[str, Any] = {"stats": {}, "metrics": {}}
        errors = []
        for path in ("/v1/stats", "/metrics"):
            try:
                response = await self._stats_client.get(path)
            except HTTPClientError as exc:
                errors.append(f"{path}: {exc}")
                continue
            if response.status != 200:
                errors.append(f"{path}: HTTP {response.status}")
                continue
            # Parsing a server's metrics takes milliseconds: done in a thread, so that it
            # does not stall the load generator's event loop (and its latencies).
            try:
                if path == "/v1/stats":
                    out["stats"] = await trio.to_thread.run_sync(_parse_stats, response.body)
                else:
                    text = response.body.decode("utf-8", "replace")
                    out["metrics"] = await trio.to_thread.run_sync(parse_prometheus, text)
            except ValueError as exc:
                errors.append(f"{path}: unparsable ({exc})")
        if errors:
            out["error"] = "; ".join(errors)
        return out

    def describe(self) -> dict[str, Any]:
        """``{"kind": "http", "url": ...}``."""
        return {"kind": self.kind, "url": self.url}


@asynccontextmanager
async def open_http_target(
    url: str,
    *,
    api_key: str | None = None,
    max_connections: int | None = None,
    connect_timeout: float = 5.0,
) -> AsyncIterator[HTTPTarget]:
    """An HTTP target; raises `TargetUnreachable` if ``url`` cannot be reached at all.

    Reachability is checked with one ``GET /v1/stats`` (any HTTP answer will do).
    """
    async with (
        open_http_client(url, api_key=api_key, max_connections=max_connections) as client,
        open_http_client(url, api_key=api_key, max_connections=1) as stats_client,
    ):
        try:
            with trio.fail_after(connect_timeout):
                await stats_client.get("/v1/stats")
        except (HTTPClientError, trio.TooSlowError) as exc:
            reason = str(exc) or f"no answer within {connect_timeout:g} s"
            raise TargetUnreachable(f"cannot reach {url}: {reason}") from None
        yield HTTPTarget(url, client, stats_client)


class EmbeddedTarget:
    """An in-process runtime: requests go straight to ``Runtime.process``."""

    kind = "embedded"

    def __init__(self, runtime: Any) -> None:
        self.runtime = runtime

    async def call(self, request: RequestSpec) -> Outcome:
        """``await runtime.process(...)``; a DTESNError becomes its HTTP status and code."""
        deadline = None
        if request.deadline_ms is not None:
            deadline = trio.current_time() + request.deadline_ms / 1000.0
        try:
            await self.runtime.process(request.input, priority=request.priority, deadline=deadline)
        except DTESNError as exc:
            return Outcome(exc.http_status, exc.code)
        return Outcome.OK

    async def sample(self) -> dict[str, Any]:
        """The runtime's ``get_stats()`` and ``metrics_snapshot()``."""
        await trio.lowlevel.checkpoint()
        out: dict[str, Any] = {"stats": {}, "metrics": {}}
        try:
            out["stats"] = flatten(self.runtime.get_stats())
            rss = _own_rss_bytes()
            if rss is not None:  # the runtime is this process
                out["stats"]["process.rss_bytes"] = rss
            snapshot = self.runtime.metrics_snapshot()
            out["metrics"] = {k: v for k, v in flatten(snapshot).items() if isinstance(v, float)}
        except Exception as exc:  # a stats bug must not stop the soak; it is reported
            out["error"] = f"{type(exc).__name__}: {exc}"
        return out

    def describe(self) -> dict[str, Any]:
        """``{"kind": "embedded"}``."""
        return {"kind": self.kind}


@asynccontextmanager
async def open_embedded_target(config: Any = None) -> AsyncIterator[EmbeddedTarget]:
    """A runtime opened with ``open_runtime(config)`` (embedded defaults when None)."""
    try:
        from dtesn_trio.runtime import (  # type: ignore[import-not-found,unused-ignore]
            open_runtime,
        )
    except ImportError as exc:  # pragma: no cover - only before the runtime exists
        raise TargetUnreachable(f"the embedded runtime is not available: {exc}") from None
    async with open_runtime(config) as runtime:
        yield EmbeddedTarget(runtime)
