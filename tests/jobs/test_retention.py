"""Retention: the sweeper deletes finished jobs past ``jobs.retain_finished`` and beyond
``jobs.max_finished_rows``, in batches, on a fixed schedule; queued and running jobs are
never touched.  SQLite runs on Trio's virtual clock (its rows are timed by the
instance's ``wall_clock``); PostgreSQL times rows by its server, so its tests move rows
into the past instead."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from dtesn_trio.jobs import JobRecord, JobsConfig, SQLiteJobStore, open_job_service
from dtesn_trio.jobs.postgres import PostgresJobStore
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool
from tests.jobs.test_postgres_store import fresh, pg_pool  # noqa: F401 - the fixture
from tests.servers import PostgresServer

POOL = ConnectionPoolConfig(min_connections=1, max_connections=4, max_concurrent_creates=2)


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return payload


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[SQLiteJobStore]:
    async with open_pool(SQLiteConnector(str(path)), POOL) as pool:
        store = SQLiteJobStore(pool)
        await store.setup()
        yield store


def sql(path: Path, statement: str, params: Any = ()) -> list[Any]:
    """A plain, synchronous sqlite3 connection of its own: no thread, no checkpoint --
    so the virtual clock cannot move while it runs."""
    db = sqlite3.connect(path)
    try:
        with db:
            return db.execute(statement, params).fetchall()
    finally:
        db.close()


def add_finished(path: Path, job_id: str, finished_at: float) -> None:
    sql(
        path,
        "INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at, finished_at)"
        " VALUES (?, 'succeeded', '{}', 1, 0, ?)",
        (job_id, finished_at),
    )


def ids(path: Path) -> set[str]:
    return {row[0] for row in sql(path, "SELECT id FROM dtesn_jobs")}


async def pace(period: float) -> None:
    """Keep a deadline at most ``period`` ahead.  While SQLite works in a thread every
    task is blocked, and an autojump clock leaps to the next deadline; without this one
    that could be ``fail_after``'s."""
    while True:  # noqa: ASYNC110 - a deadline is the point, not a wait for a state
        await trio.sleep(period)


