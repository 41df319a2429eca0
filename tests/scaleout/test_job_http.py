"""Through HTTP, on both backends: an Idempotency-Key reused with the same payload is
the first job (200 + its Location), with another payload a 409 naming the conflict;
a job purged by the retention policy is 410 Gone, an id never issued 404; a purged
job's key is free again."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path
from typing import Any

import pytest
import trio

from dtesn_trio.config import PostgresSettings
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.runtime import open_runtime
from tests.server.harness import served
from tests.server.runtimes import runtime_config
from tests.servers import PostgresServer, _postgres_bin

EIGHT_DAYS = 8 * 86400  # past the default jobs.retain_finished (7 days)


def psql(pg: PostgresServer, statement: str) -> None:
    subprocess.run(
        [
            _postgres_bin("psql"),
            *("-h", pg.host, "-p", str(pg.port), "-U", pg.user, "-d", pg.database),
            *("-c", statement),
        ],
        env={**os.environ, "PGPASSWORD": pg.password},
        check=True,
        capture_output=True,
    )


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> dict[str, Any]:
    """The runtime sections of one backend, and how to move its finished jobs 8 days
    into the past (each backend's own clock: the row times are the store's)."""
    if request.param == "sqlite":
        db = tmp_path / "jobs.db"

        def age_sqlite() -> None:
            conn = sqlite3.connect(db)
            with conn:
                conn.execute(f"UPDATE dtesn_jobs SET finished_at = finished_at - {EIGHT_DAYS}")
            conn.close()

        return {"jobs": JobsConfig(sqlite_path=str(db), workers=1), "age": age_sqlite}
    pg: PostgresServer = request.getfixturevalue("postgres_server")
    psql(pg, "DROP TABLE IF EXISTS dtesn_jobs, dtesn_schema, dtesn_meta")
    return {
        "jobs": JobsConfig(backend="postgres", workers=1, poll_interval=0.05),
        "postgres": PostgresSettings(dsn=pg.dsn),
        "age": lambda: psql(pg, f"UPDATE dtesn_jobs SET finished_at = finished_at - {EIGHT_DAYS}"),
    }


async def test_idempotency_conflicts_and_expired_jobs(
    tmp_path: Path, backend: dict[str, Any]
) -> None:
    age = backend.pop("age")
    key = {"Idempotency-Key": "order-7"}
    with trio.fail_after(60):
        async with open_runtime(runtime_config(tmp_path, **backend)) as rt, served(rt) as srv:
            post = srv.client.post
            first = await post("/v1/jobs", json={"input": "abc", "priority": 1}, headers=key)
            # The same payload, fields in another order: the same job.
            again = await post("/v1/jobs", json={"priority": 1, "input": "abc"}, headers=key)
            other = await post("/v1/jobs", json={"input": "abd", "priority": 1}, headers=key)
            location = first.headers["location"]
            while (job := await srv.client.get(location)).json()["status"] != "succeeded":  # noqa: ASYNC110
                await trio.sleep(0.02)
            await trio.to_thread.run_sync(age)
            swept = await rt.jobs.sweep()  # type: ignore[union-attr]
            gone = await srv.client.get(location)
            never = await srv.client.get("/v1/jobs/" + "0" * 32)
            reused = await post("/v1/jobs", json={"input": "abd", "priority": 1}, headers=key)
    assert first.status_code == 202
    assert (again.status_code, again.headers["location"]) == (200, location)
    assert again.json()["job_id"] == first.json()["job_id"]
    assert other.status_code == 409
    error = other.json()["error"]
    assert (error["code"], error["field"]) == ("idempotency_conflict", "Idempotency-Key")
    assert first.json()["job_id"] in error["message"]
    assert job.json()["attempts"] == 1
    assert swept.deleted == 1
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "expired"
    assert "jobs.retain_finished" in gone.json()["error"]["message"]
    assert never.status_code == 404
    # The key expired with its job: the same key now makes a new job (at the same id).
    assert reused.status_code == 202
    assert reused.json()["job_id"] == first.json()["job_id"]
