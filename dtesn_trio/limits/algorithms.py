"""Concurrency-limit algorithms: pure synchronous objects, ``update(sample) -> new limit``.

The algorithms and defaults are Netflix concurrency-limits' (``FixedLimit``, ``AIMDLimit``,
``VegasLimit``, ``Gradient2Limit``), plus the seed document's scale rule
(``SeedScaleLimit``) for comparison. None of them touches time or Trio: feed them samples,
read the limit. :class:`~dtesn_trio.limits.adaptive.AdaptiveLimiter` builds the samples
from windows of calls and applies the limit to a ``trio.CapacityLimiter``.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Protocol

from dtesn_trio import _checks

__all__ = [
    "AIMDLimit",
    "FixedLimit",
    "Gradient2Limit",
    "LimitAlgorithm",
    "Sample",
    "SeedScaleLimit",
    "VegasLimit",
]


@dataclass(frozen=True, slots=True)
class Sample:
    """One window of calls: its RTT, the peak in-flight count, and whether any call dropped."""

    rtt: float
    """The window's RTT in seconds (average of the successful calls)."""
    inflight: int
    """The most calls in flight during the window."""
    dropped: bool = False
    """At least one call was dropped (refused downstream, timed out, overloaded)."""
    success_rate: float = 1.0
    """Successful calls / (successful + dropped) in the window."""


class LimitAlgorithm(Protocol):
    """What :class:`AdaptiveLimiter` needs from an algorithm."""

    @property
    def limit(self) -> int: ...

    def update(self, sample: Sample) -> int: ...


def _clamp(value: float, low: float, high: float) -> float:
    return max(low, min(high, value))


def _bounds(name: str, initial: int, min_limit: int, max_limit: int) -> None:
    _checks.integer(f"{name}.min_limit", min_limit, minimum=1)
    _checks.integer(f"{name}.max_limit", max_limit, minimum=1)
    _checks.integer(f"{name}.initial_limit", initial, minimum=1)
    _checks.at_least(f"{name}.max_limit", max_limit, f"{name}.min_limit", min_limit)


class FixedLimit:
    """A limit that never moves (adaptive scaling off)."""

    def __init__(self, limit: int) -> None:
        _checks.integer("fixed.limit", limit, minimum=1)
        self._limit = limit

    @property
    def limit(self) -> int:
        return self._limit

    def update(self, sample: Sample) -> int:
        return self._limit


class AIMDLimit:
    """Loss-based: +1 per window while busy, x ``backoff_ratio`` on a drop or slow window.

    Netflix defaults: initial 20, min 20, max 200, backoff 0.9, timeout 5 s (an RTT above
    it counts as a drop). Growth only while ``inflight * 2 >= limit``.
    """

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 20,
        max_limit: int = 200,
        backoff_ratio: float = 0.9,
        timeout: float = 5.0,
    ) -> None:
        _bounds("aimd", initial_limit, min_limit, max_limit)
        if not _checks._is_number(backoff_ratio) or not 0.5 <= backoff_ratio < 1.0:
            raise ValueError(f"aimd.backoff_ratio must be in [0.5, 1) (got {backoff_ratio!r})")
        _checks.positive("aimd.timeout", timeout)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.backoff_ratio = backoff_ratio
        self.timeout = timeout
        self._limit = int(_clamp(initial_limit, min_limit, max_limit))

    @property
    def limit(self) -> int:
        return self._limit

    def update(self, sample: Sample) -> int:
        limit = self._limit
        if sample.dropped or sample.rtt > self.timeout:
            limit = int(limit * self.backoff_ratio)
        elif sample.inflight * 2 >= limit:
            limit += 1
        self._limit = int(_clamp(limit, self.min_limit, self.max_limit))
        return self._limit


