"""dtesn-trio: a Trio-native structured-concurrency runtime for request-processing servers.

The public API, re-exported: the runtime (``open_runtime``), its parts — admission
(``dtesn_trio.limits``), the pool and the priority batch queue (``dtesn_trio.nurseries``),
the DTESN engine (``dtesn_trio.dtesn``), durable jobs (``dtesn_trio.jobs``) — and the
HTTP layer (``create_app``, ``serve``).  The soak runner lives in ``dtesn_trio.soak``.
"""

from dtesn_trio._version import __version__
from dtesn_trio.cache import CacheConfig, MemoryCache, ResultCache
from dtesn_trio.config import PostgresSettings, RedisSettings, RuntimeConfig
from dtesn_trio.dtesn import (
    DTESNConfig,
    DTESNModel,
    DTESNProcessor,
    DTESNResult,
    ProcessorConfig,
    RidgeReadout,
)
from dtesn_trio.errors import (
    BackendUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    DTESNError,
    EngineError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)
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
    ConcurrencyManager,
    FixedLimit,
    Gradient2Limit,
    RateLimiter,
    RateLimiterConfig,
    SeedScaleLimit,
    VegasLimit,
)
from dtesn_trio.nurseries import (
    AsyncRequestQueue,
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
    "AsyncRequestQueue",
    "BackendUnavailable",
    "BatchQueueConfig",
    "BreakerState",
    "CacheConfig",
    "CircuitBreaker",
    "CircuitBreakerConfig",
    "CircuitOpen",
    "ConcurrencyManager",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "DTESNConfig",
    "DTESNError",
    "DTESNModel",
    "DTESNProcessor",
    "DTESNResult",
    "DeadlineExceeded",
    "EngineError",
    "FixedLimit",
    "Gradient2Limit",
    "InvalidRequest",
    "JobRecord",
    "JobService",
    "JobStatus",
    "JobsConfig",
    "LoopMonitor",
    "LoopStatistics",
    "MemoryCache",
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
    "open_batch_queue",
    "open_job_service",
    "open_pool",
    "open_runtime",
    "serve",
]
