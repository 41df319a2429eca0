"""The durable job service over a real SQLite file through the real connection pool."""

from __future__ import annotations

import logging
import os
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio

from dtesn_trio.errors import InvalidRequest, Overloaded, ShuttingDown
from dtesn_trio.jobs import JobsConfig, SQLiteJobStore, open_job_service, owner_is_dead
from dtesn_trio.jobs.service import _new_owner
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool
from tests.polling import wait_until

POOL = ConnectionPoolConfig(min_connections=1, max_connections=4, max_concurrent_creates=2)


@asynccontextmanager
async def open_store(path: Path) -> AsyncIterator[SQLiteJobStore]:
    async with open_pool(SQLiteConnector(str(path)), POOL) as pool:
        store = SQLiteJobStore(pool)
        await store.setup()
        yield store


def rows(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[Any]:
    """Read the database with a plain sqlite3 connection of its own (another 'process')."""
    db = sqlite3.connect(path)
    try:
        return db.execute(sql, params).fetchall()
    finally:
        db.close()


async def echo(payload: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return {"echo": payload["n"]}


def claimers() -> int:
    """Claimer tasks alive now, in every service of this run."""
    root = trio.lowlevel.current_root_task()
    assert root is not None
    count, stack = 0, [root]
    while stack:
        task = stack.pop()
        count += task.name.endswith("JobService._claimer")
        for nursery in task.child_nurseries:
            stack.extend(nursery.child_tasks)
    return count


async def wait_finished(svc: Any, ids: list[str]) -> list[Any]:
    while True:
        records = [await svc.get(i) for i in ids]
        if all(r.finished for r in records):
            return records
        await trio.sleep(0.01)


async def test_submit_commits_before_returning(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    with trio.fail_after(10):
        async with (
            open_store(db) as store,
            open_job_service(store, echo, JobsConfig(workers=0)) as svc,
        ):
            record = await svc.submit({"n": 1})
            # Seen at once by an unrelated connection: the INSERT was committed.
            assert rows(db, "SELECT id, status FROM dtesn_jobs") == [(record.id, "queued")]
            again = await svc.get(record.id)
            assert again is not None
            assert again.payload == {"n": 1}
            assert again.status == "queued"
            assert await svc.get("0" * 32) is None


async def test_submit_wakes_a_claimer_without_polling(tmp_path: Path) -> None:
    # A poll interval of an hour: only the wake-up can get the job run in time.
    config = JobsConfig(workers=2, poll_interval=3600.0)
    with trio.fail_after(10):
        async with (
            open_store(tmp_path / "j.db") as store,
            open_job_service(store, echo, config) as svc,
        ):
            await trio.testing.wait_all_tasks_blocked()
            ids = [(await svc.submit({"n": n})).id for n in range(20)]
            records = await wait_finished(svc, ids)
    assert [r.status for r in records] == ["succeeded"] * 20
    assert [r.result for r in records] == [{"echo": n} for n in range(20)]
    assert all(r.attempts == 1 and r.started_at and r.finished_at for r in records)
    stats = svc.statistics()
    assert (stats.submitted, stats.claimed, stats.succeeded, stats.failed) == (20, 20, 20, 0)


async def test_errors_fail_the_job_with_their_body(tmp_path: Path, caplog: Any) -> None:
    async def process(payload: dict[str, Any]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        if payload["kind"] == "invalid":
            raise InvalidRequest("input is too long", field="input")
        raise RuntimeError("secret internals")

    caplog.set_level(logging.ERROR, "dtesn_trio.jobs")
    with trio.fail_after(10):
        async with (
            open_store(tmp_path / "j.db") as store,
            open_job_service(store, process, JobsConfig(workers=1)) as svc,
        ):
            a = await svc.submit({"kind": "invalid"})
            b = await svc.submit({"kind": "bug"})
            ra, rb = await wait_finished(svc, [a.id, b.id])
    assert ra.status == "failed"
    assert ra.error == {"code": "invalid_request", "message": "input is too long", "field": "input"}
    assert rb.status == "failed"
    assert rb.error == {"code": "internal_error", "message": "internal error"}
    assert "secret internals" not in str(rb.error)
    assert "secret internals" in caplog.text  # logged with its traceback


async def test_transient_error_retries_without_counting_the_attempt(tmp_path: Path) -> None:
    calls = 0

    async def process(payload: dict[str, Any]) -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        if calls < 3:
            raise Overloaded("queue full", retry_after=0.05)
        return {"ok": True}

    with trio.fail_after(10):
        async with (
            open_store(tmp_path / "j.db") as store,
            open_job_service(store, process, JobsConfig(workers=1, max_attempts=1)) as svc,
        ):
            job = await svc.submit({})
            (record,) = await wait_finished(svc, [job.id])
    assert record.status == "succeeded"
    assert record.attempts == 1  # two refusals did not use up max_attempts=1
    assert calls == 3
    assert svc.statistics().retried == 2


async def test_shutting_down_puts_the_job_back_and_stops_the_claimer(tmp_path: Path) -> None:
    db = tmp_path / "j.db"

    refused = trio.Event()

    async def refuse(payload: dict[str, Any]) -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        refused.set()
        raise ShuttingDown("stopping")

    with trio.fail_after(10):
        async with (
            open_store(db) as store,
            open_job_service(store, refuse, JobsConfig(workers=1)) as svc,
        ):
            job = await svc.submit({})
            await refused.wait()
            await trio.testing.wait_all_tasks_blocked()
            assert svc.statistics().retried == 1
            # the claimer returns once the store has the job back (a thread's write)
            await wait_until(lambda: claimers() == 0)
            # so a second job stays queued: nothing is left to claim it
            second = await svc.submit({})
            await trio.testing.wait_all_tasks_blocked()
            assert (await svc.get(second.id)).status == "queued"  # type: ignore[union-attr]
            assert claimers() == 0
    assert rows(
        db, "SELECT id, status, attempts, lease_owner FROM dtesn_jobs WHERE id = ?", (job.id,)
    ) == [(job.id, "queued", 0, None)]


async def test_closing_the_service_releases_its_running_jobs(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    started: list[int] = []

    two_started = trio.Event()

    async def stuck(payload: dict[str, Any]) -> dict[str, Any]:
        started.append(payload["n"])
        if len(started) == 2:
            two_started.set()
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(10):
        async with open_store(db) as store:
            with trio.CancelScope() as scope:
                async with open_job_service(store, stuck, JobsConfig(workers=2)) as svc:
                    for n in range(5):
                        await svc.submit({"n": n})
                    await two_started.wait()
                    scope.cancel()
            # The pool is still up: the two running jobs were given back at once, and
            # their attempts do not count.
            assert await store.counts() == {"queued": 5, "running": 0, "succeeded": 0, "failed": 0}
    assert rows(db, "SELECT MAX(attempts), COUNT(lease_owner) FROM dtesn_jobs") == [(0, 0)]


async def test_hard_stop_with_100_jobs_then_restart_runs_each_once(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    started: list[int] = []

    two_started = trio.Event()

    async def stuck(payload: dict[str, Any]) -> dict[str, Any]:
        started.append(payload["n"])
        if len(started) == 2:
            two_started.set()
        await trio.sleep_forever()
        raise AssertionError

    with trio.fail_after(20):
        # Cancel the whole tree, pool included: nothing can be released, the two
        # running rows stay leased by an owner that no longer exists.
        with trio.CancelScope() as scope:
            async with (
                open_store(db) as store,
                open_job_service(store, stuck, JobsConfig(workers=2)) as svc,
            ):
                ids = [(await svc.submit({"n": n})).id for n in range(100)]
                await two_started.wait()
                scope.cancel()
        leased = rows(db, "SELECT COUNT(*) FROM dtesn_jobs WHERE status = 'running'")[0][0]
        assert leased == 2
        done: Counter[int] = Counter()

        async def count(payload: dict[str, Any]) -> dict[str, Any]:
            done[payload["n"]] += 1
            await trio.lowlevel.checkpoint()
            return {"n": payload["n"]}

        async with (
            open_store(db) as store,
            open_job_service(store, count, JobsConfig(workers=2)) as svc,
        ):
            assert svc.statistics().recovered == leased
            records = await wait_finished(svc, ids)
    assert all(r.status == "succeeded" for r in records)
    assert done == Counter(range(100))  # each exactly once


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


async def test_start_up_requeues_jobs_of_dead_owners_only(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    host = _new_owner().split(":")[0]
    dead_process = f"{host}:{_dead_pid()}:abc"
    closed_service_here = f"{host}:{os.getpid()}:closed"
    other_host_fresh = "elsewhere.example:1:x"
    other_host_expired = "elsewhere.example:2:y"
    assert owner_is_dead(dead_process)
    assert owner_is_dead(closed_service_here)
    assert not owner_is_dead(other_host_fresh)
    now = time.time()
    leases = {
        "a" * 32: (dead_process, now + 3600),
        "b" * 32: (closed_service_here, now + 3600),
        "c" * 32: (other_host_fresh, now + 3600),
        "d" * 32: (other_host_expired, now - 1),
    }
    async with open_store(db) as store:
        pass  # creates the table
    db_conn = sqlite3.connect(db)
    with db_conn:
        for job_id, (owner, expires) in leases.items():
            db_conn.execute(
                "INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at,"
                " lease_owner, lease_expires) VALUES (?, 'running', '{\"n\":1}', 1, ?, ?, ?)",
                (job_id, now, owner, expires),
            )
    db_conn.close()
    with trio.fail_after(10):
        async with (
            open_store(db) as store,
            open_job_service(store, echo, JobsConfig(workers=1, lease_seconds=60)) as svc,
        ):
            assert svc.statistics().recovered == 2
            records = await wait_finished(svc, ["a" * 32, "b" * 32, "d" * 32])
            assert [r.status for r in records] == ["succeeded"] * 3
            assert [r.attempts for r in records] == [2, 2, 2]
            fresh = await svc.get("c" * 32)
            assert fresh is not None
            assert (fresh.status, fresh.lease_owner) == ("running", other_host_fresh)


async def test_poison_job_fails_after_max_attempts(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    async with open_store(db) as store:
        pass
    host = _new_owner().split(":")[0]
    db_conn = sqlite3.connect(db)
    with db_conn:
        db_conn.execute(
            "INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at, lease_owner,"
            " lease_expires) VALUES (?, 'running', '{}', 3, 0, ?, 0)",
            ("e" * 32, f"{host}:{_dead_pid()}:t"),
        )
    db_conn.close()
    with trio.fail_after(10):
        async with (
            open_store(db) as store,
            open_job_service(store, echo, JobsConfig(workers=1, max_attempts=3)) as svc,
        ):
            (record,) = await wait_finished(svc, ["e" * 32])
    assert record.status == "failed"
    assert record.error is not None
    assert record.error["code"] == "too_many_attempts"


async def test_outcome_recorded_once_per_owner_and_lease_renewed(tmp_path: Path) -> None:
    db = tmp_path / "j.db"
    runs: Counter[int] = Counter()
    release = trio.Event()
    four_running = trio.Event()
    # The leases' clock is the test's: a lease runs out only when the test moves it on.
    wall = [1_000.0]

    async def held(payload: dict[str, Any]) -> dict[str, Any]:
        runs[payload["n"]] += 1
        if sum(runs.values()) == 4:
            four_running.set()
        await release.wait()
        return {"n": payload["n"]}

    def leases_until() -> list[float]:
        got = rows(db, "SELECT lease_expires FROM dtesn_jobs WHERE status = 'running'")
        return [r[0] for r in got]

    # Two services (two owners) on one file, two claimers each, leases of 0.15 s.
    lease = 0.15
    config = JobsConfig(workers=2, lease_seconds=lease, poll_interval=0.02)
    with trio.fail_after(20):
        async with (
            open_store(db) as store,
            open_job_service(store, held, config, wall_clock=lambda: wall[0]) as a,
            open_job_service(store, held, config, wall_clock=lambda: wall[0]) as b,
        ):
            ids = [(await a.submit({"n": n})).id for n in range(6)]
            await four_running.wait()
            # Six half-leases (three leases) pass while four jobs run: only renewal keeps
            # the other owner from taking a running job over.  After each step a lease
            # has half of itself left; the next step waits until all four were renewed.
            for _ in range(6):
                wall[0] += lease / 2
                await wait_until(
                    lambda: all(t >= wall[0] + lease for t in leases_until()),
                    interval=0.01,
                )
            assert len(leases_until()) == 4
            release.set()
            records = await wait_finished(b, ids)
            sa, sb = a.statistics(), b.statistics()
    assert all(r.status == "succeeded" for r in records)
    assert runs == Counter(range(6))
    assert sa.succeeded + sb.succeeded == 6
    assert sa.lost_leases == sb.lost_leases == 0
    assert rows(db, "SELECT DISTINCT attempts FROM dtesn_jobs") == [(1,)]


async def test_store_finish_only_for_the_lease_owner(tmp_path: Path) -> None:
    from dtesn_trio.jobs import JobRecord

    with trio.fail_after(10):
        async with open_store(tmp_path / "j.db") as store:
            await store.insert(JobRecord(id="f" * 32, status="queued", payload={}, created_at=1.0))
            claimed = await store.claim("me", now=10.0, lease_seconds=5.0)
            assert claimed is not None
            assert (claimed.status, claimed.lease_owner, claimed.lease_expires) == (
                "running",
                "me",
                15.0,
            )
            assert await store.claim("other", now=11.0, lease_seconds=5.0) is None
            assert not await store.finish("f" * 32, "other", 12.0, result={"x": 1})
            assert await store.renew("f" * 32, "me", 15.0, 5.0)
            # the lease ran out: another claimer takes the job, and the first can no
            # longer record anything
            taken = await store.claim("other", now=21.0, lease_seconds=5.0)
            assert taken is not None
            assert taken.attempts == 2
            assert not await store.finish("f" * 32, "me", 22.0, result={"x": 1})
            assert await store.finish("f" * 32, "other", 22.0, result={"x": 2})
            assert not await store.finish("f" * 32, "other", 23.0, result={"x": 3})
            final = await store.get("f" * 32)
            assert final is not None
            assert (final.status, final.result, final.finished_at) == ("succeeded", {"x": 2}, 22.0)
            assert await store.counts() == {"queued": 0, "running": 0, "succeeded": 1, "failed": 0}


@pytest.mark.parametrize("workers", [0, 3])
async def test_leaving_the_block_stops_every_claimer(tmp_path: Path, workers: int) -> None:
    with trio.fail_after(10):
        async with open_store(tmp_path / "j.db") as store:
            async with open_job_service(store, echo, JobsConfig(workers=workers)) as svc:
                await trio.testing.wait_all_tasks_blocked()
                assert svc.statistics().busy == 0
            # the store is still usable: nothing of the service holds a connection
            assert await store.counts() == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
