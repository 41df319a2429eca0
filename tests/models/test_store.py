"""The model store on real SQLite and real PostgreSQL: numbering under concurrent
writers, immutability, idempotent fits, atomic activation, ordered chunks; and a fit
through the HTTP API on a PostgreSQL-backed runtime."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dtesn_trio.config import PostgresSettings
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.models import ModelStore, postgres_model_store, sqlite_model_store
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool
from dtesn_trio.nurseries.connectors import PostgresConnector
from tests.models.test_http import fit
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime
from tests.servers import PostgresServer

POOL = ConnectionPoolConfig(min_connections=1, max_connections=4, max_concurrent_creates=2)


@asynccontextmanager
async def sqlite_store(path: Path) -> AsyncIterator[ModelStore]:
    async with open_pool(SQLiteConnector(str(path / "m.db")), POOL) as pool:
        store = sqlite_model_store(pool)
        await store.setup()
        yield store


@asynccontextmanager
async def pg_store(server: PostgresServer) -> AsyncIterator[ModelStore]:
    import trio_asyncio

    async with trio_asyncio.open_loop(), open_pool(PostgresConnector(server.dsn), POOL) as pool:
        async with pool.connection() as conn:
            await conn.execute(
                "DROP TABLE IF EXISTS dtesn_models, dtesn_model_active, dtesn_fit_uploads,"
                " dtesn_search_trials"
            )
        store = postgres_model_store(pool)
        await store.setup()
        await store.setup()  # idempotent
        yield store


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ModelStore]:
    if request.param == "sqlite":
        async with sqlite_store(tmp_path) as s:
            yield s
    else:
        async with pg_store(request.getfixturevalue("postgres_server")) as s:
            yield s


def version_args(i: int) -> dict[str, Any]:
    return {
        "config": {"seed": i},
        "readout": bytes([i]) * 10,
        "scores": {"train_nrmse": i / 10},
        "fit": {"alpha": 1e-6},
        "created_at": 1000.0 + i,
        "fit_id": f"fit-{i}",
    }


async def test_concurrent_writers_get_distinct_numbers_and_the_first_is_active(
    store: ModelStore,
) -> None:
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for i in range(8):
                nursery.start_soon(lambda i=i: store.add_version("m", **version_args(i)))
        versions = await store.versions("m")
        assert [v.version for v in versions] == list(range(1, 9))
        assert await store.active("m") == 1
        assert await store.names() == [("m", 8, 1)]


async def test_versions_are_immutable_and_a_fit_stores_one(store: ModelStore) -> None:
    with trio.fail_after(30):
        first = await store.add_version("m", **version_args(1))
        again = await store.add_version("m", **{**version_args(1), "readout": b"other"})
        assert again == first  # the same fit_id: the version it made, unchanged
        second = await store.add_version("m", **version_args(2))
        assert await store.activate("m", 2)
        stored = await store.version("m", 1)
        assert stored is not None
        assert stored == (first, bytes([1]) * 10)
        assert second.version == 2
        assert await store.active("m") == 2
        assert not await store.activate("m", 3)
        assert not await store.activate("other", 1)
        assert await store.active("m") == 2
        assert await store.by_fit("fit-2") == second


async def test_chunks_apply_in_order(store: ModelStore) -> None:
    with trio.fail_after(30):
        await store.create_upload("u1", "m", {"alpha": 1.0}, 5.0)
        assert await store.save_upload("u1", 1, b"after one")
        assert not await store.save_upload("u1", 1, b"a second writer of chunk one")
        assert await store.save_upload("u1", 2, b"after two")
        assert await store.upload("u1") == ("m", {"alpha": 1.0}, b"after two", 2)
        await store.delete_upload("u1")
        assert await store.upload("u1") is None


@pytest.mark.postgres
async def test_fit_over_http_on_postgres(postgres_server: PostgresServer, tmp_path: Path) -> None:
    async with pg_store(postgres_server):
        pass  # fresh tables
    jobs = JobsConfig(backend="postgres", workers=1, poll_interval=0.05)
    pg = PostgresSettings(dsn=postgres_server.dsn)
    with trio.fail_after(90):
        async with open_test_runtime(tmp_path, jobs=jobs, postgres=pg) as rt, served(rt) as s:
            result = await fit(s.client, "pg")
            second = await fit(s.client, "pg")
            r = await s.client.post("/v1/models/pg/versions/2/activate")
            assert r.status_code == 200
            described = (await s.client.get("/v1/models/pg")).json()
            r = await s.client.post("/v1/process", json={"input": [[0.1]] * 20, "model": "pg"})
    assert (result["version"], second["version"]) == (1, 2)
    assert described["active_version"] == 2
    assert r.status_code == 200
    assert len(r.json()["result"]["prediction"]) == 20
