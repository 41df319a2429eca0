"""Sampling the target's own view during a run: ``/v1/stats`` and ``/metrics``.

Each sample keeps the flattened stats and metrics (for the report) and a few headline
figures picked out of them (RSS, queue depth, limiter limit and in-flight, breaker state,
longest event-loop step), which the report plots. Headlines are found by name patterns,
so a target that names things a little differently still gets its plots, and a target that
lacks one simply has no such line.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

import trio

from dtesn_trio.soak.targets import SoakTarget

__all__ = ["HEADLINES", "Sampler", "headlines"]

# headline -> patterns tried in order against "stats:<dotted key>" and "metrics:<name>".
# A metric pattern matching several labelled series is summed (queue depth per level).
HEADLINES: dict[str, tuple[str, ...]] = {
    "rss_bytes": (
        r"^metrics:process_resident_memory_bytes$",
        r"^stats:.*\brss(_bytes)?$",
        r"^metrics:.*rss_bytes$",
    ),
    "queue_depth": (
        r"^stats:queue\.(total_queued_requests|current_size|queue_size|depth|size|queued)$",
        r"^metrics:[a-z_]*queue_depth(\{.*\})?$",
    ),
    "limiter_limit": (
        r"^stats:load\.(effective_capacity|current_limit|concurrency_limit|limit)$",
        r"^metrics:[a-z_]*(limiter_limit|concurrency_limit)$",
        r"^stats:.*\b(current_limit|concurrency_limit)$",
    ),
    "limiter_in_flight": (
        r"^stats:load\.(concurrent_requests|in_flight|active_requests)$",
        r"^metrics:[a-z_]*limiter_in_flight$",
        r"^metrics:[a-z_]*in_flight$",
    ),
    "breaker_state": (
        r"^stats:load\.circuit_breaker_state$",
        r"^stats:.*breaker.*\.state$",
        r"^stats:.*breaker_state$",
        r"^metrics:[a-z_]*breaker_state(\{.*\})?$",
    ),
    "max_step_ms": (
        r"^stats:loop\.max_step_ms$",
        r"^metrics:[a-z_]*(loop_max_step_ms|max_step_ms)$",
        r"^metrics:[a-z_]*loop_max_step_seconds$",
    ),
}

_COMPILED = {name: tuple(re.compile(p) for p in pats) for name, pats in HEADLINES.items()}


def headlines(sample: Mapping[str, Any]) -> dict[str, float | str | None]:
    """Pick the headline figures out of one sample (None where the target has none)."""
    keys: dict[str, float | str] = {}
    for k, v in sample.get("stats", {}).items():
        keys[f"stats:{k}"] = v
    for k, v in sample.get("metrics", {}).items():
        keys[f"metrics:{k}"] = v
    out: dict[str, float | str | None] = {}
    for name, patterns in _COMPILED.items():
        value: float | str | None = None
        for pattern in patterns:
            hits = [keys[k] for k in keys if pattern.match(k)]
            if not hits:
                continue
            numbers = [h for h in hits if isinstance(h, float)]
            if numbers:
                value = sum(numbers)
                if pattern.pattern.endswith("seconds$"):
                    value *= 1000.0
            else:
                value = hits[0]
            break
        out[name] = value
    return out


class Sampler:
    """Samples a target every ``interval`` seconds into ``samples``.

    Each sample: ``{"t": seconds since start, "stats": {...}, "metrics": {...},
    "headlines": {...}, "error"?: str}``. A slow or failing target costs at most
    ``interval`` per sample and is recorded, not raised.
    """

    def __init__(
        self,
        target: SoakTarget,
        *,
        interval: float = 1.0,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        if not interval > 0:
            raise ValueError(f"sampler.interval must be > 0 (got {interval})")
        self.target = target
        self.interval = interval
        self.samples: list[dict[str, Any]] = []
        self._clock = clock

    async def take(self, t0: float) -> dict[str, Any]:
        """Take one sample now and append it."""
        t = self._clock() - t0
        with trio.move_on_after(self.interval) as scope:
            sample = await self.target.sample()
        if scope.cancelled_caught:
            sample = {"stats": {}, "metrics": {}, "error": "timed out"}
        sample["t"] = round(t, 3)
        sample["headlines"] = headlines(sample)
        self.samples.append(sample)
        return sample

    async def run(
        self, t0: float, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Sample at t0, t0 + interval, ... until cancelled."""
        task_status.started()
        next_at = t0
        while True:
            await trio.sleep_until(next_at)
            await self.take(t0)
            next_at += self.interval
            now = self._clock()
            if next_at < now:  # fell behind (slow target): skip, don't burst
                next_at = now + self.interval
