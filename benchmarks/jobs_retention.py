"""Job retention: claim latency (p99) with and without a concurrent sweep of N finished
rows, on SQLite and on PostgreSQL.

For each backend: a fresh store holding N finished jobs that are past retention and
enough queued jobs for the claimers; ``--claimers`` tasks each claim a job and record it
finished, back to back, timing each claim (``store.claim``: the statement a claimer
runs).  Baseline: claims for ``--baseline`` seconds with the N finished rows present,
no sweep.  Then the same claimers while ``JobService.sweep()`` deletes the N rows (the
service's own sweep: ``jobs.sweep_batch`` rows per statement, ``jobs.sweep_pause``
between).  ``<backend>_claim_p99_ratio`` = p99 during the sweep / baseline p99 (same
run; target <= 2).  N is 1e5 with ``--quick``, 1e6 without.  One second of claims
after the fill warms the caches up and is not counted.

PostgreSQL is a throw-away cluster started the way the tests start one
(``tests/servers.py``), stopped by PID at the end; without PostgreSQL installed its
figures are skipped with a message.  The machine is shared: absolute latencies are
noisy, the ratio (measured within one run) less so.

    python benchmarks/jobs_retention.py --quick       # < 60 s
    python benchmarks/jobs_retention.py --json
"""

from __future__ import annotations

import sys
from pathlib import Path

# Siblings are named like standard modules (``queue.py``, ``http.py``): take this
# directory off the import path before anything imports them.
_HERE = str(Path(__file__).resolve().parent)
sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _HERE]
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import AsyncIterator  # noqa: E402
from contextlib import asynccontextmanager  # noqa: E402
from typing import Any  # noqa: E402

import trio  # noqa: E402

from dtesn_trio.jobs import JobsConfig, JobStore, SQLiteJobStore, open_job_service  # noqa: E402
from dtesn_trio.jobs.postgres import PostgresJobStore  # noqa: E402
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool  # noqa: E402
from dtesn_trio.nurseries.connectors import PostgresConnector  # noqa: E402

POOL = ConnectionPoolConfig(min_connections=2, max_connections=8, max_concurrent_creates=4)
PAST = 1.0  # finished_at of the rows to purge: 1970, far past any retention


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))] if ordered else 0.0


async def _noop(payload: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return payload


async def _claims(
    store: JobStore, claimers: int, until: trio.Event | float
) -> tuple[list[float], int]:
    """Claim and finish back to back until ``until`` (an event, or a duration)."""
    latencies: list[float] = []

    async def claimer(k: int) -> None:
        owner = f"bench-{k}"
        while True:
            t0 = time.perf_counter()
            job = await store.claim(owner, time.time(), 60.0)
            latencies.append(time.perf_counter() - t0)
            if job is None:
                raise RuntimeError("ran out of queued jobs: raise the queued count")
            await store.finish(job.id, owner, time.time(), result={})

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(claimers):
            nursery.start_soon(claimer, k)
        if isinstance(until, trio.Event):
            await until.wait()
        else:
            await trio.sleep(until)
        nursery.cancel_scope.cancel()
    return latencies, round(len(latencies) / (time.perf_counter() - t0))


async def _measure(
    store: JobStore, fill: Any, rows: int, claimers: int, baseline: float
) -> dict[str, Any]:
    config = JobsConfig(workers=0, retain_finished=86400.0, max_finished_rows=None)
    # The service only for its sweep: its own start-up sweep finds nothing yet.
    async with open_job_service(store, _noop, config) as svc:
        await svc.wait_swept()
        t0 = time.perf_counter()
        queued = await fill(rows)
        fill_s = time.perf_counter() - t0
        await _claims(store, claimers, 1.0)  # warm-up, not counted
        base, base_rate = await _claims(store, claimers, baseline)
        done = trio.Event()
        report: list[Any] = []

        async def sweep() -> None:
            # Let the claimers get going first: the sweep starts under load.
            await trio.sleep(0.2)
            report.append(await svc.sweep())
            done.set()

        t1 = time.perf_counter()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sweep)
            during, during_rate = await _claims(store, claimers, done)
        sweep_s = time.perf_counter() - t1
    base_p99, during_p99 = p99(base), p99(during)
    return {
        "finished_rows": rows,
        "queued_rows": queued,
        "fill_s": round(fill_s, 2),
        "baseline_claims": len(base),
        "baseline_claims_per_s": base_rate,
        "baseline_p99_ms": round(base_p99 * 1000, 3),
        "sweep_claims": len(during),
        "sweep_claims_per_s": during_rate,
        "sweep_p99_ms": round(during_p99 * 1000, 3),
        "claim_p99_ratio": round(during_p99 / base_p99, 3) if base_p99 else None,
        "deleted": report[0].deleted,
        "batches": report[0].batches,
        "sweep_s": round(sweep_s, 2),
    }


def _queued_needed(rows: int, claimers: int) -> int:
    # The sweep takes about rows/1000 x (pause + a statement); claims run at up to a
    # few thousand per second meanwhile.  Generous: running out ends the run.
    return 60_000 + rows // 5 + 2_000 * claimers


