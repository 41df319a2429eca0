"""Admission: the rate limiter, the circuit breaker and the adaptive limiter as one gate.

``async with admission.throttle_request(priority=p):`` admits a request or refuses it at
once (``RateLimited`` / ``CircuitOpen`` / ``Overloaded``, each with ``retry_after``): it
never waits silently. All checks are synchronous; entering costs one checkpoint, like a
bare ``trio.CapacityLimiter``, and leaving none (``with
admission.throttle_request_nowait(priority=p):`` is the same gate without the checkpoint,
for a caller whose own path checkpoints after it). On exit the outcome is recorded: no
exception is a success; an exception is judged by the breaker's predicates and counts as
a drop for the limiter when it is ``Overloaded`` or ``DeadlineExceeded``; cancellation
counts for nothing.

This is the seed's ``ConcurrencyManager``; that name and its keyword arguments work too.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import trio

from dtesn_trio import _checks
from dtesn_trio.errors import DeadlineExceeded, Overloaded
from dtesn_trio.limits.adaptive import (
    _DROPPED,
    _IGNORED,
    AdaptiveLimiter,
    AdaptiveLimiterConfig,
    AdaptiveLimiterStatistics,
)
from dtesn_trio.limits.adaptive import (
    _SUCCESS as _LIMIT_SUCCESS,
)
from dtesn_trio.limits.algorithms import (
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    LimitAlgorithm,
    Sample,
    SeedScaleLimit,
    VegasLimit,
)
from dtesn_trio.limits.breaker import (
    _IGNORE,
    _SUCCESS,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStatistics,
)
from dtesn_trio.limits.rate import RateLimiter, RateLimiterConfig, RateLimiterStatistics

__all__ = [
    "ALGORITHMS",
    "Admission",
    "AdmissionConfig",
    "AdmissionStatistics",
    "ConcurrencyManager",
]

ALGORITHMS = ("fixed", "aimd", "vegas", "gradient2", "seed")

# Errors that mean "too much load downstream": a loss signal for the concurrency limit.
_DROPS = (Overloaded, DeadlineExceeded)


@dataclass(frozen=True, slots=True)
class AdmissionConfig:
    """How admission refuses: at once, with ``retry_after``, and only where it must.

    The defaults refuse for no load reason: no rate limit (``max_requests_per_second``
    ``None``), a fixed concurrency limit of ``max_concurrent_requests`` (10,000: the
    queue's default capacity, so the queue is the one place a request waits: by
    priority, bounded, until its deadline), and the circuit breaker.  Refusing at once
    suits clients that back off; against clients that retry at once (a storm) every
    refusal comes straight back and the refusals eat the CPU the work needs
    (``benchmarks/storm.py``, docs/RELIABILITY.md "Storms").  ``AdmissionConfig.seed()``
    is the seed's configuration (500 concurrent, adaptive, 1,000 requests/s, burst 100).

    With ``adaptive_scaling`` the concurrency limit starts at ``max_concurrent_requests``
    and ``algorithm`` moves it within [``min_limit``, ``max_limit``] (default 2 x the
    base), and the rate follows the measured load between ``min_rate`` and ``max_rate``
    (defaults 0.5 and 1.5 x the base rate). ``partitions[p]`` is the share of the limit
    kept for priority ``p`` against less important levels (0 is the most important;
    default 5 % each). ``enabled=False`` turns admission into a pass-through.
    """

    max_concurrent_requests: int = 10_000
    max_requests_per_second: float | None = None
    burst_limit: int = 100
    adaptive_scaling: bool = False
    scale_factor: float = 1.2
    algorithm: str = "gradient2"
    priority_levels: int = 5
    default_priority: int | None = None
    """Priority of ``throttle_request()`` without one (default: the middle level)."""
    partitions: tuple[float, ...] | None = None
    min_limit: int = 20
    max_limit: int | None = None
    max_rate: float | None = None
    min_rate: float | None = None
    window_time: float = 1.0
    window_size: int = 10
    min_rtt_threshold: float = 100e-6
    overloaded_retry_after: float = 1.0
    breaker: CircuitBreakerConfig = field(default_factory=CircuitBreakerConfig)
    enabled: bool = True

    def __post_init__(self) -> None:
        p = "admission"
        _checks.integer(f"{p}.max_concurrent_requests", self.max_concurrent_requests, minimum=1)
        if self.max_requests_per_second is not None:
            _checks.positive(f"{p}.max_requests_per_second", self.max_requests_per_second)
        else:
            for name in ("max_rate", "min_rate"):
                if getattr(self, name) is not None:
                    raise ValueError(
                        f"{p}.{name} needs {p}.max_requests_per_second (no rate limit is set)"
                    )
        _checks.integer(f"{p}.burst_limit", self.burst_limit, minimum=1)
        if not _checks._is_number(self.scale_factor) or not self.scale_factor > 1.0:
            raise ValueError(f"{p}.scale_factor must be > 1.0 (got {self.scale_factor!r})")
        _checks.one_of(f"{p}.algorithm", self.algorithm, ALGORITHMS)
        _checks.integer(f"{p}.priority_levels", self.priority_levels, minimum=1)
        if self.default_priority is not None:
            _checks.integer(f"{p}.default_priority", self.default_priority, minimum=0)
            if self.default_priority >= self.priority_levels:
                raise ValueError(
                    f"{p}.default_priority must be < {p}.priority_levels "
                    f"(got {self.default_priority} >= {self.priority_levels})"
                )
        _checks.integer(f"{p}.min_limit", self.min_limit, minimum=1)
        if self.max_limit is not None:
            _checks.integer(f"{p}.max_limit", self.max_limit, minimum=1)
            _checks.at_least(
                f"{p}.max_limit",
                self.max_limit,
                f"{p}.max_concurrent_requests",
                self.max_concurrent_requests,
            )
        _checks.positive(f"{p}.window_time", self.window_time)
        if not isinstance(self.breaker, CircuitBreakerConfig):
            raise ValueError(f"{p}.breaker must be a CircuitBreakerConfig (got {self.breaker!r})")
        # The sub-configs validate the rest (rates, partitions, window) with their names.
        self.rate_config()
        self.limiter_config()

    @classmethod
    def seed(cls, **overrides: Any) -> AdmissionConfig:
        """The seed's defaults: 500 concurrent (adaptive), 1,000 requests/s, burst 100."""
        seed: dict[str, Any] = {
            "max_concurrent_requests": 500,
            "max_requests_per_second": 1000.0,
            "adaptive_scaling": True,
        }
        return cls(**{**seed, **overrides})

    @property
    def priority(self) -> int:
        """The priority used when none is given."""
        if self.default_priority is not None:
            return self.default_priority
        return self.priority_levels // 2

    def rate_config(self) -> RateLimiterConfig | None:
        """The rate limiter's config, ``None`` without a rate limit."""
        if self.max_requests_per_second is None:
            return None
        return RateLimiterConfig(
            rate=float(self.max_requests_per_second),
            burst=self.burst_limit,
            adaptive=self.adaptive_scaling,
            max_rate=self.max_rate,
            min_rate=self.min_rate,
            name="admission",
        )

    def limiter_config(self) -> AdaptiveLimiterConfig:
        partitions = self.partitions
        if partitions is None:
            partitions = (min(0.05, 0.5 / self.priority_levels),) * self.priority_levels
        base = self.max_concurrent_requests
        return AdaptiveLimiterConfig(
            min_limit=min(self.min_limit, base),
            max_limit=self.max_limit if self.max_limit is not None else 2 * base,
            min_window_time=self.window_time,
            max_window_time=self.window_time,
            window_size=self.window_size,
            min_rtt_threshold=self.min_rtt_threshold,
            priority_levels=self.priority_levels,
            partitions=partitions,
            overloaded_retry_after=self.overloaded_retry_after,
            name="admission",
        )

    def make_algorithm(self) -> LimitAlgorithm:
        """A fresh algorithm object for this config (fixed when adaptive scaling is off)."""
        base = self.max_concurrent_requests
        lim = self.limiter_config()
        lo, hi = lim.min_limit, lim.max_limit
        if not self.adaptive_scaling or self.algorithm == "fixed":
            return FixedLimit(base)
        if self.algorithm == "aimd":
            return AIMDLimit(base, min_limit=lo, max_limit=hi)
        if self.algorithm == "vegas":
            return VegasLimit(base, min_limit=lo, max_limit=hi)
        if self.algorithm == "seed":
            return SeedScaleLimit(base, scale_factor=self.scale_factor, min_limit=lo, max_limit=hi)
        return Gradient2Limit(base, min_limit=lo, max_limit=hi)


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """A snapshot of an :class:`Admission` and of its three primitives."""

    enabled: bool
    admitted: int
    """Requests let through (finished or in flight)."""
    refused_rate_limited: int
    refused_circuit_open: int
    refused_overloaded: int
    rate: RateLimiterStatistics | None
    """``None`` without a rate limit."""
    limiter: AdaptiveLimiterStatistics
    breaker: CircuitBreakerStatistics


