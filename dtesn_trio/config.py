"""The runtime's configuration: one frozen dataclass per section, composed here.

Each section lives beside the code it configures (``DTESNConfig`` in ``dtesn``,
``AdmissionConfig`` in ``limits``, ...); ``RuntimeConfig()`` with no arguments is the
embedded default: no Redis, no PostgreSQL, SQLite jobs, an in-memory cache.
Loading from TOML, the environment and flags is ``dtesn_trio.settings``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dtesn_trio import _checks
from dtesn_trio.cache import CacheConfig
from dtesn_trio.dtesn import DTESNConfig, ProcessorConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.limits.shared_rate import SharedRateLimiterConfig
from dtesn_trio.nurseries import BatchQueueConfig, ConnectionPoolConfig
from dtesn_trio.sessions.config import SessionsConfig

__all__ = ["PostgresSettings", "RedisSettings", "RuntimeConfig"]


def _redis_pool_default() -> ConnectionPoolConfig:
    return ConnectionPoolConfig(
        max_connections=64, min_connections=4, max_concurrent_creates=8, max_waiting=10_000
    )


@dataclass(frozen=True)
class RedisSettings:
    """Redis for the shared cache (section ``redis``); ``url`` None = no Redis.

    ``timeout`` bounds one cache call to Redis (the shared limit has its own,
    ``shared_limit.timeout``), the wait for a connection included: a Redis that is down, frozen or partitioned costs a request at
    most this long (and nothing once the Redis breaker has opened), never its deadline.
    A timeout counts as a failure for the breaker.
    """

    url: str | None = None
    pool: ConnectionPoolConfig = field(default_factory=_redis_pool_default)
    timeout: float = 0.25

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith("redis://"):
            raise ValueError(f"redis.url must start with redis:// (got {self.url!r})")
        _checks.positive("redis.timeout", self.timeout)


def _postgres_pool_default() -> ConnectionPoolConfig:
    return ConnectionPoolConfig(
        max_connections=16, min_connections=2, max_concurrent_creates=4, max_waiting=10_000
    )


@dataclass(frozen=True)
class PostgresSettings:
    """PostgreSQL for shared durable jobs (section ``postgres``); used when
    ``jobs.backend = "postgres"``."""

    dsn: str | None = None
    pool: ConnectionPoolConfig = field(default_factory=_postgres_pool_default)

    def __post_init__(self) -> None:
        if self.dsn is not None and not self.dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError(f"postgres.dsn must start with postgresql:// (got {self.dsn!r})")


@dataclass(frozen=True)
class RuntimeConfig:
    """Everything ``open_runtime`` builds, section by section."""

    model: DTESNConfig = field(default_factory=DTESNConfig)
    processor: ProcessorConfig = field(default_factory=ProcessorConfig)
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    queue: BatchQueueConfig = field(default_factory=BatchQueueConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    redis: RedisSettings = field(default_factory=RedisSettings)
    postgres: PostgresSettings = field(default_factory=PostgresSettings)
    shared_limit: SharedRateLimiterConfig = field(default_factory=SharedRateLimiterConfig)
    jobs: JobsConfig = field(default_factory=JobsConfig)
    sessions: SessionsConfig = field(default_factory=SessionsConfig)
    shutdown_grace: float = 10.0

    def __post_init__(self) -> None:
        _checks.non_negative("runtime.shutdown_grace", self.shutdown_grace)
        if self.cache.enabled and self.cache.backend == "redis" and self.redis.url is None:
            raise ValueError("cache.backend = 'redis' needs redis.url to be set")
        if self.shared_limit.enabled and self.redis.url is None:
            raise ValueError("shared_limit.enabled = true needs redis.url to be set")
        if self.jobs.enabled and self.jobs.backend == "postgres" and self.postgres.dsn is None:
            raise ValueError("jobs.backend = 'postgres' needs postgres.dsn to be set")
        if self.admission.priority_levels != self.queue.priority_levels:
            raise ValueError(
                "admission.priority_levels must equal queue.priority_levels "
                f"(got {self.admission.priority_levels} != {self.queue.priority_levels})"
            )
