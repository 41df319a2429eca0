"""The adaptive queue timeout: p95 of recent response times, widened while failing."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["AdaptiveTimeout", "AdaptiveTimeoutStatistics"]


@dataclass(frozen=True, slots=True)
class AdaptiveTimeoutStatistics:
    """A snapshot of the adaptive timeout and the window it was computed from."""

    timeout: float
    p95_response_time: float | None
    avg_response_time: float | None
    success_rate: float | None
    samples: int


class AdaptiveTimeout:
    """Queue timeout = p95(recent response times) × 1.5, or × 2.0 below 90 % success.

    The result is clamped to ``[minimum, maximum]``; with no samples yet it is
    ``initial``.  Samples are cheap appends; the percentile is recomputed at most once
    per ``refresh`` seconds (of the caller's clock), so the hot path never sorts.
    """

    def __init__(
        self,
        *,
        initial: float = 30.0,
        minimum: float = 5.0,
        maximum: float = 120.0,
        window: int = 1000,
        refresh: float = 1.0,
    ) -> None:
        self._initial = initial
        self._min = minimum
        self._max = maximum
        self._refresh = refresh
        self._times: deque[float] = deque(maxlen=window)
        self._outcomes: deque[bool] = deque(maxlen=window)
        self._value = initial
        self._p95: float | None = None
        self._refreshed_at = -math.inf

    def record(self, response_times: list[float], ok: bool) -> None:
        """Record processed requests (their response times) that all succeeded or all failed."""
        self._times.extend(response_times)
        self._outcomes.extend([ok] * len(response_times))

    def record_batch(
        self, response_times: list[float], failed: int | Sequence[float] | None = 0
    ) -> None:
        """Record a processed batch: its members' response times, ``failed`` of which
        were failures (a count, or the failed members' times as before)."""
        if not isinstance(failed, int):
            failed = 0 if failed is None else len(failed)
        self._times.extend(response_times)
        self._outcomes.extend([True] * (len(response_times) - failed))
        if failed:
            self._outcomes.extend([False] * failed)

    def record_failures(self, count: int) -> None:
        """Record ``count`` failures without response times (e.g. queue timeouts)."""
        self._outcomes.extend([False] * count)

    def value(self, now: float) -> float:
        """The current timeout, recomputed when the last computation is stale."""
        if now - self._refreshed_at >= self._refresh:
            self._recompute(now)
        return self._value

    def _recompute(self, now: float) -> None:
        self._refreshed_at = now
        if not self._times:
            self._p95 = None
            self._value = self._initial
            return
        ordered = sorted(self._times)
        p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
        self._p95 = p95
        rate = self.success_rate()
        factor = 2.0 if rate is not None and rate < 0.9 else 1.5
        self._value = min(self._max, max(self._min, p95 * factor))

    def success_rate(self) -> float | None:
        """Share of successes among the recent outcomes; ``None`` with no outcomes."""
        if not self._outcomes:
            return None
        return sum(self._outcomes) / len(self._outcomes)

    def statistics(self, now: float) -> AdaptiveTimeoutStatistics:
        """A frozen snapshot (recomputes the timeout from the current window)."""
        self._recompute(now)
        timeout = self._value
        times = self._times
        return AdaptiveTimeoutStatistics(
            timeout=timeout,
            p95_response_time=self._p95,
            avg_response_time=(sum(times) / len(times)) if times else None,
            success_rate=self.success_rate(),
            samples=len(times),
        )
