"""Task- and connection-owning structures: the connection pool and the priority batch queue."""

from dtesn_trio.nurseries.connectors import (
    Connector,
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

__all__ = [
    "ConnectionPool",
    "ConnectionPoolConfig",
    "Connector",
    "PoolStatistics",
    "RedisConnection",
    "RedisConnectionError",
    "RedisConnector",
    "RedisNoScriptError",
    "RedisResponseError",
    "SQLiteConnection",
    "SQLiteConnector",
    "TCPConnector",
    "open_pool",
]
