"""Shared fixtures: real servers, started once per session and stopped by PID; the
Hypothesis profiles."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

from tests.servers import PostgresServer, RedisServer

# "ci" (the default): the same examples on every run, so a failure replays as it
# failed.  "explore": fresh random examples each run, failures kept in .hypothesis/ and
# printed with a reproduce blob (HYPOTHESIS_PROFILE=explore scripts/test -k random).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", derandomize=False, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


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
