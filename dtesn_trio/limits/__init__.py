"""Admission: rate limiting, adaptive concurrency, circuit breaking, and their composition.

Each piece is usable on its own: :class:`RateLimiter` (GCRA), :class:`AdaptiveLimiter`
(a ``trio.CapacityLimiter`` moved by an algorithm from :mod:`.algorithms`),
:class:`CircuitBreaker`; :class:`Admission` (the seed's ``ConcurrencyManager``) composes them.
"""

from dtesn_trio.limits.adaptive import (
    AdaptiveLimiter,
    AdaptiveLimiterConfig,
    AdaptiveLimiterStatistics,
    Ticket,
)
from dtesn_trio.limits.admission import (
    ALGORITHMS,
    Admission,
    AdmissionConfig,
    AdmissionStatistics,
    ConcurrencyManager,
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
    DEFAULT_IGNORED,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerConfig,
    CircuitBreakerStatistics,
    Permit,
    default_ignore,
)
from dtesn_trio.limits.rate import RateLimiter, RateLimiterConfig, RateLimiterStatistics

__all__ = [
    "ALGORITHMS",
    "DEFAULT_IGNORED",
    "AIMDLimit",
    "AdaptiveLimiter",
    "AdaptiveLimiterConfig",
    "AdaptiveLimiterStatistics",
    "Admission",
    "AdmissionConfig",
    "AdmissionStatistics",
    "BreakerState",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitBreakerStatistics",
    "ConcurrencyManager",
    "FixedLimit",
    "Gradient2Limit",
    "LimitAlgorithm",
    "Permit",
    "RateLimiter",
    "RateLimiterConfig",
    "RateLimiterStatistics",
    "Sample",
    "SeedScaleLimit",
    "Ticket",
    "VegasLimit",
    "default_ignore",
]
