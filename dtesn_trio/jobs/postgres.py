"""``PostgresJobStore``: jobs shared by every instance, claimed with ``SKIP LOCKED``.

Each method is one statement on a pooled connection (asyncpg autocommits a statement
outside a transaction).  Claiming is ``UPDATE ... WHERE id = (SELECT ... FOR UPDATE
SKIP LOCKED LIMIT 1) RETURNING``: concurrent claimers in any number of processes skip
each other's rows instead of waiting, and never take the same job.  Every time written
or compared -- creation, claims, lease renewals and expiry, outcomes, retry delays,
retention -- is the server's ``now()``: the ``now`` the protocol passes in (the
instance's clock) is ignored, so instances whose clocks disagree agree on leases.
Purging deletes one small batch per statement with ``SKIP LOCKED``, so a sweep never
waits for a claimer's row nor holds many rows' locks; each batch starts where the last
one ended (``purge``'s ``after``), so its cost does not grow with the rows deleted so
far.  The schema is created and migrated at start-up (``setup``), under an advisory
lock so that several instances starting together migrate once.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec

from dtesn_trio.jobs.store import COLUMNS, PURGE_START, JobRecord, PurgeCursor, record_from_row

__all__ = ["MIGRATIONS", "PostgresJobStore"]

# Append only: each entry moves the schema one version up.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE IF NOT EXISTS dtesn_jobs (
        seq           BIGSERIAL,
        id            TEXT PRIMARY KEY,
        status        TEXT NOT NULL,
        payload       TEXT NOT NULL,
        result        TEXT,
        error         TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        created_at    DOUBLE PRECISION NOT NULL,
        started_at    DOUBLE PRECISION,
        finished_at   DOUBLE PRECISION,
        lease_owner   TEXT,
        lease_expires DOUBLE PRECISION,
        available_at  DOUBLE PRECISION NOT NULL DEFAULT 0
    );
    CREATE INDEX IF NOT EXISTS dtesn_jobs_runnable ON dtesn_jobs (status, available_at, seq);
    """,
    # 2: which claimer recorded the outcome -- the audit trail of "exactly once" across
    # instances (lease_owner is cleared when the job finishes).
    "ALTER TABLE dtesn_jobs ADD COLUMN IF NOT EXISTS finished_by TEXT",
    # 3: idempotency conflicts (the hash of a keyed job's canonical payload), retention
    # (finished rows by age), and the deployment's id-signing key.
    """
    ALTER TABLE dtesn_jobs ADD COLUMN IF NOT EXISTS payload_hash TEXT;
    CREATE INDEX IF NOT EXISTS dtesn_jobs_finished ON dtesn_jobs (finished_at)
        WHERE finished_at IS NOT NULL;
    CREATE TABLE IF NOT EXISTS dtesn_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
    """,
    # 4: purge batches walk finished rows in (finished_at, seq) order from where the
    # last batch ended (the index on finished_at alone made every batch step over the
    # entries of all the rows deleted before it, until VACUUM removed them).
    """
    CREATE INDEX IF NOT EXISTS dtesn_jobs_finished_seq ON dtesn_jobs (finished_at, seq)
        WHERE finished_at IS NOT NULL;
    DROP INDEX IF EXISTS dtesn_jobs_finished;
    """,
)

# The server's clock, in the epoch seconds the columns hold.  now() is the start of the
# statement's transaction (each statement is its own): stable, so indexes apply.
_NOW = "extract(epoch from now())::float8"

_LOCK_KEY = 0x6474_6573_6E  # "dtesn": the advisory lock held while migrating


class _Conn(Protocol):
    async def execute(self, sql: str, *args: Any) -> str: ...

    async def fetch(self, sql: str, *args: Any) -> list[Any]: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


class _Pool(Protocol):
    def connection(self) -> AbstractAsyncContextManager[Any]: ...


_encode = msgspec.json.encode


def _json(value: dict[str, Any] | None) -> str | None:
    return None if value is None else _encode(value).decode()