class VegasLimit:
    """Delay-based (TCP Vegas): estimate the queue as ``limit·(1 − rtt_noload/rtt)``.

    queue <= log10(limit): + 6·log10(limit); queue < 3·log10(limit): + log10(limit);
    queue > 6·log10(limit) or a drop: − log10(limit). ``rtt_noload`` is the lowest RTT
    seen, re-probed every ``probe_multiplier·limit`` samples (x a jitter in [0.5, 1)).
    Netflix defaults: initial 20, max 1000, smoothing 1.0, probe multiplier 30.
    """

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 1000,
        smoothing: float = 1.0,
        probe_multiplier: int = 30,
        rng: random.Random | None = None,
    ) -> None:
        _bounds("vegas", initial_limit, min_limit, max_limit)
        if not _checks._is_number(smoothing) or not 0.0 < smoothing <= 1.0:
            raise ValueError(f"vegas.smoothing must be in (0, 1] (got {smoothing!r})")
        _checks.integer("vegas.probe_multiplier", probe_multiplier, minimum=1)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = smoothing
        self.probe_multiplier = probe_multiplier
        self._rng = rng if rng is not None else random.Random()
        self._estimate = float(_clamp(initial_limit, min_limit, max_limit))
        self._rtt_noload = 0.0
        self._probe_count = 0
        self._probe_jitter = self._rng.uniform(0.5, 1.0)

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def rtt_noload(self) -> float:
        return self._rtt_noload

    def update(self, sample: Sample) -> int:
        self._probe_count += 1
        if self._probe_jitter * self.probe_multiplier * self._estimate <= self._probe_count:
            # Forget the no-load RTT now and then: the service may have become slower for
            # good, and an old minimum would make every later window look queued.
            self._probe_count = 0
            self._probe_jitter = self._rng.uniform(0.5, 1.0)
            self._rtt_noload = sample.rtt
            return self.limit
        if self._rtt_noload == 0.0 or sample.rtt < self._rtt_noload:
            self._rtt_noload = sample.rtt
            return self.limit
        estimate = self._estimate
        log_limit = math.log10(max(estimate, 1.0))
        queue = math.ceil(estimate * (1.0 - self._rtt_noload / sample.rtt))
        if sample.dropped:
            new = estimate - log_limit
        elif sample.inflight * 2 < estimate:
            return self.limit
        else:
            alpha, beta, threshold = 3 * log_limit, 6 * log_limit, log_limit
            if queue <= threshold:
                new = estimate + beta
            elif queue < alpha:
                new = estimate + log_limit
            elif queue > beta:
                new = estimate - log_limit
            else:
                return self.limit
        new = _clamp(new, self.min_limit, self.max_limit)
        self._estimate = (1.0 - self.smoothing) * estimate + self.smoothing * new
        return self.limit


class Gradient2Limit:
    """Gradient of a long-term (exponential) RTT average over the window's RTT.

    ``gradient = clamp(0.5, 1, tolerance·long_rtt/short_rtt)``; ``new = limit·gradient +
    queue_size``, smoothed, clamped. Netflix defaults: initial 20, min 20, max 200,
    smoothing 0.2, queue size 4, long window 600, tolerance 1.5.

    Two deviations, both for overload: the ``queue_size`` headroom is added only while the
    gradient is 1 (Netflix #134: adding it under queueing makes the limit creep up under
    modest overload), and a window with drops counts as the steepest gradient (0.5),
    because Netflix's version ignores drops entirely.
    """

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 20,
        max_limit: int = 200,
        smoothing: float = 0.2,
        queue_size: int = 4,
        long_window: int = 600,
        rtt_tolerance: float = 1.5,
    ) -> None:
        _bounds("gradient2", initial_limit, min_limit, max_limit)
        if not _checks._is_number(smoothing) or not 0.0 < smoothing <= 1.0:
            raise ValueError(f"gradient2.smoothing must be in (0, 1] (got {smoothing!r})")
        _checks.integer("gradient2.queue_size", queue_size, minimum=0)
        _checks.integer("gradient2.long_window", long_window, minimum=1)
        if not _checks._is_number(rtt_tolerance) or not rtt_tolerance >= 1.0:
            raise ValueError(f"gradient2.rtt_tolerance must be >= 1.0 (got {rtt_tolerance!r})")
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.smoothing = smoothing
        self.queue_size = queue_size
        self.rtt_tolerance = rtt_tolerance
        self._estimate = float(_clamp(initial_limit, min_limit, max_limit))
        self._long = _ExpAverage(long_window, warmup=10)

    @property
    def limit(self) -> int:
        return int(self._estimate)

    @property
    def long_rtt(self) -> float:
        return self._long.value

    def update(self, sample: Sample) -> int:
        short = sample.rtt
        long = self._long.add(short)
        # After a long spell of overload the long RTT stays high; decay it quickly once
        # latency is back to normal so the gradient works again.
        if short > 0.0 and long / short > 2.0:
            self._long.value = long * 0.95
        estimate = self._estimate
        if sample.inflight < estimate / 2:
            return self.limit
        if sample.dropped:
            gradient = 0.5
        elif short <= 0.0:
            gradient = 1.0
        else:
            gradient = _clamp(self.rtt_tolerance * long / short, 0.5, 1.0)
        new = estimate * gradient + (self.queue_size if gradient >= 1.0 else 0.0)
        new = estimate * (1.0 - self.smoothing) + new * self.smoothing
        self._estimate = _clamp(new, self.min_limit, self.max_limit)
        return self.limit


