"""``ModelStore``: model versions, the active version of each name, chunked-fit
accumulators and search trials, in the job store's database.

One class for both backends; the SQL differs only in placeholders and column types
(``_SQLite`` and ``_Postgres`` below).  Every method is one statement, committed when
it returns.  A version is written once and never updated (immutable); its number is
``max + 1`` for its name, computed in the inserting statement, so two writers never
get the same number (SQLite: its write lock; PostgreSQL: the primary key, retried).
A version made by a fit carries that fit's id (unique): a fit run again after a crash
finds the version it made instead of adding a second one.  Activation is one upsert.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

import msgspec
import trio

from dtesn_trio.errors import BackendUnavailable
from dtesn_trio.models.version import VersionInfo

__all__ = ["ModelStore", "postgres_model_store", "sqlite_model_store"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dtesn_models (
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    config     TEXT NOT NULL,
    readout    {blob} NOT NULL,
    scores     TEXT NOT NULL,
    fit        TEXT NOT NULL,
    created_at {real} NOT NULL,
    fit_id     TEXT UNIQUE,
    PRIMARY KEY (name, version)
);
CREATE TABLE IF NOT EXISTS dtesn_model_active (
    name    TEXT PRIMARY KEY,
    version INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS dtesn_fit_uploads (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    spec       TEXT NOT NULL,
    state      {blob},
    chunks     INTEGER NOT NULL DEFAULT 0,
    created_at {real} NOT NULL
);
CREATE TABLE IF NOT EXISTS dtesn_search_trials (
    search_id TEXT NOT NULL,
    trial     INTEGER NOT NULL,
    params    TEXT NOT NULL,
    score     {real} NOT NULL,
    PRIMARY KEY (search_id, trial)
);
"""

_INFO = "name, version, config, scores, fit, created_at"
_decode = msgspec.json.Decoder(dict[str, Any]).decode
_encode = msgspec.json.encode


class _Pool(Protocol):
    def connection(self) -> AbstractAsyncContextManager[Any]: ...


class _SQL(Protocol):
    async def rows(self, sql: str, *args: Any) -> list[Any]: ...

    async def setup(self, schema: str) -> None: ...

    def duplicate(self, exc: Exception) -> bool: ...


class _SQLite:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool
        self._writes = trio.Lock()  # one writer of this process at a time (see jobs.sqlite)

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        async with self._writes, self._pool.connection() as conn:
            try:
                rows: list[Any] = await conn.execute(sql, args)
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) and "busy" not in str(exc):
                    raise
                raise BackendUnavailable(f"sqlite model store: {exc}") from exc
            return rows

    async def setup(self, schema: str) -> None:
        async with self._pool.connection() as conn:
            await conn.executescript(schema.format(blob="BLOB", real="REAL"))

    def duplicate(self, exc: Exception) -> bool:
        return isinstance(exc, sqlite3.IntegrityError)


_LOCK_KEY = 0x6474_6D6F_64  # the advisory lock held while creating the tables


class _Postgres:
    def __init__(self, pool: _Pool) -> None:
        self._pool = pool

    async def rows(self, sql: str, *args: Any) -> list[Any]:
        count = iter(range(1, 1000))
        sql = re.sub(r"\?", lambda _: f"${next(count)}", sql)
        async with self._pool.connection() as conn:
            rows: list[Any] = await conn.fetch(sql, *args)
            return rows

    async def setup(self, schema: str) -> None:
        async with self._pool.connection() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
            try:
                await conn.execute(schema.format(blob="BYTEA", real="DOUBLE PRECISION"))
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)

    def duplicate(self, exc: Exception) -> bool:
        return type(exc).__name__ == "UniqueViolationError"


def _info(row: Any) -> VersionInfo:
    return VersionInfo(
        name=row[0],
        version=int(row[1]),
        config=_decode(row[2]),
        scores=_decode(row[3]),
        fit=_decode(row[4]),
        created_at=float(row[5]),
    )


