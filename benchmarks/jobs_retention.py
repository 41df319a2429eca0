"""Job retention: claim latency (p99) with and without a concurrent sweep of N finished
rows, on SQLite and on PostgreSQL.

For each backend: a fresh store holding N finished jobs that are past retention (all
finished at the same instant) and enough queued jobs for the claimers; ``--claimers``
tasks each claim a job and record it finished, back to back, timing each claim
(``store.claim``: the statement a claimer runs).  While they run, phases of
``--phase`` seconds alternate until the N rows are gone: off, no sweep; on,
``JobService.sweep()`` deletes rows (the service's own sweep with the default
settings: ``jobs.sweep_batch`` rows per statement, paced by ``jobs.sweep_pause`` and
``jobs.sweep_duty``), and is ended between two statements when the phase is over.  A
claim counts in the phase it started in (one that started while a statement of the
sweep ran counts as "during", however late it ended).  So both figures come from the
same claimers, over the same minutes, through the same background load of a shared
machine.  ``<backend>_claim_p99_ratio`` = p99 during the sweep / p99 without it
(target <= 2).  N is 1e5 with ``--quick``, 1e6 without.  One second of claims after the
fill warms the caches up and is not counted; then 10 s (``--quick``: 4 s) of claims
before any sweep give ``p99_vs_before_ratio`` = p99 during the sweep / p99 before it,
which also counts what a sweep leaves for the off phases (dead rows, autovacuum) but
also any change of the machine's load since.  The service's scheduled sweeps are off
(``sweep_interval`` far away): only the phases' sweeps run.

PostgreSQL is a throw-away cluster started the way the tests start one
(``tests/servers.py``), stopped by PID at the end; without PostgreSQL installed its
figures are skipped with a message.  The machine is shared: absolute latencies are
noisy, the ratio (measured within one run) less so.

    python benchmarks/jobs_retention.py --quick       # < 2 min
    python benchmarks/jobs_retention.py --json        # ~10 min
    python benchmarks/jobs_retention.py --backend postgres --batch 500   # other settings
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


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


async def _noop(payload: dict[str, Any]) -> dict[str, Any]:
    await trio.lowlevel.checkpoint()
    return payload


class _Phases:
    """The store, with each purge statement timed and a way to end a sweep between
    two statements (the next purge reports 0 rows, which ends ``JobService.sweep``)."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        self.stop = False
        self.done = False  # the real sweep ended: nothing left past the horizon
        self.deleted = 0
        self.statements: list[float] = []

    async def purge(self, horizon: float, limit: int, after: Any = None) -> tuple[int, Any]:
        if self.stop:
            await trio.lowlevel.checkpoint()
            return 0, None
        t0 = time.perf_counter()
        n, cursor = await self.store.purge(horizon, limit, after)
        self.statements.append(time.perf_counter() - t0)
        self.deleted += n
        self.done = n < limit
        return n, cursor

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)


