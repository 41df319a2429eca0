"""PostgreSQL through asyncpg, bridged into Trio by trio-asyncio.

No maintained Trio-native PostgreSQL driver exists; trio-asyncio runs asyncio code
inside a Trio program.  Open the bridge once around everything that uses PostgreSQL
(``async with trio_asyncio.open_loop():`` — the runtime does), then pool these
connections like any other.  Every call crosses the bridge once.
"""

from __future__ import annotations

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


class PostgresConnection:
    """One asyncpg connection; each method runs on the trio-asyncio loop."""

    def __init__(self, raw: Any, aio_as_trio: Callable[..., Any]) -> None:
        self.raw = raw
        self._aio = aio_as_trio

    async def execute(self, sql: str, *args: Any) -> str:
        status: str = await self._aio(self.raw.execute)(sql, *args)
        return status

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        rows: list[Any] = await self._aio(self.raw.fetch)(sql, *args)
        return rows

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await self._aio(self.raw.fetchrow)(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._aio(self.raw.fetchval)(sql, *args)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run ``fn(asyncpg_connection)`` (an asyncio coroutine function) on the bridge,
        e.g. a whole transaction: ``async with c.transaction(): ...``."""
        result: T = await self._aio(fn)(self.raw)
        return result


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
        return PostgresConnection(raw, trio_asyncio.aio_as_trio)

    async def check(self, conn: PostgresConnection) -> None:
        if conn.raw.is_closed():
            raise ConnectionError(f"{self.name}: connection closed")
        await conn.fetchval("SELECT 1")

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
