"""``SQLiteJobStore``: jobs in one SQLite table, reached through the connection pool.

Each method is one statement on a pooled connection in autocommit mode, so each change
is committed (and, in WAL mode, visible to other processes) when the method returns.
Claiming is a single ``UPDATE ... WHERE id = (SELECT ...) RETURNING``: SQLite runs it
under its write lock, so two claimers -- in this process or another -- never take the
same job.  Times are the callers' ``now`` (one host, one clock).  Purging deletes one
small batch per statement, so the write lock is never held for long.

SQLite takes one writer at a time, and a writer that finds the file locked polls for
it (the busy timeout) -- a poller can lose to busy claimers every time.  So the writes
of one store take turns on a FIFO ``trio.Lock`` first; the busy timeout is left to
writers in other processes.  A write still locked out after the busy timeout raises
``BackendUnavailable`` (the caller retries later), like a database that went away.
"""

from __future__ import annotations

import secrets
import sqlite3
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec
import trio

from dtesn_trio.errors import BackendUnavailable
from dtesn_trio.jobs.store import COLUMNS, PURGE_START, JobRecord, PurgeCursor, record_from_row

__all__ = ["SQLiteJobStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dtesn_jobs (
    id            TEXT PRIMARY KEY,
    status        TEXT NOT NULL,
    payload       BLOB NOT NULL,
    result        BLOB,
    error         BLOB,
    attempts      INTEGER NOT NULL DEFAULT 0,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    lease_owner   TEXT,
    lease_expires REAL,
    available_at  REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS dtesn_jobs_runnable ON dtesn_jobs (status, available_at);
CREATE TABLE IF NOT EXISTS dtesn_meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# Columns added after the first release: (name, declaration).  Files made earlier gain
# them at setup.
_ADDED_COLUMNS = (("payload_hash", "TEXT"),)

_AFTER_COLUMNS = """
CREATE INDEX IF NOT EXISTS dtesn_jobs_finished ON dtesn_jobs (finished_at)
    WHERE finished_at IS NOT NULL;
"""


class _Conn(Protocol):
    async def execute(self, sql: str, params: Any = ()) -> list[Any]: ...

    async def executescript(self, sql: str) -> None: ...


class _Pool(Protocol):
    def connection(self) -> AbstractAsyncContextManager[Any]: ...


_encode = msgspec.json.encode


class SQLiteJobStore:
    """The ``JobStore`` of the embedded backend; ``pool`` is an ``open_pool`` of
    ``SQLiteConnector`` connections."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._writes = trio.Lock()

    async def _execute(self, sql: str, params: Any = ()) -> list[Any]:
        async with self._pool.connection() as conn:
            try:
                rows: list[Any] = await conn.execute(sql, params)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                raise BackendUnavailable(f"sqlite job store: {exc}") from exc
            return rows

    async def _write(self, sql: str, params: Any = ()) -> list[Any]:
        async with self._writes:
            return await self._execute(sql, params)

    async def setup(self) -> None:
        async with self._pool.connection() as conn:
            await conn.executescript(_SCHEMA)
            have = {row[1] for row in await conn.execute("PRAGMA table_info(dtesn_jobs)")}
            for name, declaration in _ADDED_COLUMNS:
                if name not in have:
                    try:
                        await conn.execute(
                            f"ALTER TABLE dtesn_jobs ADD COLUMN {name} {declaration}"
                        )
                    except sqlite3.OperationalError as exc:  # another process was first
                        if "duplicate column" not in str(exc):
                            raise
            await conn.executescript(_AFTER_COLUMNS)
            await conn.execute(
                "INSERT OR IGNORE INTO dtesn_meta (name, value) VALUES ('id_key', ?)",
                (secrets.token_hex(32),),
            )

    async def id_key(self) -> bytes:
        rows = await self._execute("SELECT value FROM dtesn_meta WHERE name = 'id_key'")
        return bytes.fromhex(rows[0][0])

    async def insert(self, record: JobRecord) -> tuple[JobRecord, bool]:
        while True:
            rows = await self._write(
                "INSERT INTO dtesn_jobs"
                " (id, status, payload, attempts, created_at, available_at, payload_hash)"
                " VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
                f" RETURNING {COLUMNS}",
                (
                    record.id,
                    record.status,
                    _encode(record.payload),
                    record.attempts,
                    record.created_at,
                    # Queue order is by availability: a new job is available when made.
                    max(record.available_at, record.created_at),
                    record.payload_hash,
                ),
            )
            if rows:
                return record_from_row(rows[0]), True
            existing = await self.get(record.id)
            if existing is not None:
                return existing, False
            # purged between the two statements: the id is free again

    async def get(self, job_id: str) -> JobRecord | None:
        rows = await self._execute(f"SELECT {COLUMNS} FROM dtesn_jobs WHERE id = ?", (job_id,))
        return record_from_row(rows[0]) if rows else None

    async def claim(self, owner: str, now: float, lease_seconds: float) -> JobRecord | None:
        rows = await self._write(
            "UPDATE dtesn_jobs SET status = 'running', lease_owner = ?, lease_expires = ?,"
            " attempts = attempts + 1, started_at = ?"
            # A job whose lease ran out first (it waited longest), else the queued job
            # available first: each branch one step down an index, however many
            # finished rows the table holds.
            " WHERE id = (SELECT id FROM ("
            "   SELECT * FROM (SELECT id FROM dtesn_jobs"
            "     WHERE status = 'running' AND lease_expires < ? LIMIT 1)"
            "   UNION ALL"
            "   SELECT * FROM (SELECT id FROM dtesn_jobs"
            "     WHERE status = 'queued' AND available_at <= ?"
            "     ORDER BY available_at, rowid LIMIT 1)"
            " ) LIMIT 1)"
            f" RETURNING {COLUMNS}",
            (owner, now + lease_seconds, now, now, now),
        )
        return record_from_row(rows[0]) if rows else None

    async def renew(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        rows = await self._write(
            "UPDATE dtesn_jobs SET lease_expires = ?"
            " WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING id",
            (now + lease_seconds, job_id, owner),
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
        rows = await self._write(
            "UPDATE dtesn_jobs SET status = ?, result = ?, error = ?, finished_at = ?,"
            " lease_owner = NULL, lease_expires = NULL"
            " WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING id",
            (
                status,
                None if result is None else _encode(result),
                None if error is None else _encode(error),
                now,
                job_id,
                owner,
            ),
        )
        return bool(rows)

    async def release(self, job_id: str, owner: str, now: float, delay: float) -> bool:
        rows = await self._write(
            "UPDATE dtesn_jobs SET status = 'queued', lease_owner = NULL,"
            " lease_expires = NULL, available_at = ?, attempts = MAX(attempts - 1, 0)"
            " WHERE id = ? AND status = 'running' AND lease_owner = ? RETURNING id",
            # Given back at once: ahead of the queue, where a requeued job goes.
            (0.0 if delay <= 0 else now + delay, job_id, owner),
        )
        return bool(rows)

    async def recover(self, is_dead: Callable[[str], bool]) -> int:
        rows = await self._execute(
            "SELECT DISTINCT lease_owner FROM dtesn_jobs WHERE status = 'running'"
        )
        total = 0
        for (owner,) in rows:
            if owner is None or is_dead(owner):
                requeued = await self._write(
                    "UPDATE dtesn_jobs SET status = 'queued', lease_owner = NULL,"
                    " lease_expires = NULL, available_at = 0"
                    " WHERE status = 'running' AND lease_owner IS ? RETURNING id",
                    (owner,),
                )
                total += len(requeued)
        return total

    async def counts(self) -> dict[str, int]:
        rows = await self._execute("SELECT status, COUNT(*) FROM dtesn_jobs GROUP BY status")
        counts = {"queued": 0, "running": 0, "succeeded": 0, "failed": 0}
        counts.update({status: n for status, n in rows})
        return counts

    async def next_delay(self, now: float) -> float | None:
        rows = await self._execute(
            "SELECT MIN(available_at) FROM dtesn_jobs WHERE status = 'queued'"
        )
        value = rows[0][0] if rows else None
        return None if value is None else max(float(value) - now, 0.0)

    async def purge_horizon(
        self, retain_seconds: float | None, max_finished: int | None, now: float
    ) -> float | None:
        horizons: list[float] = []
        if retain_seconds is not None:
            horizons.append(now - retain_seconds)
        if max_finished is not None:
            # The newest finished job past the first max_finished (the index, newest first).
            rows = await self._execute(
                "SELECT finished_at FROM dtesn_jobs WHERE finished_at IS NOT NULL"
                " ORDER BY finished_at DESC LIMIT 1 OFFSET ?",
                (max_finished,),
            )
            if rows:
                horizons.append(float(rows[0][0]))
        return max(horizons) if horizons else None

    async def purge(
        self, horizon: float, limit: int, after: PurgeCursor | None = None
    ) -> tuple[int, PurgeCursor | None]:
        start_at, start_rowid = after or PURGE_START
        rows = await self._write(
            "DELETE FROM dtesn_jobs WHERE rowid IN (SELECT rowid FROM dtesn_jobs"
            "   WHERE finished_at IS NOT NULL AND finished_at <= ?"
            "     AND (finished_at, rowid) > (?, ?)"
            "   ORDER BY finished_at, rowid LIMIT ?) RETURNING finished_at, rowid",
            (horizon, start_at, start_rowid, limit),
        )
        if not rows:
            return 0, None
        finished_at, rowid = max(rows)
        return len(rows), (float(finished_at), int(rowid))