async def _measure(
    store: JobStore,
    fill: Any,
    rows: int,
    claimers: int,
    phase: float,
    before: float,
    overrides: dict[str, Any],
) -> dict[str, Any]:
    """Claims back to back while on and off phases of ``phase`` seconds alternate:
    on, the service's sweep runs (its own batches and pauses); off, no statement of
    it is in flight.  Each claim counts in the phase it started in; one that started
    while a sweep statement ran counts as "during", even if it ended later."""
    phases = _Phases(store)
    config = JobsConfig(
        workers=0,
        retain_finished=86400.0,
        max_finished_rows=None,
        # No scheduled sweep: only the ones started below run.
        sweep_interval=1e9,
        **overrides,
    )
    samples: dict[str, list[float]] = {"before": [], "base": [], "sweep": []}
    seconds = {"base": 0.0, "sweep": 0.0}
    label = ["warm"]

    async def claimer(k: int) -> None:
        owner = f"bench-{k}"
        while True:
            which = label[0]
            t0 = time.perf_counter()
            job = await store.claim(owner, time.time(), 60.0)
            if which in samples:
                samples[which].append(time.perf_counter() - t0)
            if job is None:
                raise RuntimeError("ran out of queued jobs: raise the queued count")
            await store.finish(job.id, owner, time.time(), result={})

    async with open_job_service(phases, _noop, config) as svc:  # type: ignore[arg-type]
        await svc.wait_swept()  # the start-up sweep: nothing to delete yet
        phases.done, phases.statements = False, []
        t0 = time.perf_counter()
        queued = _queued_needed(rows, config)
        await fill(rows, queued)
        fill_s = time.perf_counter() - t0
        async with trio.open_nursery() as nursery:
            for k in range(claimers):
                nursery.start_soon(claimer, k)
            await trio.sleep(1.0)  # warm-up, not counted
            label[0] = "before"
            await trio.sleep(before)
            while not phases.done:
                t0 = time.perf_counter()
                label[0] = "base"
                await trio.sleep(phase)
                t1 = time.perf_counter()
                label[0] = "sweep"
                phases.stop = False
                ended = trio.Event()

                async def sweep(ended: trio.Event = ended) -> None:
                    await svc.sweep()
                    ended.set()

                nursery.start_soon(sweep)
                with trio.move_on_after(phase):
                    await ended.wait()
                # End the sweep after its statement in flight (and its pause).
                phases.stop = True
                await ended.wait()
                seconds["base"] += t1 - t0
                seconds["sweep"] += time.perf_counter() - t1
            nursery.cancel_scope.cancel()
    base, during = samples["base"], samples["sweep"]
    statements = phases.statements
    result = {
        "finished_rows": rows,
        "queued_rows": queued,
        "fill_s": round(fill_s, 2),
        "phase_s": phase,
        "baseline_claims": len(base),
        "baseline_claims_per_s": round(len(base) / seconds["base"]),
        "baseline_p50_ms": round(quantile(base, 0.5) * 1000, 3),
        "baseline_p99_ms": round(quantile(base, 0.99) * 1000, 3),
        "sweep_claims": len(during),
        "sweep_claims_per_s": round(len(during) / seconds["sweep"]),
        "sweep_p50_ms": round(quantile(during, 0.5) * 1000, 3),
        "sweep_p99_ms": round(quantile(during, 0.99) * 1000, 3),
        "deleted": phases.deleted,
        "statements": len(statements),
        "statement_p50_ms": round(quantile(statements, 0.5) * 1000, 3),
        "statement_max_ms": round(max(statements, default=0.0) * 1000, 3),
        "sweep_s": round(seconds["sweep"], 2),
        "sweep_batch": config.sweep_batch,
        "sweep_pause": config.sweep_pause,
        "sweep_duty": config.sweep_duty,
    }
    # Against claims before any sweep: also counts what a sweep leaves behind for the
    # off phases (dead rows, autovacuum), but also any change of the machine's load.
    result["before_claims"] = len(samples["before"])
    result["before_p50_ms"] = round(quantile(samples["before"], 0.5) * 1000, 3)
    result["before_p99_ms"] = round(quantile(samples["before"], 0.99) * 1000, 3)
    before_p99 = result["before_p99_ms"]
    result["p99_vs_before_ratio"] = (
        round(result["sweep_p99_ms"] / before_p99, 3) if before_p99 else None
    )
    base_p99 = result["baseline_p99_ms"]
    result["claim_p99_ratio"] = round(result["sweep_p99_ms"] / base_p99, 3) if base_p99 else None
    return result


def _queued_needed(rows: int, config: JobsConfig) -> int:
    # Claims run at up to ~2,500/s through the sweep's phases and as many off phases,
    # each statement ~5 ms beside its pause.  Generous: running out ends the run.
    seconds = 2 * (rows / config.sweep_batch) * (config.sweep_pause + 0.005)
    return 60_000 + int(2_500 * 1.5 * seconds)


@asynccontextmanager
async def _sqlite(path: str) -> AsyncIterator[tuple[JobStore, Any]]:
    async with open_pool(SQLiteConnector(path), POOL) as pool:
        store = SQLiteJobStore(pool)
        await store.setup()

        async def fill(rows: int, queued: int) -> None:
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

        yield store, fill


@asynccontextmanager
async def _postgres(dsn: str) -> AsyncIterator[tuple[JobStore, Any]]:
    import trio_asyncio

    async with trio_asyncio.open_loop(), open_pool(PostgresConnector(dsn), POOL) as pool:
        store = PostgresJobStore(pool)
        await store.setup()

        async def fill(rows: int, queued: int) -> None:
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

        yield store, fill


