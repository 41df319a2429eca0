"""PostgreSQL through asyncpg, bridged into Trio by trio-asyncio.

No maintained Trio-native PostgreSQL driver exists; trio-asyncio runs asyncio code
inside a Trio program.  Open the bridge once around everything that uses PostgreSQL
(``async with trio_asyncio.open_loop():`` — the runtime does), then pool these
connections like any other.  Every call crosses the bridge once.

A call that fails because the server went away (connection closed or reset, server
shutting down or restarting, a network timeout) raises ``BackendUnavailable`` -- the
503 the rest of the project knows how to handle -- and marks the connection broken so
the pool discards it.  Errors of the statement itself (a constraint, a syntax error)
pass through unchanged.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio

from dtesn_trio.errors import BackendUnavailable

__all__ = ["PostgresConnection", "PostgresConnector"]

T = TypeVar("T")


def _bridge() -> tuple[Any, Any]:
    try:
        import asyncpg
        import trio_asyncio
    except ImportError as exc:  # pragma: no cover - depends on the install
        raise BackendUnavailable(
            "PostgreSQL needs the 'postgres' extra: pip install 'dtesn-trio[postgres]'"
        ) from exc
    return asyncpg, trio_asyncio


@functools.cache
def _unavailable_errors() -> tuple[type[BaseException], ...]:
    """The asyncpg errors that mean "the server is gone", not "the statement failed"."""
    asyncpg, _ = _bridge()
    exc = asyncpg.exceptions
    return (
        OSError,
        TimeoutError,
        exc.PostgresConnectionError,  # class 08: connection lost, does not exist, ...
        exc.CannotConnectNowError,  # 57P03: starting up or in recovery
        exc.AdminShutdownError,  # 57P01: terminated by an administrator or a shutdown
        exc.CrashShutdownError,  # 57P02: another backend crashed
    )


class PostgresConnection:
    """One asyncpg connection; each method runs on the trio-asyncio loop.

    ``broken`` is set when a call failed because the server went away; the pool then
    discards the connection (``PostgresConnector.is_broken``).
    """

    def __init__(self, raw: Any, aio_as_trio: Callable[..., Any], name: str = "postgresql") -> None:
        self.raw = raw
        self._aio = aio_as_trio
        self._name = name
        self.broken = False

    async def _call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        asyncpg, _ = _bridge()
        try:
            result: T = await self._aio(fn)(*args)
        except _unavailable_errors() as exc:
            self.broken = True
            raise BackendUnavailable(f"{self._name}: {type(exc).__name__}: {exc}") from exc
        except asyncpg.exceptions.InterfaceError as exc:
            # "connection is closed" and its kin: the server (or the network) is gone.
            # Any other interface error is a programming error and passes through.
            if not self.raw.is_closed():
                raise
            self.broken = True
            raise BackendUnavailable(f"{self._name}: {exc}") from exc
        return result

    async def execute(self, sql: str, *args: Any) -> str:
        return await self._call(self.raw.execute, sql, *args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return await self._call(self.raw.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._call(self.raw.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._call(self.raw.fetchval, sql, *args)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(asyncpg_connection)`` (an asyncio coroutine function) on the bridge,
        e.g. a whole transaction: ``async with c.transaction(): ...``."""
        return await self._call(fn, self.raw)


class PostgresConnector:
    """Connects with asyncpg to ``dsn``; ``check`` is ``SELECT 1``."""

    def __init__(self, dsn: str, *, connect_timeout: float = 10.0) -> None:
        if not dsn.startswith(("postgres://", "postgresql://")):
            raise ValueError(f"postgres dsn must start with postgresql:// (got {dsn!r})")
        self.dsn = dsn
        self.connect_timeout = connect_timeout
        host = dsn.rsplit("@", 1)[-1]
        self.name = f"postgresql://{host}"

    async def connect(self) -> PostgresConnection:
        asyncpg, trio_asyncio = _bridge()
        try:
            raw = await trio_asyncio.aio_as_trio(asyncpg.connect)(
                self.dsn, timeout=self.connect_timeout
            )
        except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
            raise BackendUnavailable(f"{self.name}: {exc}") from exc
        return PostgresConnection(raw, trio_asyncio.aio_as_trio, self.name)

    async def check(self, conn: PostgresConnection) -> None:
        if conn.raw.is_closed():
            raise ConnectionError(f"{self.name}: connection closed")
        await conn.fetchval("SELECT 1")

    def is_broken(self, conn: PostgresConnection) -> bool:
        return conn.broken or bool(conn.raw.is_closed())

    async def close(self, conn: PostgresConnection) -> None:
        if conn.raw.is_closed():
            await trio.lowlevel.checkpoint()
            return
        try:
            await conn._aio(conn.raw.close)(timeout=2.0)
        except Exception:
            conn.raw.terminate()

    def __repr__(self) -> str:
        return f"PostgresConnector({self.name!r})"