async def test_sqlite_sweeper_deletes_what_ran_out_on_its_schedule(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    db = tmp_path / "j.db"
    config = JobsConfig(
        workers=0,
        retain_finished=300.0,
        max_finished_rows=None,
        sweep_interval=60.0,
        sweep_batch=2,
        sweep_pause=0.5,
    )
    never = 1e12  # finished "in the future" until the first sweep has run
    # Jump only once idle for 20 ms of real time: a SQLite statement in its thread takes
    # far less, so the clock stands still while one runs (and ``pace`` bounds the jump
    # if the machine stalls one that long).
    autojump_clock.autojump_threshold = 0.02
    with trio.fail_after(36_000):
        async with trio.open_nursery() as pacer, open_store(db) as store:
            pacer.start_soon(pace, 5.0)
            for name in ("old1", "old2", "old3", "new1", "new2"):
                add_finished(db, name, never)
            sql(
                db,
                "INSERT INTO dtesn_jobs (id, status, payload, created_at) VALUES"
                " ('queued', 'queued', '{}', -1e9)",
            )
            sql(
                db,
                "INSERT INTO dtesn_jobs (id, status, payload, created_at, started_at,"
                " lease_owner, lease_expires) VALUES"
                " ('running', 'running', '{}', -1e9, -1e9, 'elsewhere:1:x', 1e12)",
            )
            async with open_job_service(store, echo, config, wall_clock=trio.current_time) as svc:
                first = await svc.wait_swept()
                assert (first.deleted, first.batches) == (0, 1)
                s0 = first.started_at
                # Rows timed by this instance's clock (Trio's here), relative to s0.
                for name, age in {"old": 250.0, "new": 100.0}.items():
                    sql(
                        db,
                        "UPDATE dtesn_jobs SET finished_at = ? WHERE id LIKE ?",
                        (s0 - age, name + "%"),
                    )
                finished = {
                    "old1": s0 - 250,
                    "old2": s0 - 250,
                    "old3": s0 - 250,
                    "new1": s0 - 100,
                    "new2": s0 - 100,
                }
                reports = []
                while finished.keys() & ids(db):
                    report = await svc.wait_swept()
                    due = {k for k, t in finished.items() if t <= report.started_at - 300.0}
                    assert ids(db) == {"queued", "running"} | (finished.keys() - due)
                    reports.append(report)
                stats = svc.statistics()
            pacer.cancel_scope.cancel()
    # A fixed schedule, and each sweep deletes exactly what had run out when it began:
    # the old rows at s0 + 60 (age 310), the newer ones at s0 + 240 (age 340).
    assert [round(r.started_at - s0, 6) for r in reports] == [60.0, 120.0, 180.0, 240.0]
    assert [r.deleted for r in reports] == [3, 0, 0, 2]
    assert [r.batches for r in reports] == [2, 1, 1, 2]  # batches of 2: 2+1, -, -, 2+0
    assert (stats.sweeps, stats.purged) == (5, 5)


async def test_sqlite_keeps_at_most_max_finished_rows_the_newest(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    config = JobsConfig(
        workers=0, retain_finished=None, max_finished_rows=3, sweep_batch=2, sweep_pause=0.0
    )
    with trio.fail_after(20):
        async with open_store(db) as store:
            for i in range(7):
                add_finished(db, f"f{i}", 1000.0 + i)
            sql(
                db,
                "INSERT INTO dtesn_jobs (id, status, payload, created_at) VALUES"
                " ('queued', 'queued', '{}', 0)",
            )
            async with open_job_service(store, echo, config) as svc:
                report = await svc.wait_swept()
                again = await svc.sweep()
    assert (report.deleted, report.batches) == (4, 3)  # 2 + 2 + 0
    assert ids(db) == {"queued", "f4", "f5", "f6"}
    assert again.deleted == 0


@pytest.mark.postgres
async def test_postgres_sweep_by_age_and_count_skipping_locked_rows(
    fresh: PostgresServer,  # noqa: F811 - the fixture
) -> None:
    config = JobsConfig(
        backend="postgres",
        workers=0,
        retain_finished=3600.0,
        max_finished_rows=4,
        sweep_interval=3600.0,
        sweep_batch=2,
        sweep_pause=0.0,
    )
    with trio.fail_after(60):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            async with open_job_service(store, echo, config) as svc:
                assert (await svc.wait_swept()).deleted == 0  # the start-up sweep
                made = [(await svc.submit({"n": n})).id for n in range(9)]
                while (claimed := await store.claim("me", 0.0, 60.0)) is not None:
                    assert await store.finish(claimed.id, "me", 0.0, result={})
                queued_job = JobRecord(id="q" * 32, status="queued", payload={}, created_at=0)
                await store.insert(queued_job)  # never purged
                async with pool.connection() as conn:
                    # Three jobs finished two hours ago (by the server's clock).
                    await conn.execute(
                        "UPDATE dtesn_jobs SET finished_at = finished_at - 7200"
                        " WHERE id = ANY($1::text[])",
                        made[:3],
                    )
                async with pool.connection() as locker:
                    # Another transaction holds one of them: the sweep skips it, and
                    # does not wait for it.
                    await locker.execute("BEGIN")
                    await locker.execute(
                        "SELECT 1 FROM dtesn_jobs WHERE id = $1 FOR UPDATE", made[0]
                    )
                    with trio.fail_after(10):
                        skipping = await svc.sweep()
                    await locker.execute("ROLLBACK")
                left_locked = {r.id for r in [await svc.get(i) for i in made] if r is not None}
                final = await svc.sweep()
                left = {r.id for r in [await svc.get(i) for i in made] if r is not None}
                queued = await svc.get("q" * 32)
    # Age: made[0..2]; count: 6 fresh finished, keep the newest 4 -> made[3], made[4].
    assert skipping.deleted == 4  # made[0] was locked
    assert left_locked == {made[0], *made[5:]}
    assert final.deleted == 1
    assert left == set(made[5:])
    assert queued is not None
