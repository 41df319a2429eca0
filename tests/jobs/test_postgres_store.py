"""The PostgreSQL job store on a real server: migrations, SKIP LOCKED claims, leases."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_asyncio

from dtesn_trio.jobs import JobRecord, JobsConfig, open_job_service
from dtesn_trio.jobs.postgres import MIGRATIONS, PostgresJobStore
from dtesn_trio.nurseries import ConnectionPool, ConnectionPoolConfig, open_pool
from dtesn_trio.nurseries.connectors import PostgresConnection, PostgresConnector
from tests.servers import PostgresServer

pytestmark = pytest.mark.postgres

POOL = ConnectionPoolConfig(min_connections=1, max_connections=8, max_concurrent_creates=4)


@asynccontextmanager
async def pg_pool(server: PostgresServer) -> AsyncIterator[ConnectionPool[PostgresConnection]]:
    async with trio_asyncio.open_loop(), open_pool(PostgresConnector(server.dsn), POOL) as pool:
        yield pool


@pytest.fixture
async def fresh(postgres_server: PostgresServer) -> PostgresServer:
    async with pg_pool(postgres_server) as pool, pool.connection() as conn:
        await conn.execute("DROP TABLE IF EXISTS dtesn_jobs, dtesn_schema, dtesn_meta")
    return postgres_server


def job(i: int) -> JobRecord:
    return JobRecord(id=f"job-{i:04d}", status="queued", payload={"n": i}, created_at=time.time())


async def test_setup_migrates_once_and_is_idempotent(fresh: PostgresServer) -> None:
    with trio.fail_after(30):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            async with trio.open_nursery() as nursery:  # several instances starting together
                for _ in range(3):
                    nursery.start_soon(store.setup)
            await store.setup()
            assert await store.schema_version() == len(MIGRATIONS)
            async with pool.connection() as conn:
                assert await conn.fetchval("SELECT count(*) FROM dtesn_schema") == len(MIGRATIONS)


async def test_concurrent_claimers_take_each_job_exactly_once(fresh: PostgresServer) -> None:
    claimed: list[str] = []
    with trio.fail_after(60):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            await store.setup()
            for i in range(60):
                await store.insert(job(i))

            async def claimer(owner: str) -> None:
                while (record := await store.claim(owner, time.time(), 30.0)) is not None:
                    claimed.append(record.id)
                    assert await store.finish(record.id, owner, time.time(), result={"ok": 1})
                    assert not await store.finish(record.id, owner, time.time(), result={})

            async with trio.open_nursery() as nursery:
                for k in range(6):
                    nursery.start_soon(claimer, f"owner-{k}")
            counts = await store.counts()
    assert sorted(claimed) == [f"job-{i:04d}" for i in range(60)]
    assert counts == {"queued": 0, "running": 0, "succeeded": 60, "failed": 0}


async def test_leases_run_on_the_server_clock_and_old_owner_cannot_finish(
    fresh: PostgresServer,
) -> None:
    with trio.fail_after(30):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            await store.setup()
            await store.insert(job(1))
            now = time.time()
            first = await store.claim("dead-owner", now, 5.0)
            assert first is not None
            assert first.attempts == 1
            assert first.lease_expires is not None
            assert first.started_at is not None
            assert first.lease_expires - first.started_at == pytest.approx(5.0)
            # An instance whose clock is an hour ahead does not see the lease run out:
            # the host time it passes is not what PostgreSQL compares.
            assert await store.claim("other", now + 3600.0, 5.0) is None
            assert await store.renew(first.id, "dead-owner", now - 3600.0, 5.0)
            async with pool.connection() as conn:  # 10 s of the server's time pass
                await conn.execute("UPDATE dtesn_jobs SET lease_expires = lease_expires - 10")
            second = await store.claim("other", now - 3600.0, 5.0)
            assert second is not None
            assert second.id == first.id
            assert second.attempts == 2
            assert not await store.renew(first.id, "dead-owner", now, 100.0)
            assert not await store.finish(first.id, "dead-owner", now, result={})
            assert await store.finish(first.id, "other", now - 3600.0, error={"code": "x"})
            record = await store.get(first.id)
            async with pool.connection() as conn:
                server_now = await conn.fetchval("SELECT extract(epoch from now())::float8")
    assert record is not None
    assert record.status == "failed"
    assert record.error == {"code": "x"}
    assert record.finished_at is not None
    assert abs(record.finished_at - server_now) < 60  # the server's time, not now - 3600


async def test_recover_and_release(fresh: PostgresServer) -> None:
    with trio.fail_after(30):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            await store.setup()
            for i in range(3):
                await store.insert(job(i))
            now = time.time()
            a = await store.claim("gone", now, 60.0)
            b = await store.claim("alive", now, 60.0)
            assert a is not None
            assert b is not None
            assert await store.recover(lambda owner: owner == "gone") == 1
            assert await store.release(b.id, "alive", now, 10.0)
            assert await store.next_delay(now + 3600.0) == 0.0  # a: runnable at once
            counts = await store.counts()
    assert counts["queued"] == 3


async def test_job_service_on_postgres_completes_every_job(fresh: PostgresServer) -> None:
    seen: list[int] = []

    async def process(payload: dict[str, Any]) -> dict[str, Any]:
        await trio.sleep(0.001)
        seen.append(payload["n"])
        return {"double": payload["n"] * 2}

    config = JobsConfig(backend="postgres", workers=4, poll_interval=0.05)
    with trio.fail_after(60):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            async with open_job_service(store, process, config) as jobs:
                ids = [(await jobs.submit({"n": i})).id for i in range(100)]
                while (await store.counts())["succeeded"] < 100:  # noqa: ASYNC110 - the database is the state
                    await trio.sleep(0.05)
            record = await store.get(ids[7])
    assert sorted(seen) == list(range(100))
    assert record is not None
    assert record.result == {"double": 14}
