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
from dtesn_trio.jobs.store import PurgeCursor
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
        async with trio.open_nursery() as pacer:
            # Before the pool opens: its connections are made in threads too.
            pacer.start_soon(pace, 5.0)
            async with open_store(db) as store:
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
                async with open_job_service(
                    store, echo, config, wall_clock=trio.current_time
                ) as svc:
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


class SlowPurges(SQLiteJobStore):
    """The SQLite store, whose purge statements take the given (virtual) seconds each:
    the sweeper's pacing is measured on Trio's clock around the store's call."""

    def __init__(self, pool: Any, durations: list[float]) -> None:
        super().__init__(pool)
        self.durations = durations
        self.started: list[float] = []

    async def purge(
        self, horizon: float, limit: int, after: PurgeCursor | None = None
    ) -> tuple[int, PurgeCursor | None]:
        self.started.append(trio.current_time())
        await trio.sleep(self.durations.pop(0) if self.durations else 0.0)
        return await super().purge(horizon, limit, after)


async def test_sweep_pauses_to_keep_its_duty_cycle(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    db = tmp_path / "j.db"
    config = JobsConfig(
        workers=0,
        retain_finished=300.0,
        max_finished_rows=None,
        sweep_interval=1e6,
        sweep_batch=2,
        sweep_pause=0.5,
        sweep_duty=0.25,
    )
    # As above, but pauses are computed from the time a statement took: jump only after
    # 0.2 s idle, far longer than a statement of SQLite in its thread, even on a busy
    # machine, so the clock stands still while one runs.
    autojump_clock.autojump_threshold = 0.2
    with trio.fail_after(36_000):
        async with trio.open_nursery() as pacer:
            pacer.start_soon(pace, 5.0)  # before the pool opens (its threads connect)
            async with open_pool(SQLiteConnector(str(db)), POOL) as pool:
                store = SlowPurges(pool, [0.0])  # the start-up sweep's one statement
                await store.setup()
                async with open_job_service(
                    store, echo, config, wall_clock=trio.current_time
                ) as svc:
                    await svc.wait_swept()
                    for i in range(7):
                        add_finished(db, f"old{i}", trio.current_time() - 400.0)
                    # Statements of 1 s, 0.1 s and 2 s, then 0.
                    store.durations[:] = [1.0, 0.1, 2.0, 0.0]
                    store.started.clear()
                    t0 = trio.current_time()
                    report = await svc.sweep()
                    ended = trio.current_time()
            pacer.cancel_scope.cancel()
    # 1 s -> pause 3 s (statements fill a quarter of the time); 0.1 s -> 0.3 s, less
    # than sweep_pause: 0.5 s; 2 s -> 6 s; the fourth deletes the last row and ends.
    assert [round(t - t0, 6) for t in store.started] == [0.0, 4.0, 4.6, 12.6]
    assert round(ended - t0, 6) == 12.6
    assert (report.deleted, report.batches) == (7, 4)
    assert ids(db) == set()


async def test_sqlite_purge_goes_on_from_where_the_last_batch_ended(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    with trio.fail_after(20):
        async with open_store(db) as store:
            for i in range(5):
                add_finished(db, f"f{i}", 100.0)  # one instant: the row key orders them
            add_finished(db, "late", 200.0)
            first = await store.purge(150.0, 2)
            after_first = ids(db)
            add_finished(db, "behind", 50.0)  # older than the cursor: left to the next sweep
            second = await store.purge(150.0, 2, first[1])
            third = await store.purge(150.0, 2, second[1])
            last = await store.purge(150.0, 2, third[1])
            again = await store.purge(150.0, 2)
    assert after_first == {"f2", "f3", "f4", "late"}
    assert first[0] == second[0] == 2
    assert first[1] is not None
    assert second[1] is not None
    assert third[1] is not None
    assert first[1][0] == second[1][0] == 100.0
    assert first[1][1] < second[1][1]
    assert third[0] == 1
    assert last == (0, None)
    assert again[0] == 1  # a purge from the start finds the row behind the cursor
    assert ids(db) == {"late"}


@pytest.mark.postgres
async def test_postgres_purge_goes_on_from_where_the_last_batch_ended(
    fresh: PostgresServer,  # noqa: F811 - the fixture
) -> None:
    with trio.fail_after(60):
        async with pg_pool(fresh) as pool:
            store = PostgresJobStore(pool)
            await store.setup()
            async with pool.connection() as conn:
                indexes = {
                    r[0]
                    for r in await conn.fetch(
                        "SELECT indexname FROM pg_indexes WHERE tablename = 'dtesn_jobs'"
                    )
                }
                for i in range(5):  # one instant: seq orders them
                    await conn.execute(
                        "INSERT INTO dtesn_jobs (id, status, payload, created_at, finished_at)"
                        " VALUES ($1, 'succeeded', '{}', 0, 100)",
                        f"f{i}",
                    )
                await conn.execute(
                    "INSERT INTO dtesn_jobs (id, status, payload, created_at, finished_at)"
                    " VALUES ('late', 'succeeded', '{}', 0, 200)"
                )

                async def left() -> set[str]:
                    return {r[0] for r in await conn.fetch("SELECT id FROM dtesn_jobs")}

                first = await store.purge(150.0, 2)
                after_first = await left()
                await conn.execute(
                    "INSERT INTO dtesn_jobs (id, status, payload, created_at, finished_at)"
                    " VALUES ('behind', 'succeeded', '{}', 0, 50)"
                )
                second = await store.purge(150.0, 2, first[1])
                third = await store.purge(150.0, 2, second[1])
                last = await store.purge(150.0, 2, third[1])
                again = await store.purge(150.0, 2)
                final = await left()
    assert "dtesn_jobs_finished_seq" in indexes
    assert "dtesn_jobs_finished" not in indexes
    assert after_first == {"f2", "f3", "f4", "late"}
    assert first[0] == second[0] == 2
    assert first[1] is not None
    assert second[1] is not None
    assert third[1] is not None
    assert first[1][0] == second[1][0] == 100.0
    assert first[1][1] < second[1][1]
    assert third[0] == 1
    assert last == (0, None)
    assert again[0] == 1  # a purge from the start finds the row behind the cursor
    assert final == {"late"}
