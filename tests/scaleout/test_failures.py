"""What instances sharing PostgreSQL do when it goes away, and whose jobs they requeue."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio_asyncio

from dtesn_trio.config import PostgresSettings
from dtesn_trio.errors import BackendUnavailable
from dtesn_trio.jobs import JobRecord, JobsConfig, open_job_service, owner_is_dead
from dtesn_trio.jobs.postgres import MIGRATIONS, PostgresJobStore
from dtesn_trio.jobs.service import _new_owner
from dtesn_trio.nurseries import ConnectionPool, ConnectionPoolConfig, open_pool
from dtesn_trio.nurseries.connectors import PostgresConnection, PostgresConnector
from dtesn_trio.runtime import open_runtime
from tests.server.harness import served
from tests.server.runtimes import runtime_config
from tests.servers import PostgresServer

pytestmark = pytest.mark.postgres

POOL = ConnectionPoolConfig(
    min_connections=1,
    max_connections=4,
    max_concurrent_creates=2,
    max_retries=0,
    retry_delay=0.05,
    connection_timeout=2.0,
    acquire_timeout=2.0,
    validation_bypass=0.0,
)


@asynccontextmanager
async def pg_pool(dsn: str) -> AsyncIterator[ConnectionPool[PostgresConnection]]:
    async with trio_asyncio.open_loop(), open_pool(PostgresConnector(dsn), POOL) as pool:
        yield pool


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    """A PostgreSQL of this test only: it is stopped and restarted under the service."""
    server = PostgresServer()
    server.start()
    try:
        yield server
    finally:
        server.close()


@pytest.mark.slow
async def test_postgres_going_away_is_a_503_and_the_claimers_carry_on(
    own_postgres: PostgresServer, caplog: pytest.LogCaptureFixture
) -> None:
    started = trio.Event()
    release = trio.Event()
    runs: list[int] = []

    async def process(payload: dict[str, Any]) -> dict[str, Any]:
        runs.append(payload["n"])
        started.set()
        await release.wait()
        return {"n": payload["n"]}

    config = JobsConfig(backend="postgres", workers=1, lease_seconds=1.0, poll_interval=0.1)
    caplog.set_level(logging.WARNING, logger="dtesn_trio.jobs")
    with trio.fail_after(60):
        async with (
            pg_pool(own_postgres.dsn) as pool,
            open_job_service(PostgresJobStore(pool), process, config) as jobs,
        ):
            job = await jobs.submit({"n": 1})
            await started.wait()
            async with pool.connection() as conn:
                # The test server runs with fsync off: make the claimed row survive the
                # crash below, as a production server's committed rows do.
                await conn.execute("CHECKPOINT")
            await trio.to_thread.run_sync(own_postgres.stop)
            release.set()  # the outcome cannot be recorded: the server is gone
            with pytest.raises(BackendUnavailable):
                await jobs.submit({"n": 2})
            with pytest.raises(BackendUnavailable):
                await jobs.get(job.id)
            await trio.to_thread.run_sync(own_postgres.start)
            # The same claimer (still alive) takes the job again once its lease ran out.
            while (record := await _get_when_up(jobs, job.id)) is None or not record.finished:  # noqa: ASYNC110
                await trio.sleep(0.1)
            stats = jobs.statistics()
    assert record.status == "succeeded"
    assert record.attempts == 2
    assert runs == [1, 1]
    assert (stats.succeeded, stats.failed) == (1, 0)
    assert "could not record its outcome" in caplog.text


async def _get_when_up(jobs: Any, job_id: str) -> JobRecord | None:
    try:
        record: JobRecord | None = await jobs.get(job_id)
    except BackendUnavailable:
        return None  # still recovering
    return record


async def test_a_failed_statement_is_not_backend_unavailable(
    postgres_server: PostgresServer,
) -> None:
    """Only "the server is gone" becomes a 503; a bad statement stays the bug it is."""
    import asyncpg

    with trio.fail_after(30):
        async with pg_pool(postgres_server.dsn) as pool, pool.connection() as conn:
            with pytest.raises(asyncpg.exceptions.UndefinedTableError):
                await conn.fetch("SELECT * FROM no_such_table_here")
            assert not conn.broken
            assert await conn.fetchval("SELECT 1") == 1


async def test_migrations_add_finished_by_and_record_the_winner(
    postgres_server: PostgresServer,
) -> None:
    with trio.fail_after(30):
        async with pg_pool(postgres_server.dsn) as pool:
            async with pool.connection() as conn:
                await conn.execute("DROP TABLE IF EXISTS dtesn_jobs, dtesn_schema, dtesn_meta")
                # A database of the first release: schema version 1.
                await conn.execute("CREATE TABLE dtesn_schema (version INTEGER NOT NULL)")
                await conn.execute(MIGRATIONS[0])
                await conn.execute("INSERT INTO dtesn_schema (version) VALUES (1)")
            store = PostgresJobStore(pool)
            await store.setup()
            assert await store.schema_version() == len(MIGRATIONS) == 4
            now = time.time()
            await store.insert(JobRecord(id="j1", status="queued", payload={}, created_at=now))
            first = await store.claim("slow", now, 1.0)
            assert first is not None
            async with pool.connection() as conn:  # the lease ran out (server time)
                await conn.execute("UPDATE dtesn_jobs SET lease_expires = lease_expires - 2")
            second = await store.claim("fast", now, 1.0)
            assert second is not None
            assert await store.finish("j1", "fast", now + 2.5, result={"ok": True})
            assert not await store.finish("j1", "slow", now + 3.0, result={"ok": False})
            async with pool.connection() as conn:
                row = await conn.fetchrow("SELECT finished_by, result FROM dtesn_jobs")
    assert row[0] == "fast"
    assert row[1] == '{"ok":true}'


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_pid_checks_stay_inside_one_pid_domain() -> None:
    """An owner whose PID is not alive here is dead only if "here" is its PID space:
    same host name but another container (or the owner format of an older release)
    is left to its lease."""
    domain = _new_owner().split(":")[0]
    dead = _dead_pid()
    assert owner_is_dead(f"{domain}:{dead}:t")
    assert not owner_is_dead(f"{socket.gethostname()}:{dead}:t")
    assert not owner_is_dead(f"{socket.gethostname()}/ffffffff/1:{dead}:t")  # other boot, ns


@pytest.mark.slow
async def test_served_instance_with_postgres_down(
    own_postgres: PostgresServer, tmp_path: Path
) -> None:
    """PostgreSQL down: jobs get 503 backend_unavailable, /v1/process and /v1/stats
    still answer; back up: jobs are accepted again."""
    config = runtime_config(
        tmp_path,
        jobs=JobsConfig(backend="postgres", workers=1, poll_interval=0.2),
        postgres=PostgresSettings(dsn=own_postgres.dsn, pool=POOL),
    )
    with trio.fail_after(60):
        async with open_runtime(config) as rt, served(rt) as srv:
            assert (await srv.client.post("/v1/jobs", json={"input": "a"})).status_code == 202
            await trio.to_thread.run_sync(own_postgres.stop)
            down = await srv.client.post("/v1/jobs", json={"input": "b"})
            assert down.status_code == 503
            assert down.json()["error"]["code"] == "backend_unavailable"
            assert (await srv.client.post("/v1/process", json={"input": "c"})).status_code == 200
            stats = await srv.client.get("/v1/stats")
            assert stats.status_code == 200
            assert stats.json()["jobs"]["store"] is None
            assert "postgresql://" in stats.json()["jobs"]["store_error"]
            await trio.to_thread.run_sync(own_postgres.start)
            while (up := await srv.client.post("/v1/jobs", json={"input": "d"})).status_code == 503:  # noqa: ASYNC110
                await trio.sleep(0.1)
            assert up.status_code == 202
