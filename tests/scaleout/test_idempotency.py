"""Idempotent job submission: a retried POST /v1/jobs with the same Idempotency-Key is
one job, on whichever instance the retry lands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.lowlevel

from dtesn_trio.errors import IdempotencyConflict
from dtesn_trio.jobs import JobRecord, JobsConfig, SQLiteJobStore, open_job_service
from dtesn_trio.jobs.postgres import PostgresJobStore
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool
from dtesn_trio.runtime import open_runtime
from tests.scaleout.test_failures import pg_pool
from tests.server.harness import served
from tests.server.runtimes import runtime_config
from tests.servers import PostgresServer


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return payload


def record(job_id: str, n: int) -> JobRecord:
    return JobRecord(id=job_id, status="queued", payload={"n": n}, created_at=time.time())


async def test_sqlite_insert_of_an_existing_id_writes_nothing(tmp_path: Path) -> None:
    pool_config = ConnectionPoolConfig(min_connections=1, max_connections=2)
    with trio.fail_after(10):
        async with open_pool(SQLiteConnector(str(tmp_path / "j.db")), pool_config) as pool:
            store = SQLiteJobStore(pool)
            await store.setup()
            assert (await store.insert(record("a" * 32, 1)))[1]
            again, created = await store.insert(record("a" * 32, 2))
            assert not created
            assert again.payload == {"n": 1}
            stored = await store.get("a" * 32)
            assert (await store.counts())["queued"] == 1
    assert stored is not None
    assert stored.payload == {"n": 1}


@pytest.mark.postgres
async def test_postgres_same_key_on_two_services_is_one_job(
    postgres_server: PostgresServer,
) -> None:
    config = JobsConfig(backend="postgres", workers=1, poll_interval=0.05)
    with trio.fail_after(30):
        async with pg_pool(postgres_server.dsn) as pool:
            store = PostgresJobStore(pool)
            await store.setup()
            async with pool.connection() as conn:
                await conn.execute("DELETE FROM dtesn_jobs")
            async with (
                open_job_service(store, echo, config) as a,
                open_job_service(store, echo, config) as b,
            ):
                first = await a.submit({"n": 1}, idempotency_key="order-42")
                again = await b.submit({"n": 1}, idempotency_key="order-42")
                with pytest.raises(IdempotencyConflict, match=first.id) as conflict:
                    await b.submit({"n": 2}, idempotency_key="order-42")
                other = await b.submit({"n": 3}, idempotency_key="order-43")
                while not (done := await a.get(first.id)) or not done.finished:  # noqa: ASYNC110
                    await trio.sleep(0.02)
                late = await a.submit({"n": 1}, idempotency_key="order-42")
                stats = (a.statistics().submitted, b.statistics().submitted)
                counts = await store.counts()
    assert again.id == first.id != other.id
    assert conflict.value.field == "Idempotency-Key"
    assert done.result == {"n": 1}
    assert (late.id, late.status, late.result) == (first.id, "succeeded", {"n": 1})
    assert stats == (1, 1)
    assert sum(counts.values()) == 2


async def test_http_idempotency_key(tmp_path: Path) -> None:
    with trio.fail_after(30):
        async with open_runtime(runtime_config(tmp_path)) as rt, served(rt) as srv:
            headers = {"Idempotency-Key": "3f1c2a9e-retry-me"}
            one = await srv.client.post("/v1/jobs", json={"input": "a"}, headers=headers)
            two = await srv.client.post("/v1/jobs", json={"input": "a"}, headers=headers)
            bad = await srv.client.post(
                "/v1/jobs", json={"input": "a"}, headers={"Idempotency-Key": "x" * 256}
            )
            plain = await srv.client.post("/v1/jobs", json={"input": "a"})
    assert (one.status_code, two.status_code, plain.status_code) == (202, 200, 202)
    assert one.headers["location"] == two.headers["location"]
    assert one.json()["job_id"] == two.json()["job_id"] != plain.json()["job_id"]
    assert bad.status_code == 422
    assert bad.json()["error"]["field"] == "Idempotency-Key"