_new_throttle = object.__new__


class _Throttle:
    """The context manager behind :meth:`Admission.throttle_request` (async) and
    :meth:`Admission.throttle_request_nowait` (sync, no checkpoint).

    It is also the call's borrower in the capacity limiter and carries what the breaker
    and the limiter need at exit, so admitting allocates nothing else. The admission path
    is written out here, flat, because it is the hot path of every request.
    """

    __slots__ = ("_admission", "_clock", "_state", "epoch", "inflight", "priority", "start")

    def __init__(
        self, admission: Admission, priority: int, clock: trio.abc.Clock | None = None
    ) -> None:
        self._admission = admission
        self.priority = priority
        self._clock = clock  # the run's clock (looked up on entry when not given)
        self._state = 0  # 0 new, 1 admitted, 2 done or pass-through
        # epoch, start and inflight are set on admission.

    async def __aenter__(self) -> None:
        if self._state:
            raise RuntimeError("a throttle_request() context can be entered only once")
        if not self._admission._enabled:
            self._state = 2
            await trio.lowlevel.checkpoint()
            return
        # Same checkpoint pattern as trio.CapacityLimiter.acquire: cancelled -> nothing was
        # taken; admitted -> the shielded checkpoint cannot lose the tokens.
        await trio.lowlevel.checkpoint_if_cancelled()
        self.__enter__()
        await trio.lowlevel.cancel_shielded_checkpoint()

    def __enter__(self) -> None:
        if self._state:
            raise RuntimeError("a throttle_request() context can be entered only once")
        if not self._admission._enabled:
            self._state = 2
            return
        # Keep the run's clock: reading it directly at exit is half the cost of
        # trio.current_time(), and this is the hot path.
        clock = self._clock
        if clock is None:
            self._clock = clock = trio.lowlevel.current_clock()
        self._enter_at(clock.current_time())

    @classmethod
    def _admit(
        cls, admission: Admission, priority: int, clock: trio.abc.Clock, now: float
    ) -> _Throttle:
        """A throttle admitted at ``now``: ``_Throttle(admission, priority, clock)``
        entered with ``_enter_at(now)`` (admission enabled), in one call."""
        throttle = _new_throttle(cls)
        throttle._admission = admission
        throttle.priority = priority
        throttle._clock = clock
        throttle._enter_at(now)
        return throttle

    def _enter_at(self, now: float) -> None:
        """Admit at ``now`` (the run's clock) or raise the refusal; the caller checked
        ``_state`` and that admission is enabled, and passes the time it has read
        already (the runtime's request start)."""
        admission = self._admission
        rate_limiter = admission.rate_limiter
        if rate_limiter is not None:
            rate_limiter._acquire_at(1, now)
        breaker = admission.breaker
        self.epoch = epoch = breaker._permit_at(now)
        try:
            self.inflight = admission.limiter._admit_at(self, self.priority)
        except BaseException:
            breaker._record(epoch, now, now, 0.0, _IGNORE)
            raise
        self.start = now
        self._state = 1

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._state != 1:
            return
        assert self._clock is not None
        self._exit_at(exc, self._clock.current_time())

    def _exit_at(self, exc: BaseException | None, now: float) -> None:
        """Record the outcome (``exc``: ``None`` for a success) at ``now`` and give the
        token back; a no-op unless admitted and not yet exited."""
        if self._state != 1:
            return
        self._state = 2
        admission = self._admission
        if exc is None:
            admission.breaker._record(self.epoch, self.start, now, None, _SUCCESS)
            admission.limiter._release_at(self, _LIMIT_SUCCESS, None, now)
            return
        breaker = admission.breaker
        breaker._record(self.epoch, self.start, now, None, breaker.classify(exc))
        kind = _DROPPED if isinstance(exc, _DROPS) else _IGNORED
        admission.limiter._release_at(self, kind, None, now)


