"""Shared fixtures: real servers, started once per session and stopped by PID."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.servers import PostgresServer, RedisServer


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """A real redis-server on a free port for the whole session."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def redis(redis_server: RedisServer) -> Iterator[RedisServer]:
    """The session's redis-server, running and flushed; restarted if a test killed it."""
    redis_server.start()
    redis_server.command("FLUSHALL")
    yield redis_server
    redis_server.start()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throw-away PostgreSQL cluster on a free port for the whole session."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()