class ModelStore:
    """Made by ``sqlite_model_store`` or ``postgres_model_store`` over the job store's
    pool."""

    def __init__(self, sql: _SQL) -> None:
        self._sql = sql

    async def setup(self) -> None:
        """Create the tables if needed."""
        await self._sql.setup(_SCHEMA)

    # ---------------------------------------------------------------- versions

    async def add_version(
        self,
        name: str,
        *,
        config: dict[str, Any],
        readout: bytes,
        scores: dict[str, Any],
        fit: dict[str, Any],
        created_at: float,
        fit_id: str,
    ) -> VersionInfo:
        """Store a new version of ``name`` (numbered max + 1) and, when it is the name's
        first, make it active.  With a ``fit_id`` already stored, that version instead."""
        for _ in range(20):
            try:
                rows = await self._sql.rows(
                    "INSERT INTO dtesn_models"
                    " (name, version, config, readout, scores, fit, created_at, fit_id)"
                    " SELECT ?, COALESCE(MAX(version), 0) + 1, ?, ?, ?, ?, ?, ?"
                    " FROM dtesn_models WHERE name = ?"
                    f" ON CONFLICT (fit_id) DO NOTHING RETURNING {_INFO}",
                    name,
                    _encode(config).decode(),
                    readout,
                    _encode(scores).decode(),
                    _encode(fit).decode(),
                    created_at,
                    fit_id,
                    name,
                )
            except Exception as exc:
                if not self._sql.duplicate(exc):
                    raise
                continue  # another writer took the number: count again
            if not rows:
                rows = await self._sql.rows(
                    f"SELECT {_INFO} FROM dtesn_models WHERE fit_id = ?", fit_id
                )
            info = _info(rows[0])
            # The name's first version, not this one: a writer that numbered a later
            # version may get here before the writer of the first.
            await self._sql.rows(
                "INSERT INTO dtesn_model_active (name, version)"
                " SELECT name, MIN(version) FROM dtesn_models WHERE name = ? GROUP BY name"
                " ON CONFLICT (name) DO NOTHING",
                name,
            )
            return info
        raise BackendUnavailable(f"could not number a new version of {name!r}: too many writers")

    async def version(self, name: str, version: int) -> tuple[VersionInfo, bytes] | None:
        """One version and its readout bytes, or None."""
        rows = await self._sql.rows(
            f"SELECT {_INFO}, readout FROM dtesn_models WHERE name = ? AND version = ?",
            name,
            version,
        )
        return (_info(rows[0]), bytes(rows[0][6])) if rows else None

    async def by_fit(self, fit_id: str) -> VersionInfo | None:
        """The version the fit ``fit_id`` made, or None."""
        rows = await self._sql.rows(f"SELECT {_INFO} FROM dtesn_models WHERE fit_id = ?", fit_id)
        return _info(rows[0]) if rows else None

    async def versions(self, name: str) -> list[VersionInfo]:
        """Every version of ``name``, oldest first."""
        rows = await self._sql.rows(
            f"SELECT {_INFO} FROM dtesn_models WHERE name = ? ORDER BY version", name
        )
        return [_info(row) for row in rows]

    async def names(self) -> list[tuple[str, int, int | None]]:
        """``(name, versions, active version)`` of every model, by name."""
        rows = await self._sql.rows(
            "SELECT m.name, COUNT(*), a.version FROM dtesn_models m"
            " LEFT JOIN dtesn_model_active a ON a.name = m.name"
            " GROUP BY m.name, a.version ORDER BY m.name"
        )
        return [(row[0], int(row[1]), None if row[2] is None else int(row[2])) for row in rows]

    async def active(self, name: str) -> int | None:
        """The active version of ``name``, or None (no such model)."""
        rows = await self._sql.rows("SELECT version FROM dtesn_model_active WHERE name = ?", name)
        return int(rows[0][0]) if rows else None

    async def activate(self, name: str, version: int) -> bool:
        """Make ``version`` the active one in one statement; False if it does not exist."""
        rows = await self._sql.rows(
            "INSERT INTO dtesn_model_active (name, version)"
            " SELECT name, version FROM dtesn_models WHERE name = ? AND version = ?"
            " ON CONFLICT (name) DO UPDATE SET version = excluded.version RETURNING version",
            name,
            version,
        )
        return bool(rows)

    # ---------------------------------------------------------------- chunked fits

    async def create_upload(
        self, upload_id: str, name: str, spec: dict[str, Any], now: float
    ) -> None:
        await self._sql.rows(
            "INSERT INTO dtesn_fit_uploads (id, name, spec, created_at) VALUES (?, ?, ?, ?)"
            " RETURNING id",
            upload_id,
            name,
            _encode(spec).decode(),
            now,
        )

    async def upload(self, upload_id: str) -> tuple[str, dict[str, Any], bytes | None, int] | None:
        """``(name, spec, accumulator bytes or None, chunks so far)``, or None."""
        rows = await self._sql.rows(
            "SELECT name, spec, state, chunks FROM dtesn_fit_uploads WHERE id = ?", upload_id
        )
        if not rows:
            return None
        state = rows[0][2]
        return (
            rows[0][0],
            _decode(rows[0][1]),
            None if state is None else bytes(state),
            int(rows[0][3]),
        )

    async def save_upload(self, upload_id: str, chunks: int, state: bytes) -> bool:
        """Store the accumulator after chunk number ``chunks`` iff the previous one
        stored was ``chunks - 1`` (two writers of one upload cannot both win)."""
        rows = await self._sql.rows(
            "UPDATE dtesn_fit_uploads SET state = ?, chunks = ? WHERE id = ? AND chunks = ?"
            " RETURNING id",
            state,
            chunks,
            upload_id,
            chunks - 1,
        )
        return bool(rows)

    async def delete_upload(self, upload_id: str) -> None:
        await self._sql.rows("DELETE FROM dtesn_fit_uploads WHERE id = ? RETURNING id", upload_id)

    # ---------------------------------------------------------------- search trials

    async def add_trial(
        self, search_id: str, trial: int, params: dict[str, Any], score: float
    ) -> None:
        await self._sql.rows(
            "INSERT INTO dtesn_search_trials (search_id, trial, params, score)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (search_id, trial) DO NOTHING RETURNING trial",
            search_id,
            trial,
            _encode(params).decode(),
            score,
        )

    async def trials(self, search_id: str) -> dict[int, tuple[dict[str, Any], float]]:
        """The trials of a search scored so far: trial -> (params, score)."""
        rows = await self._sql.rows(
            "SELECT trial, params, score FROM dtesn_search_trials WHERE search_id = ?",
            search_id,
        )
        return {int(r[0]): (_decode(r[1]), float(r[2])) for r in rows}


def sqlite_model_store(pool: _Pool) -> ModelStore:
    """The store over a pool of ``SQLiteConnector`` connections."""
    return ModelStore(_SQLite(pool))


def postgres_model_store(pool: _Pool) -> ModelStore:
    """The store over a pool of ``PostgresConnector`` connections."""
    return ModelStore(_Postgres(pool))