class _ExpAverage:
    """Netflix's ExpAvgMeasurement: a plain mean for ``warmup`` samples, then an EMA."""

    __slots__ = ("count", "factor", "value", "warmup")

    def __init__(self, window: int, warmup: int) -> None:
        self.factor = 2.0 / (window + 1)
        self.warmup = warmup
        self.count = 0
        self.value = 0.0

    def add(self, sample: float) -> float:
        if self.count < self.warmup:
            self.count += 1
            self.value += (sample - self.value) / self.count
        else:
            self.value = self.value * (1.0 - self.factor) + sample * self.factor
        return self.value


class SeedScaleLimit:
    """The seed's rule: x ``scale_factor`` (at most 1.5) when fast and healthy, / it when not.

    Fast and healthy: RTT < ``fast_rtt`` (0.1 s) and success rate > 0.95. Slow or failing:
    RTT > ``slow_rtt`` (1.0 s) or success rate < 0.9 -> x max(1/scale_factor, 0.7).
    Kept for comparison; it has no notion of queueing. Like the others here it does not
    grow while less than half the limit is in use (the seed's grew even when idle).
    """

    def __init__(
        self,
        initial_limit: int = 20,
        *,
        min_limit: int = 1,
        max_limit: int = 1000,
        scale_factor: float = 1.2,
        fast_rtt: float = 0.1,
        slow_rtt: float = 1.0,
    ) -> None:
        _bounds("seed", initial_limit, min_limit, max_limit)
        if not _checks._is_number(scale_factor) or not scale_factor > 1.0:
            raise ValueError(f"seed.scale_factor must be > 1.0 (got {scale_factor!r})")
        _checks.positive("seed.fast_rtt", fast_rtt)
        _checks.positive("seed.slow_rtt", slow_rtt)
        self.min_limit = min_limit
        self.max_limit = max_limit
        self.scale_factor = scale_factor
        self.fast_rtt = fast_rtt
        self.slow_rtt = slow_rtt
        self._estimate = float(_clamp(initial_limit, min_limit, max_limit))

    @property
    def limit(self) -> int:
        return int(self._estimate)

    def update(self, sample: Sample) -> int:
        if sample.rtt < self.fast_rtt and sample.success_rate > 0.95:
            if sample.inflight * 2 < self._estimate:
                # Not in the seed: without this guard an idle server's limit grows to the max.
                return self.limit
            scale = min(self.scale_factor, 1.5)
        elif sample.rtt > self.slow_rtt or sample.success_rate < 0.9:
            scale = max(1.0 / self.scale_factor, 0.7)
        else:
            return self.limit
        self._estimate = _clamp(self._estimate * scale, self.min_limit, self.max_limit)
        return self.limit