class PostgresJobStore:
    """The ``JobStore`` shared by many instances; ``pool`` pools ``PostgresConnector``s."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        async with self._pool.connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        async with self._pool.connection() as conn:
            return await conn.fetchval(sql, *args)

    async def setup(self) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            try:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS dtesn_schema (version INTEGER NOT NULL)"
                )
                version = await conn.fetchval("SELECT max(version) FROM dtesn_schema") or 0
                for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
                    await conn.execute(sql)
                    await conn.execute("INSERT INTO dtesn_schema (version) VALUES ($1)", number)
                await conn.execute(
                    "INSERT INTO dtesn_meta (name, value) VALUES ('id_key', $1)"
                    " ON CONFLICT (name) DO NOTHING",
                    secrets.token_hex(32),
                )
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)

    async def schema_version(self) -> int:
        async with self._pool.connection() as conn:
            return int(await conn.fetchval("SELECT max(version) FROM dtesn_schema") or 0)

    async def id_key(self) -> bytes:
        async with self._pool.connection() as conn:
            value = await conn.fetchval("SELECT value FROM dtesn_meta WHERE name = 'id_key'")
        return bytes.fromhex(value)

    async def insert(self, record: JobRecord) -> tuple[JobRecord, bool]:
        while True:
            rows = await self._fetch(
                "INSERT INTO dtesn_jobs (id, status, payload, attempts, created_at,"
                f" available_at, payload_hash) VALUES ($1, $2, $3, $4, {_NOW}, GREATEST($5, {_NOW}), $6)"
                f" ON CONFLICT (id) DO NOTHING RETURNING {COLUMNS}",
                record.id,
                record.status,
                _json(record.payload),
                record.attempts,
                record.available_at,
                record.payload_hash,
            )
            if rows:
                return record_from_row(rows[0]), True
            existing = await self.get(record.id)
            if existing is not None:
                return existing, False
            # purged between the two statements: the id is free again

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._fetch(f"SELECT {COLUMNS} FROM dtesn_jobs WHERE id = $1", job_id)
        return record_from_row(rows[0]) if rows else None

    async def claim(self, owner: str, now: float, lease_seconds: float) -> JobRecord | None:
        rows = await self._fetch(
            f"UPDATE dtesn_jobs SET status = 'running', lease_owner = $1,"
            f" lease_expires = {_NOW} + $2, attempts = attempts + 1, started_at = {_NOW}"
            # A job whose lease ran out first (it waited longest), else the queued job
            # available first: each one step down an index, however many finished rows
            # the table holds (COALESCE stops at the first that finds one).
            " WHERE id = COALESCE("
            "   (SELECT id FROM dtesn_jobs"
            f"     WHERE status = 'running' AND lease_expires < {_NOW}"
            "     LIMIT 1 FOR UPDATE SKIP LOCKED),"
            "   (SELECT id FROM dtesn_jobs"
            f"     WHERE status = 'queued' AND available_at <= {_NOW}"
            "     ORDER BY available_at, seq LIMIT 1 FOR UPDATE SKIP LOCKED))"
            f" RETURNING {COLUMNS}",
            owner,
            lease_seconds,
        )
        return record_from_row(rows[0]) if rows else None

    async def renew(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        rows = await self._fetch(
            f"UPDATE dtesn_jobs SET lease_expires = {_NOW} + $1"
            " WHERE id = $2 AND status = 'running' AND lease_owner = $3 RETURNING id",
            lease_seconds,
            job_id,
            owner,
        )
        return bool(rows)

    async def finish(
        self,
        job_id: str,
        owner: str,
        now: float,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        status = "failed" if error is not None else "succeeded"
        rows = await self._fetch(
            f"UPDATE dtesn_jobs SET status = $1, result = $2, error = $3, finished_at = {_NOW},"
            " finished_by = $5, lease_owner = NULL, lease_expires = NULL"
            " WHERE id = $4 AND status = 'running' AND lease_owner = $5 RETURNING id",
            status,
            _json(result),
            _json(error),
            job_id,
            owner,
        )
        return bool(rows)

    async def release(self, job_id: str, owner: str, now: float, delay: float) -> bool:
        rows = await self._fetch(
            "UPDATE dtesn_jobs SET status = 'queued', lease_owner = NULL,"
            # Given back at once: ahead of the queue, where a requeued job goes.
            " lease_expires = NULL,"
            f" available_at = CASE WHEN $1 <= 0 THEN 0 ELSE {_NOW} + $1 END,"
            " attempts = GREATEST(attempts - 1, 0)"
            " WHERE id = $2 AND status = 'running' AND lease_owner = $3 RETURNING id",
            delay,
            job_id,
            owner,
        )
        return bool(rows)

    async def recover(self, is_dead: Callable[[str], bool]) -> int:
        rows = await self._fetch(
            "SELECT DISTINCT lease_owner FROM dtesn_jobs WHERE status = 'running'"
        )
        total = 0
        for (owner,) in rows:
            if owner is None or is_dead(owner):
                requeued = await self._fetch(
                    "UPDATE dtesn_jobs SET status = 'queued', lease_owner = NULL,"
                    " lease_expires = NULL, available_at = 0"
                    " WHERE status = 'running' AND lease_owner IS NOT DISTINCT FROM $1"
                    " RETURNING id",
                    owner,
                )
                total += len(requeued)
        return total

    async def counts(self) -> dict[str, int]:
        rows = await self._fetch("SELECT status, COUNT(*) FROM dtesn_jobs GROUP BY status")
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        counts.update({status: int(n) for status, n in rows})
        return counts

    async def next_delay(self, now: float) -> float | None:
        rows = await self._fetch(
            f"SELECT GREATEST(MIN(available_at) - {_NOW}, 0) FROM dtesn_jobs"
            " WHERE status = 'queued'"
        )
        value = rows[0][0] if rows else None
        return None if value is None else float(value)

    async def purge_horizon(
        self, retain_seconds: float | None, max_finished: int | None, now: float
    ) -> float | None:
        bounds: list[str] = []
        args: list[Any] = []
        if retain_seconds is not None:
            args.append(retain_seconds)
            bounds.append(f"{_NOW} - ${len(args)}::float8")
        if max_finished is not None:
            # The newest finished job past the first max_finished (the index, newest first).
            args.append(max_finished)
            bounds.append(
                "(SELECT finished_at FROM dtesn_jobs WHERE finished_at IS NOT NULL"
                f" ORDER BY finished_at DESC LIMIT 1 OFFSET ${len(args)}::bigint)"
            )
        if not bounds:
            return None
        # GREATEST ignores NULLs (fewer than max_finished finished jobs: no count bound).
        value = await self._fetchval(f"SELECT GREATEST({', '.join(bounds)})", *args)
        return None if value is None else float(value)

    async def purge(
        self, horizon: float, limit: int, after: PurgeCursor | None = None
    ) -> tuple[int, PurgeCursor | None]:
        start_at, start_seq = after or PURGE_START
        # Rows are found in index order from ``after`` and deleted by their ctid: the
        # rows are locked (FOR UPDATE) until the DELETE, so their ctids stand, and the
        # DELETE finds them without a primary-key lookup each.
        rows = await self._fetch(
            "WITH d AS (DELETE FROM dtesn_jobs WHERE ctid = ANY(ARRAY("
            "   SELECT ctid FROM dtesn_jobs WHERE finished_at IS NOT NULL"
            "     AND finished_at <= $1 AND (finished_at, seq) > ($2, $3)"
            "   ORDER BY finished_at, seq LIMIT $4 FOR UPDATE SKIP LOCKED))"
            " RETURNING finished_at, seq)"
            " SELECT (SELECT count(*) FROM d), finished_at, seq FROM d"
            " ORDER BY finished_at DESC, seq DESC LIMIT 1",
            horizon,
            start_at,
            start_seq,
            limit,
        )
        if not rows:
            return 0, None
        count, finished_at, seq = rows[0]
        return int(count), (float(finished_at), int(seq))
