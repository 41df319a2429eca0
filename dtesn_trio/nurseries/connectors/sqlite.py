"""The embedded default database: SQLite, each connection confined to one worker thread.

Every call on a connection runs through ``trio.to_thread.run_sync`` under that
connection's own ``CapacityLimiter(1)``, so its calls never overlap (sqlite3 is opened
with ``check_same_thread=False`` because trio's thread cache may use a different OS
thread for each call, but never two at once).  Calls are not abandoned on cancellation:
a cancelled caller waits for the statement it started, so a connection is never left
mid-statement.  Connections are in autocommit mode (``isolation_level=None``), WAL
journal, with a busy timeout; multi-statement transactions go through ``run_sync``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import trio

from dtesn_trio import _checks

__all__ = ["SQLiteConnection", "SQLiteConnector"]

T = TypeVar("T")


class SQLiteConnection:
    """One sqlite3 connection and the limiter that confines it to one thread at a time."""

    __slots__ = ("_db", "_limiter", "_threads", "closed", "path")

    def __init__(
        self, db: sqlite3.Connection, path: str, threads: trio.CapacityLimiter | None = None
    ) -> None:
        self._db = db
        self._limiter = trio.CapacityLimiter(1)
        self._threads = threads
        self.path = path
        self.closed = False

    @property
    def in_transaction(self) -> bool:
        return self._db.in_transaction

    async def run_sync(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn(connection)`` in this connection's thread (e.g. a transaction)."""
        if self.closed:
            raise sqlite3.ProgrammingError(f"sqlite connection to {self.path} is closed")
        if self._threads is None:
            return await trio.to_thread.run_sync(fn, self._db, limiter=self._limiter)
        async with self._threads:
            return await trio.to_thread.run_sync(fn, self._db, limiter=self._limiter)

    async def execute(self, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list[Any]:
        """Run one statement; return all its rows (tuples)."""

        def go(db: sqlite3.Connection) -> list[Any]:
            cur = db.execute(sql, params)
            try:
                return cur.fetchall()
            finally:
                cur.close()

        return await self.run_sync(go)

    async def executemany(self, sql: str, seq: Iterable[Sequence[Any]]) -> int:
        """Run one statement per parameter set; return the total rowcount."""
        rows = list(seq)

        def go(db: sqlite3.Connection) -> int:
            cur = db.executemany(sql, rows)
            try:
                return cur.rowcount
            finally:
                cur.close()

        return await self.run_sync(go)

    async def executescript(self, sql: str) -> None:
        def go(db: sqlite3.Connection) -> None:
            db.executescript(sql).close()

        await self.run_sync(go)

    async def aclose(self) -> None:
        if self.closed:
            await trio.lowlevel.checkpoint()
            return
        self.closed = True
        await trio.to_thread.run_sync(self._db.close, limiter=self._limiter)


class SQLiteConnector:
    """Opens ``SQLiteConnection``s to the database file ``path`` (WAL, busy timeout).

    ``":memory:"`` gives each connection its own private database.  ``max_threads``
    bounds the calls running at once over all of this connector's connections (a
    ``CapacityLimiter``; ``None``: only each connection's own limit of one).
    """

    def __init__(
        self, path: str, *, busy_timeout: float = 5.0, max_threads: int | None = None
    ) -> None:
        if not isinstance(path, str) or not path:
            raise ValueError(f"sqlite path must be a non-empty string (got {path!r})")
        _checks.non_negative("sqlite.busy_timeout", busy_timeout)
        if max_threads is not None:
            _checks.integer("sqlite.max_threads", max_threads, minimum=1)
        self.path = path
        self.busy_timeout = busy_timeout
        self.max_threads = max_threads
        self._threads: trio.CapacityLimiter | None = None
        self.name = f"sqlite:{path}"

    async def connect(self) -> SQLiteConnection:
        path, timeout = self.path, self.busy_timeout

        def open_db() -> sqlite3.Connection:
            db = sqlite3.connect(
                path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            try:
                db.execute("PRAGMA journal_mode=WAL").close()
                db.execute(f"PRAGMA busy_timeout={int(timeout * 1000)}").close()
                db.execute("PRAGMA synchronous=NORMAL").close()
            except BaseException:
                db.close()
                raise
            return db

        # Not abandoned on cancel: the open finishes and the connection is returned,
        # so it is never lost in a thread.
        if self.max_threads is not None and self._threads is None:
            # Made here, not in __init__: a CapacityLimiter belongs to one trio run.
            self._threads = trio.CapacityLimiter(self.max_threads)
        db = await trio.to_thread.run_sync(open_db)
        return SQLiteConnection(db, path, self._threads)

    async def check(self, conn: SQLiteConnection) -> None:
        await conn.execute("SELECT 1")

    async def reset(self, conn: SQLiteConnection) -> None:
        """Roll back a transaction a user left open (no thread hop otherwise)."""
        if not conn.closed and conn.in_transaction:
            await conn.run_sync(lambda db: db.execute("ROLLBACK").close())

    async def close(self, conn: SQLiteConnection) -> None:
        await conn.aclose()

    def is_broken(self, conn: SQLiteConnection) -> bool:
        return conn.closed

    def __repr__(self) -> str:
        return f"SQLiteConnector({self.path!r}, busy_timeout={self.busy_timeout!r})"
