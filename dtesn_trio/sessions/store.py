"""Where live sessions wait out a graceful restart: a table in the job store's database.

``save(snapshots)`` writes every session in one transaction (on a graceful stop);
``take()`` reads and deletes them in one transaction (on start), so two instances
starting on one PostgreSQL database never restore the same session twice.  A state
is its ``reservoir_size`` float64 values, little-endian, as bytes.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from dtesn_trio.dtesn.encoding import FloatArray
from dtesn_trio.jobs.postgres import _LOCK_KEY

__all__ = ["PostgresSessionStore", "SQLiteSessionStore", "SessionSnapshot", "SessionStore"]

_COLUMNS = "id, model, version, washout, position, state"


@dataclass(frozen=True, eq=False)
class SessionSnapshot:
    """One session as stored: its id, the model version it pinned, its washout, the
    steps it has run and its reservoir state."""

    id: str
    model: str
    version: int
    washout: int
    position: int
    state: FloatArray

    def row(self) -> tuple[Any, ...]:
        data = np.ascontiguousarray(self.state, dtype="<f8").tobytes()
        return (self.id, self.model, self.version, self.washout, self.position, data)

    @classmethod
    def from_row(cls, row: Sequence[Any]) -> SessionSnapshot:
        state = np.frombuffer(bytes(row[5]), dtype="<f8").astype(np.float64)
        return cls(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]), state)


class SessionStore(Protocol):
    async def setup(self) -> None: ...

    async def save(self, snapshots: Sequence[SessionSnapshot]) -> None: ...

    async def take(self) -> list[SessionSnapshot]: ...


class _Pool(Protocol):
    def connection(self) -> AbstractAsyncContextManager[Any]: ...


_SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS dtesn_sessions (
    id       TEXT PRIMARY KEY,
    model    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    washout  INTEGER NOT NULL,
    position INTEGER NOT NULL,
    state    BLOB NOT NULL,
    saved_at REAL NOT NULL
);
"""


class SQLiteSessionStore:
    """Sessions in the embedded job store's SQLite file."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def setup(self) -> None:
        async with self._pool.connection() as conn:
            await conn.executescript(_SQLITE_SCHEMA)

    async def save(self, snapshots: Sequence[SessionSnapshot]) -> None:
        rows = [(*s.row(), time.time()) for s in snapshots]

        def go(db: sqlite3.Connection) -> None:
            db.execute("BEGIN IMMEDIATE")
            try:
                db.executemany(
                    f"INSERT OR REPLACE INTO dtesn_sessions ({_COLUMNS}, saved_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    rows,
                )
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

        async with self._pool.connection() as conn:
            await conn.run_sync(go)

    async def take(self) -> list[SessionSnapshot]:
        async with self._pool.connection() as conn:
            rows = await conn.execute(f"DELETE FROM dtesn_sessions RETURNING {_COLUMNS}")
        return [SessionSnapshot.from_row(row) for row in rows]


_PG_SCHEMA = """
CREATE TABLE IF NOT EXISTS dtesn_sessions (
    id       TEXT PRIMARY KEY,
    model    TEXT NOT NULL,
    version  INTEGER NOT NULL,
    washout  BIGINT NOT NULL,
    position BIGINT NOT NULL,
    state    BYTEA NOT NULL,
    saved_at DOUBLE PRECISION NOT NULL DEFAULT extract(epoch from now())
)
"""


class PostgresSessionStore:
    """Sessions in the shared job store's PostgreSQL database."""

    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def setup(self) -> None:
        async with self._pool.connection() as conn:
            # the job store's migration lock: instances starting together create it once
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            try:
                await conn.execute(_PG_SCHEMA)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)

    async def save(self, snapshots: Sequence[SessionSnapshot]) -> None:
        rows = [s.row() for s in snapshots]

        async def go(c: Any) -> None:
            async with c.transaction():
                await c.executemany(
                    f"INSERT INTO dtesn_sessions ({_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)"
                    " ON CONFLICT (id) DO UPDATE SET model = EXCLUDED.model,"
                    " version = EXCLUDED.version, washout = EXCLUDED.washout,"
                    " position = EXCLUDED.position, state = EXCLUDED.state,"
                    " saved_at = extract(epoch from now())",
                    rows,
                )

        async with self._pool.connection() as conn:
            await conn.run(go)

    async def take(self) -> list[SessionSnapshot]:
        async with self._pool.connection() as conn:
            rows = await conn.fetch(f"DELETE FROM dtesn_sessions RETURNING {_COLUMNS}")
        return [SessionSnapshot.from_row(row) for row in rows]
