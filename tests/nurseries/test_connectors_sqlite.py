"""The SQLite connector: WAL, autocommit, thread confinement, transactions, the pool."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
import trio

from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnection, SQLiteConnector, open_pool


def cfg(**kw: object) -> ConnectionPoolConfig:
    base: dict[str, object] = {"min_connections": 2, "max_connections": 4}
    base.update(kw)
    return ConnectionPoolConfig(**base)  # type: ignore[arg-type]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="sqlite path"):
        SQLiteConnector("")
    with pytest.raises(ValueError, match=r"sqlite\.busy_timeout"):
        SQLiteConnector("x.db", busy_timeout=-1)


async def test_wal_autocommit_and_queries(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    async with open_pool(SQLiteConnector(path, busy_timeout=2.0), cfg()) as pool:
        with trio.fail_after(10):
            async with pool.connection() as db:
                assert isinstance(db, SQLiteConnection)
                assert await db.execute("PRAGMA journal_mode") == [("wal",)]
                assert await db.execute("PRAGMA busy_timeout") == [(2000,)]
                await db.executescript("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER);")
                assert (
                    await db.executemany("INSERT INTO t VALUES (?, ?)", [("a", 1), ("b", 2)]) == 2
                )
                assert await db.execute("SELECT v FROM t WHERE k = ?", ("b",)) == [(2,)]
                assert not db.in_transaction  # autocommit
            # Another connection of the pool sees the committed rows.
            async with pool.connection() as db1, pool.connection() as db2:
                assert db1 is not db2
                assert await db2.execute("SELECT count(*) FROM t") == [(2,)]
                with pytest.raises(sqlite3.IntegrityError):
                    await db1.execute("INSERT INTO t VALUES ('a', 9)")


async def test_run_sync_transaction_and_calls_never_overlap(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    active: list[int] = []
    overlaps: list[int] = []

    def txn(conn: sqlite3.Connection) -> int:
        active.append(threading.get_ident())
        if len(active) > 1:
            overlaps.append(len(active))
        try:
            conn.execute("BEGIN IMMEDIATE")
            (n,) = conn.execute("SELECT coalesce(max(n), 0) FROM c").fetchone()
            conn.execute("INSERT INTO c VALUES (?)", (n + 1,))
            conn.execute("COMMIT")
            return int(n + 1)
        finally:
            active.pop()

    async with open_pool(SQLiteConnector(path), cfg(min_connections=1, max_connections=1)) as pool:
        async with pool.connection() as db:
            await db.execute("CREATE TABLE c (n INTEGER)")
        with trio.fail_after(20):
            results: list[int] = []

            async def worker() -> None:
                for _ in range(5):
                    async with pool.connection() as db:
                        results.append(await db.run_sync(txn))

            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(worker)
        assert sorted(results) == list(range(1, 21))
        assert overlaps == []


async def test_open_transaction_is_rolled_back_on_return(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    async with open_pool(SQLiteConnector(path), cfg(min_connections=1, max_connections=1)) as pool:
        async with pool.connection() as db:
            await db.execute("CREATE TABLE t (x)")
        with pytest.raises(RuntimeError):  # noqa: PT012
            async with pool.connection() as db:
                await db.execute("BEGIN")
                await db.execute("INSERT INTO t VALUES (1)")
                raise RuntimeError("user forgot to commit")
        async with pool.connection() as db:
            assert not db.in_transaction
            assert await db.execute("SELECT count(*) FROM t") == [(0,)]


async def test_connections_closed_on_exit(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    seen: list[SQLiteConnection] = []
    async with open_pool(SQLiteConnector(path), cfg(min_connections=3)) as pool:
        for _ in range(3):
            async with pool.connection() as db:
                seen.append(db)
    assert seen
    assert all(c.closed for c in seen)
    with pytest.raises(sqlite3.ProgrammingError):
        await seen[0].execute("SELECT 1")


async def test_cancelled_call_finishes_its_statement(tmp_path: Path) -> None:
    """A cancelled caller waits for the statement it started (never abandoned)."""
    path = str(tmp_path / "t.db")
    async with open_pool(SQLiteConnector(path), cfg(min_connections=1, max_connections=1)) as pool:
        async with pool.connection() as db:
            await db.execute("CREATE TABLE t (x)")
        started = threading.Event()

        def slow_insert(conn: sqlite3.Connection) -> None:
            started.set()
            conn.execute("INSERT INTO t VALUES (1)")
            threading.Event().wait(0.1)

        with trio.move_on_after(0.01):
            async with pool.connection() as db:
                await db.run_sync(slow_insert)
        assert started.is_set()
        async with pool.connection() as db:
            assert await db.execute("SELECT count(*) FROM t") == [(1,)]


async def test_max_threads_bounds_calls_across_connections(tmp_path: Path) -> None:
    path = str(tmp_path / "t.db")
    running: list[int] = []
    peak: list[int] = [0]
    lock = threading.Lock()

    def slow(conn: sqlite3.Connection) -> None:
        with lock:
            running.append(1)
            peak[0] = max(peak[0], len(running))
        threading.Event().wait(0.02)
        with lock:
            running.pop()

    connector = SQLiteConnector(path, max_threads=2)
    async with open_pool(connector, cfg(min_connections=4, max_connections=4)) as pool:
        with trio.fail_after(20):

            async def use() -> None:
                async with pool.connection() as db:
                    await db.run_sync(slow)

            async with trio.open_nursery() as nursery:
                for _ in range(8):
                    nursery.start_soon(use)
    assert peak[0] == 2