async def _run_sqlite(
    rows: int, claimers: int, phase: float, before: float, overrides: Any
) -> dict[str, Any]:
    workdir = tempfile.mkdtemp(prefix="dtesn-retention-")
    try:
        async with _sqlite(os.path.join(workdir, "jobs.db")) as (store, fill):
            return await _measure(store, fill, rows, claimers, phase, before, overrides)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


async def _run_postgres(
    dsn: str, rows: int, claimers: int, phase: float, before: float, overrides: Any
) -> dict[str, Any]:
    async with _postgres(dsn) as (store, fill):
        return await _measure(store, fill, rows, claimers, phase, before, overrides)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="1e5 finished rows, < 60 s")
    parser.add_argument("--rows", type=int, default=None, help="finished rows to sweep")
    parser.add_argument("--claimers", type=int, default=4)
    parser.add_argument("--phase", type=float, default=1.0, help="seconds per on/off phase")
    parser.add_argument("--backend", choices=("sqlite", "postgres"), action="append")
    # Not the defaults' figures: to try other settings of the sweeper.
    parser.add_argument("--batch", type=int, help="jobs.sweep_batch (default: its default)")
    parser.add_argument("--pause", type=float, help="jobs.sweep_pause")
    parser.add_argument("--duty", type=float, help="jobs.sweep_duty")
    args = parser.parse_args()
    rows = args.rows or (100_000 if args.quick else 1_000_000)
    backends = args.backend or ["sqlite", "postgres"]
    before = 4.0 if args.quick else 10.0
    overrides = {
        name: value
        for name, value in (
            ("sweep_batch", args.batch),
            ("sweep_pause", args.pause),
            ("sweep_duty", args.duty),
        )
        if value is not None
    }
    started = time.monotonic()
    load_before = os.getloadavg()[0]

    sqlite: dict[str, Any] | None = None
    if "sqlite" in backends:
        sqlite = trio.run(_run_sqlite, rows, args.claimers, args.phase, before, overrides)
    postgres: dict[str, Any] | None = None
    skipped: str | None = None
    if "postgres" not in backends:
        skipped = "PostgreSQL not asked for (--backend)"
    else:
        try:
            from tests.servers import PostgresServer

            pg = PostgresServer()
        except (ImportError, RuntimeError, OSError) as exc:
            skipped = f"PostgreSQL skipped: {exc}"
        else:
            try:
                pg.start()
                postgres = trio.run(
                    _run_postgres, pg.dsn, rows, args.claimers, args.phase, before, overrides
                )
            except RuntimeError as exc:
                if "not installed" not in str(exc):
                    raise
                skipped = f"PostgreSQL skipped: {exc}"
            finally:
                pg.close()

    result: dict[str, Any] = {}
    for name, figures in (("sqlite", sqlite), ("postgres", postgres)):
        for key in ("claim_p99_ratio", "baseline_p99_ms", "sweep_p99_ms"):
            result[f"{name}_{key}"] = None if figures is None else figures[key]
        for key in ("baseline_p50_ms", "sweep_p50_ms", "p99_vs_before_ratio"):
            result[f"{name}_{key}"] = None if figures is None else figures[key]
    result |= {
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
    header = f"  {'backend':<10} {'p50/p99 base ms':>16} {'p50/p99 sweep ms':>17} {'ratio':>6}"
    print(header + f" {'claims/s base':>14} {'claims/s sweep':>15} {'sweep s':>8} {'stmt ms':>8}")
    for name, figures in (("sqlite", sqlite), ("postgres", postgres)):
        if figures is None:
            print(f"  {name:<10} {skipped or 'not asked for (--backend)'}")
            continue
        base = f"{figures['baseline_p50_ms']:.2f}/{figures['baseline_p99_ms']:.2f}"
        during = f"{figures['sweep_p50_ms']:.2f}/{figures['sweep_p99_ms']:.2f}"
        print(
            f"  {name:<10} {base:>16} {during:>17} {figures['claim_p99_ratio']:>6.2f}"
            f" {figures['baseline_claims_per_s']:>14} {figures['sweep_claims_per_s']:>15}"
            f" {figures['sweep_s']:>8.1f} {figures['statement_p50_ms']:>8.2f}"
        )
    print(f"  target: ratio <= 2 on each backend; {result['note']}")
    print(f"  machine load average (1 min) before / after: {result['loadavg_1min']}")
    print(f"  wall {result['wall_s']} s")


if __name__ == "__main__":
    main()
