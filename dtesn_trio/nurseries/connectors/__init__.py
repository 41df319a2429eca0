"""Connectors for ``open_pool``: Redis (hiredis over trio streams), SQLite, PostgreSQL
(asyncpg through trio-asyncio), plain TCP."""

from dtesn_trio.nurseries.connectors.base import Connector
from dtesn_trio.nurseries.connectors.postgres import PostgresConnection, PostgresConnector
from dtesn_trio.nurseries.connectors.redis import (
    RedisConnection,
    RedisConnectionError,
    RedisConnector,
    RedisNoScriptError,
    RedisResponseError,
)
from dtesn_trio.nurseries.connectors.sqlite import SQLiteConnection, SQLiteConnector
from dtesn_trio.nurseries.connectors.tcp import TCPConnector

__all__ = [
    "Connector",
    "PostgresConnection",
    "PostgresConnector",
    "RedisConnection",
    "RedisConnectionError",
    "RedisConnector",
    "RedisNoScriptError",
    "RedisResponseError",
    "SQLiteConnection",
    "SQLiteConnector",
    "TCPConnector",
]
