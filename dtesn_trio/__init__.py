"""dtesn-trio: a Trio-native runtime that serves a batched model, with the deep tree echo
state network (DTESN) as its built-in engine.

Re-exported here, in one library:

- the runtime: ``open_runtime(config, engine=...)`` and its records;
- the engine protocol (``Engine``: ``decode``, ``process_batch``, ``encode``, see
  :mod:`dtesn_trio.engine`), the ``Executor`` that runs an engine in worker threads or
  processes, and the built-in ``DTESNEngine`` with its model;
- the parts, usable alone: admission and its limiters, breaker and rate limiter
  (:mod:`dtesn_trio.limits`), the connection pool and the priority batch queue
  (:mod:`dtesn_trio.nurseries`), the result cache, durable jobs (:mod:`dtesn_trio.jobs`);
- named, versioned models trained through durable jobs: ``ModelRegistry``,
  ``ModelVersion`` (:mod:`dtesn_trio.models`);
- the errors (one hierarchy, ``DTESNError``) and the configs of every section;
- the HTTP layer: ``create_app``, ``serve``.

Elsewhere: the contract kit for engines in :mod:`dtesn_trio.testing`, the soak runner
in :mod:`dtesn_trio.soak`, the seed's names (``ConcurrencyManager``, ``AsyncRequestQueue``,
``AsyncConnectionPool``, ``DTESNProcessor``) in :mod:`dtesn_trio.compat`.
"""

from dtesn_trio._version import __version__
from dtesn_trio.cache import CacheConfig, MemoryCache, ResultCache
from dtesn_trio.config import PostgresSettings, RedisSettings, RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig, DTESNEngine, DTESNModel, DTESNResult, RidgeReadout
from dtesn_trio.engine import Engine, load_engine, resolve_engine
from dtesn_trio.errors import (
    BackendUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    DTESNError,
    EngineError,
    IdempotencyConflict,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)
from dtesn_trio.executor import Executor, ExecutorStatistics, ProcessorConfig
from dtesn_trio.instrument import LoopMonitor, LoopStatistics
from dtesn_trio.jobs import JobRecord, JobsConfig, JobService, JobStatus, open_job_service
from dtesn_trio.limits import (
    AdaptiveLimiter,
    Admission,
    AdmissionConfig,
    AIMDLimit,
    BreakerState,
    CircuitBreaker,
    CircuitBreakerConfig,
    FixedLimit,
    Gradient2Limit,
    RateLimiter,
    RateLimiterConfig,
    SeedScaleLimit,
    VegasLimit,
)
from dtesn_trio.models import ModelRegistry, ModelVersion
from dtesn_trio.nurseries import (
    BatchQueueConfig,
    ConnectionPool,
    ConnectionPoolConfig,
    PriorityBatchQueue,
    RedisConnector,
    SQLiteConnector,
    TCPConnector,
    open_batch_queue,
    open_pool,
)
from dtesn_trio.runtime import ProcessOutcome, Runtime, RuntimeStatistics, open_runtime
from dtesn_trio.server import ServerConfig, create_app, serve

__all__ = [
    "AIMDLimit",
    "AdaptiveLimiter",
    "Admission",
    "AdmissionConfig",
    "BackendUnavailable",
    "BatchQueueConfig",
    "BreakerState",
    "CacheConfig",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpen",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "DTESNConfig",
    "DTESNEngine",
    "DTESNError",
    "DTESNModel",
    "DTESNResult",
    "DeadlineExceeded",
    "Engine",
    "EngineError",
    "Executor",
    "ExecutorStatistics",
    "FixedLimit",
    "Gradient2Limit",
    "IdempotencyConflict",
    "InvalidRequest",
    "JobRecord",
    "JobService",
    "JobStatus",
    "JobsConfig",
    "LoopMonitor",
    "LoopStatistics",
    "MemoryCache",
    "ModelRegistry",
    "ModelVersion",
    "Overloaded",
    "PayloadTooLarge",
    "PostgresSettings",
    "PriorityBatchQueue",
    "ProcessOutcome",
    "ProcessorConfig",
    "RateLimited",
    "RateLimiter",
    "RateLimiterConfig",
    "RedisConnector",
    "RedisSettings",
    "ResultCache",
    "RidgeReadout",
    "Runtime",
    "RuntimeConfig",
    "RuntimeStatistics",
    "SQLiteConnector",
    "SeedScaleLimit",
    "ServerConfig",
    "ShuttingDown",
    "TCPConnector",
    "Unauthorized",
    "VegasLimit",
    "__version__",
    "create_app",
    "load_engine",
    "open_batch_queue",
    "open_job_service",
    "open_pool",
    "open_runtime",
    "resolve_engine",
    "serve",
]
