"""Instances whose clocks disagree by a minute share PostgreSQL's leases correctly.

Each instance gets its own time source (``wall_clock``: +30 s and -30 s from the host),
its own pool and its own store, as separate processes would; PostgreSQL's ``now()`` is
the only clock the leases use.  Real time is unavoidable here: the leases are timed by
the PostgreSQL server's clock, which a test cannot fake.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio_asyncio

from dtesn_trio.jobs import JobsConfig, JobService, open_job_service
from dtesn_trio.jobs.postgres import PostgresJobStore
from dtesn_trio.nurseries import ConnectionPool, ConnectionPoolConfig, open_pool
from dtesn_trio.nurseries.connectors import PostgresConnection, PostgresConnector
from tests.servers import PostgresServer

pytestmark = pytest.mark.postgres

POOL = ConnectionPoolConfig(min_connections=1, max_connections=6, max_concurrent_creates=2)


def skewed(offset: float) -> Callable[[], float]:
    """The host's wall clock, ``offset`` seconds off."""
    return lambda: time.time() + offset


@pytest.fixture
async def dsn(postgres_server: PostgresServer) -> str:
    async with (
        trio_asyncio.open_loop(),
        open_pool(PostgresConnector(postgres_server.dsn), POOL) as pool,
        pool.connection() as conn,
    ):
        await conn.execute("DROP TABLE IF EXISTS dtesn_jobs, dtesn_schema, dtesn_meta")
    return postgres_server.dsn


@asynccontextmanager
async def instance(
    dsn: str, process: Any, config: JobsConfig, offset: float
) -> AsyncIterator[tuple[JobService, ConnectionPool[PostgresConnection]]]:
    """One instance: its own pool, store and skewed clock (inside the test's loop)."""
    async with open_pool(PostgresConnector(dsn), POOL) as pool:
        store = PostgresJobStore(pool)
        async with open_job_service(store, process, config, wall_clock=skewed(offset)) as svc:
            yield svc, pool


async def test_skewed_instances_run_1000_jobs_exactly_once(dsn: str) -> None:
    runs: Counter[int] = Counter()

    async def work(payload: dict[str, Any]) -> dict[str, Any]:
        runs[payload["n"]] += 1
        await trio.sleep(0.005)  # jobs overlap: a clock that is ahead would steal them
        return {"n": payload["n"]}

    # Leases as long as the skew: judged by host clocks, the instance 30 s ahead would
    # see every lease of the one behind as run out the moment it is taken.
    config = JobsConfig(backend="postgres", workers=4, lease_seconds=30.0, poll_interval=0.05)
    with trio.fail_after(120):
        async with (
            trio_asyncio.open_loop(),
            instance(dsn, work, config, +30.0) as (ahead, pool),
            instance(dsn, work, config, -30.0) as (behind, _),
        ):
            for n in range(1000):
                await (ahead if n % 2 else behind).submit({"n": n})
            while (await ahead.counts())["succeeded"] < 1000:  # noqa: ASYNC110 - the database is the state
                await trio.sleep(0.05)
            async with pool.connection() as conn:
                rows = await conn.fetch(
                    "SELECT finished_by, count(*), max(attempts) FROM dtesn_jobs GROUP BY 1"
                )
            stats = ahead.statistics(), behind.statistics()
    assert runs == Counter(range(1000))  # each job ran exactly once
    by_owner = {owner: (count, attempts) for owner, count, attempts in rows}
    assert set(by_owner) == {ahead.owner, behind.owner}  # both instances worked
    assert sum(count for count, _ in by_owner.values()) == 1000
    assert all(attempts == 1 for _, attempts in by_owner.values())
    assert [s.lost_leases for s in stats] == [0, 0]


async def test_a_killed_instance_s_job_is_taken_over_after_its_lease(dsn: str) -> None:
    lease, poll = 2.0, 0.1
    started = trio.Event()
    runs: list[str] = []

    async def stuck(payload: dict[str, Any]) -> dict[str, Any]:
        runs.append("killed")
        started.set()
        await trio.sleep_forever()
        raise AssertionError

    async def finish(payload: dict[str, Any]) -> dict[str, Any]:
        runs.append("survivor")
        await trio.lowlevel.checkpoint()
        return {"done": True}

    config = JobsConfig(backend="postgres", workers=1, lease_seconds=lease, poll_interval=poll)
    kill = trio.CancelScope()

    async def run_doomed(*, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        with kill:  # cancelled: its pool and claimers stop at once, nothing released
            async with instance(dsn, stuck, config, +30.0) as (doomed, _):
                task_status.started(doomed)
                await trio.sleep_forever()

    with trio.fail_after(60):
        async with (
            trio_asyncio.open_loop(),
            open_pool(PostgresConnector(dsn), POOL) as pool,
            trio.open_nursery() as nursery,
        ):
            store = PostgresJobStore(pool)
            # The instance whose clock is ahead takes the job.
            doomed = await nursery.start(run_doomed)
            job = await doomed.submit({"n": 1})
            await started.wait()
            # The survivor's clock is 30 s behind: judged by it, the lease would run
            # out a minute late.  It starts while the other lives (so start-up
            # recovery leaves the job alone): only the lease can hand the job over.
            async with instance(dsn, finish, config, -30.0) as (survivor, _):
                assert survivor.statistics().recovered == 0
                kill.cancel()
                await trio.testing.wait_all_tasks_blocked()
                left = await store.get(job.id)
                assert left is not None
                assert (left.status, left.lease_owner) == ("running", doomed.owner)
                assert left.lease_expires is not None
                while not (done := await store.get(job.id)) or not done.finished:  # noqa: ASYNC110
                    await trio.sleep(0.05)
    assert runs == ["killed", "survivor"]
    assert done.status == "succeeded"
    assert done.attempts == 2
    assert done.started_at is not None
    # Both times are the server's: taken over no sooner than the lease ran out, and
    # within a poll of it (plus a generous allowance for a busy machine -- far below
    # the 60 s the skewed clocks would have cost).
    assert left.lease_expires <= done.started_at <= left.lease_expires + poll + 10.0
    assert survivor.statistics().succeeded == 1