@asynccontextmanager
async def _sqlite(path: str) -> AsyncIterator[tuple[JobStore, Any]]:
    async with open_pool(SQLiteConnector(path), POOL) as pool:
        store = SQLiteJobStore(pool)
        await store.setup()

        async def fill(rows: int) -> int:
            queued = _queued_needed(rows, 4)
            async with pool.connection() as conn:
                await conn.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                    " INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at,"
                    " finished_at) SELECT 'f' || i, 'succeeded', '{}', 1, ?, ? FROM n",
                    (rows, PAST, PAST),
                )
                await conn.execute(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?)"
                    " INSERT INTO dtesn_jobs (id, status, payload, created_at)"
                    " SELECT 'q' || i, 'queued', '{}', ? FROM n",
                    (queued, time.time()),
                )
                await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                await conn.execute("ANALYZE")
            return queued

        yield store, fill


@asynccontextmanager
async def _postgres(dsn: str) -> AsyncIterator[tuple[JobStore, Any]]:
    import trio_asyncio

    async with trio_asyncio.open_loop(), open_pool(PostgresConnector(dsn), POOL) as pool:
        store = PostgresJobStore(pool)
        await store.setup()

        async def fill(rows: int) -> int:
            queued = _queued_needed(rows, 4)
            async with pool.connection() as conn:
                await conn.execute(
                    "INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at,"
                    " finished_at) SELECT 'f' || i, 'succeeded', '{}', 1, $2, $2"
                    " FROM generate_series(1, $1::int) AS i",
                    rows,
                    PAST,
                )
                await conn.execute(
                    "INSERT INTO dtesn_jobs (id, status, payload, created_at)"
                    " SELECT 'q' || i, 'queued', '{}', extract(epoch from now())"
                    " FROM generate_series(1, $1::int) AS i",
                    queued,
                )
                await conn.execute("VACUUM ANALYZE dtesn_jobs")
            return queued

        yield store, fill


async def _run_sqlite(rows: int, claimers: int, baseline: float) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="dtesn-retention-")
    try:
        async with _sqlite(os.path.join(workdir, "jobs.db")) as (store, fill):
            return await _measure(store, fill, rows, claimers, baseline)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run_postgres(dsn: str, rows: int, claimers: int, baseline: float) -> dict[str, Any]:
    async with _postgres(dsn) as (store, fill):
        return await _measure(store, fill, rows, claimers, baseline)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="1e5 finished rows, < 60 s")
    parser.add_argument("--rows", type=int, default=None, help="finished rows to sweep")
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--baseline", type=float, default=None, help="baseline seconds")
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    baseline = args.baseline or (4.0 if args.quick else 10.0)
    started = time.monotonic()
    load_before = os.getloadavg()[0]

    sqlite = trio.run(_run_sqlite, rows, args.claimers, baseline)
    postgres: dict[str, Any] | None = None
    skipped: str | None = None
    try:
        from tests.servers import PostgresServer

        pg = PostgresServer()
    except (ImportError, RuntimeError, OSError) as exc:
        skipped = f"PostgreSQL skipped: {exc}"
    else:
        try:
            pg.start()
            postgres = trio.run(_run_postgres, pg.dsn, rows, args.claimers, baseline)
        except RuntimeError as exc:
            if "not installed" not in str(exc):
                raise
            skipped = f"PostgreSQL skipped: {exc}"
        finally:
            pg.close()

    result: dict[str, Any] = {
        "sqlite_claim_p99_ratio": sqlite["claim_p99_ratio"],
        "postgres_claim_p99_ratio": None if postgres is None else postgres["claim_p99_ratio"],
        "sqlite_baseline_p99_ms": sqlite["baseline_p99_ms"],
        "sqlite_sweep_p99_ms": sqlite["sweep_p99_ms"],
        "postgres_baseline_p99_ms": None if postgres is None else postgres["baseline_p99_ms"],
        "postgres_sweep_p99_ms": None if postgres is None else postgres["sweep_p99_ms"],
        "finished_rows": rows,
        "claimers": args.claimers,
        "details": {"sqlite": sqlite, "postgres": postgres},
        "note": skipped
        or f"{os.cpu_count()} shared cores run the claimers, the sweep and the database",
        "loadavg_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "wall_s": round(time.monotonic() - started, 1),
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"claim latency during a sweep of {rows:,} finished rows, {args.claimers} claimers")
    header = f"  {'backend':<10} {'p99 base ms':>12} {'p99 sweep ms':>13} {'ratio':>7}"
    print(header + f" {'claims/s base':>14} {'claims/s sweep':>15} {'sweep s':>8}")
    for name, figures in (("sqlite", sqlite), ("postgres", postgres)):
        if figures is None:
            print(f"  {name:<10} {skipped}")
            continue
        print(
            f"  {name:<10} {figures['baseline_p99_ms']:>12.2f} {figures['sweep_p99_ms']:>13.2f}"
            f" {figures['claim_p99_ratio']:>7.2f} {figures['baseline_claims_per_s']:>14}"
            f" {figures['sweep_claims_per_s']:>15} {figures['sweep_s']:>8.1f}"
        )
    print(f"  target: ratio <= 2 on each backend; {result['note']}")
    print(f"  machine load average (1 min) before / after: {result['loadavg_1min']}")
    print(f"  wall {result['wall_s']} s")


if __name__ == "__main__":
    main()