class Admission:
    """Admission control for a server: rate, circuit breaker, adaptive concurrency.

    ``Admission(config)`` or, as the seed wrote it,
    ``ConcurrencyManager(max_concurrent_requests=500, max_requests_per_second=1000,
    adaptive_scaling=True, scale_factor=1.2)``: keyword arguments override fields of
    ``config`` (or of the defaults). The primitives are public: ``rate_limiter``,
    ``breaker``, ``limiter`` (whose ``capacity_limiter`` holds the current limit).
    Build it anywhere; use it inside one Trio run (its times are that run's clock).
    """

    def __init__(self, config: AdmissionConfig | None = None, **overrides: Any) -> None:
        config = config if config is not None else AdmissionConfig()
        if overrides:
            names = {f.name for f in dataclasses.fields(AdmissionConfig)}
            unknown = sorted(set(overrides) - names)
            if unknown:
                raise TypeError(f"unknown admission setting(s): {', '.join(unknown)}")
            config = dataclasses.replace(config, **overrides)
        self._config = config
        self._enabled = config.enabled
        self._default_priority = config.priority
        self._levels = config.priority_levels
        rate = config.rate_config()
        self.rate_limiter = None if rate is None else RateLimiter(rate)
        self.breaker = CircuitBreaker(config.breaker, name="engine")
        self.limiter = AdaptiveLimiter(config.make_algorithm(), config.limiter_config())
        self.limiter.add_window_listener(self._on_window)

    @property
    def config(self) -> AdmissionConfig:
        return self._config

    @property
    def enabled(self) -> bool:
        return self._enabled

    def throttle_request(self, priority: int | None = None) -> _Throttle:
        """``async with`` this to run one request under admission control.

        Raises ``InvalidRequest`` (bad priority), ``RateLimited``, ``CircuitOpen`` or
        ``Overloaded`` on entry; never waits for capacity.
        """
        if priority is None:
            priority = self._default_priority
        else:
            _checks.check_priority(priority, self._levels)
        return _Throttle(self, priority)

    def throttle_request_nowait(self, priority: int | None = None) -> _Throttle:
        """``with`` this: :meth:`throttle_request` without its checkpoint.

        For a caller whose own path checkpoints after admission (the runtime's: it
        always waits on the queue or the cache).  It admits or refuses synchronously,
        with the same errors, and records the outcome on exit exactly as the async form.
        """
        return self.throttle_request(priority)

    def _on_window(self, sample: Sample, limit: int) -> None:
        # Peak concurrency over the limit: the load the rate adapts to.
        if self.rate_limiter is not None:
            self.rate_limiter.observe_load(sample.inflight / limit)

    def statistics(self) -> AdmissionStatistics:
        rate = None if self.rate_limiter is None else self.rate_limiter.statistics()
        limiter = self.limiter.statistics()
        breaker = self.breaker.statistics()
        return AdmissionStatistics(
            enabled=self._enabled,
            admitted=limiter.succeeded + limiter.dropped + limiter.ignored + limiter.in_flight,
            refused_rate_limited=0 if rate is None else rate.refused,
            refused_circuit_open=breaker.not_permitted_calls_total,
            refused_overloaded=limiter.refused,
            rate=rate,
            limiter=limiter,
            breaker=breaker,
        )

    def get_current_load(self) -> dict[str, Any]:
        """The seed's load dictionary (and a few more keys), built from :meth:`statistics`."""
        s = self.statistics()
        rate, limiter, breaker = s.rate, s.limiter, s.breaker
        limit = max(limiter.limit, 1)
        buffered = breaker.buffered_calls
        return {
            "concurrent_requests": limiter.in_flight,
            "recent_requests_per_second": None if rate is None else rate.recent_rate,
            "rate_limit_utilization": None if rate is None else rate.recent_rate / rate.rate,
            "concurrency_utilization": limiter.in_flight / limit,
            "available_slots": max(limiter.limit - limiter.in_flight, 0),
            "burst_capacity_remaining": None if rate is None else rate.tokens_available,
            "adaptive_scaling_enabled": self._config.adaptive_scaling,
            "system_load": None if rate is None else rate.load,
            "avg_response_time": limiter.avg_rtt,
            "success_rate": (buffered - breaker.failed_calls) / buffered if buffered else 1.0,
            "effective_capacity": limiter.limit,
            "base_capacity": self._config.max_concurrent_requests,
            "current_rate_limit": None if rate is None else rate.rate,
            "base_rate_limit": None if rate is None else rate.base_rate,
            "circuit_breaker_state": breaker.state.value,
            "admission_enabled": s.enabled,
            "admitted": s.admitted,
            "refused_rate_limited": s.refused_rate_limited,
            "refused_circuit_open": s.refused_circuit_open,
            "refused_overloaded": s.refused_overloaded,
        }


ConcurrencyManager = Admission
"""The seed's name for :class:`Admission`."""
