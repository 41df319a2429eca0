"""Shared helpers for the nurseries tests: an in-memory connector that keeps books."""

from __future__ import annotations

import random

import trio

from dtesn_trio.nurseries import ConnectionPoolConfig


class MemConn:
    """A fake connection: an id and whether it is open / broken."""

    def __init__(self, ident: int) -> None:
        self.ident = ident
        self.open = True
        self.broken = False

    def __repr__(self) -> str:
        return f"MemConn({self.ident})"


class MemoryConnector:
    """Connections that cost nothing, with optional delays (random ones from a seeded
    RNG, to put checkpoints at many places) and a ``down`` switch; ``live`` is the
    set of connections opened and not yet closed — the server's view."""

    name = "memory"

    def __init__(
        self,
        *,
        connect_delay: float = 0.0,
        check_delay: float = 0.0,
        close_delay: float = 0.0,
        rng: random.Random | None = None,
    ) -> None:
        self.connect_delay = connect_delay
        self.check_delay = check_delay
        self.close_delay = close_delay
        self.rng = rng
        self.down = False
        self.live: set[MemConn] = set()
        self.next_id = 0
        self.connect_times: list[float] = []
        self.check_times: list[float] = []
        self.close_times: list[float] = []
        self.connecting = 0
        self.max_connecting = 0

    async def _delay(self, d: float) -> None:
        if self.rng is not None:
            d = self.rng.choice([0.0, 0.0, d * self.rng.random()])
        if d:
            await trio.sleep(d)
        else:
            await trio.lowlevel.checkpoint()

    async def connect(self) -> MemConn:
        self.connect_times.append(trio.current_time())
        self.connecting += 1
        self.max_connecting = max(self.max_connecting, self.connecting)
        try:
            await self._delay(self.connect_delay)
            if self.down:
                raise ConnectionRefusedError("memory backend is down")
            conn = MemConn(self.next_id)
            self.next_id += 1
            self.live.add(conn)
            try:
                # A checkpoint after the connection exists, as in a real handshake.
                await trio.lowlevel.checkpoint()
            except BaseException:
                conn.open = False
                self.live.discard(conn)
                raise
            return conn
        finally:
            self.connecting -= 1

    async def check(self, conn: MemConn) -> None:
        self.check_times.append(trio.current_time())
        await self._delay(self.check_delay)
        if self.down or conn.broken or not conn.open:
            raise ConnectionError(f"{conn} is broken")

    async def close(self, conn: MemConn) -> None:
        self.close_times.append(trio.current_time())
        # Closing releases the resource even if the wait below is cancelled.
        conn.open = False
        self.live.discard(conn)
        await self._delay(self.close_delay)


def cfg(**kw: object) -> ConnectionPoolConfig:
    """A small pool with jitter, keepalive, lifetime and idle timeout off unless asked."""
    base: dict[str, object] = {
        "min_connections": 2,
        "max_connections": 4,
        "backoff_jitter": 0.0,
        "lifetime_jitter": 0.0,
        "enable_keepalive": False,
        "max_lifetime": None,
        "idle_timeout": None,
    }
    base.update(kw)
    return ConnectionPoolConfig(**base)  # type: ignore[arg-type]
