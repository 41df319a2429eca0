"""Task- and connection-owning structures: the connection pool and the priority batch queue."""

from dtesn_trio.nurseries.adaptive_timeout import AdaptiveTimeout, AdaptiveTimeoutStatistics
from dtesn_trio.nurseries.connectors import (
    Connector,
    PostgresConnection,
    PostgresConnector,
    RedisConnection,
    RedisConnectionError,
    RedisConnector,
    RedisNoScriptError,
    RedisResponseError,
    SQLiteConnection,
    SQLiteConnector,
    TCPConnector,
)
from dtesn_trio.nurseries.pool import ConnectionPool, PoolStatistics, open_pool
from dtesn_trio.nurseries.pool_config import ConnectionPoolConfig
from dtesn_trio.nurseries.queue import (
    AsyncRequestQueue,
    BatchDoneCallback,
    BatchQueueStatistics,
    PriorityBatchQueue,
    ProcessBatch,
    open_batch_queue,
)
from dtesn_trio.nurseries.queue_config import BatchQueueConfig, TimeoutAction

__all__ = [
    "AdaptiveTimeout",
    "AdaptiveTimeoutStatistics",
    "AsyncRequestQueue",
    "BatchDoneCallback",
    "BatchQueueConfig",
    "BatchQueueStatistics",
    "ConnectionPool",
    "ConnectionPoolConfig",
    "Connector",
    "PoolStatistics",
    "PostgresConnection",
    "PostgresConnector",
    "PriorityBatchQueue",
    "ProcessBatch",
    "RedisConnection",
    "RedisConnectionError",
    "RedisConnector",
    "RedisNoScriptError",
    "RedisResponseError",
    "SQLiteConnection",
    "SQLiteConnector",
    "TCPConnector",
    "TimeoutAction",
    "open_batch_queue",
    "open_pool",
]
