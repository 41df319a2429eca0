"""A cancellation storm: 10,000 acquisitions cancelled at random points.

The connector puts checkpoints (random virtual delays from a seeded RNG) in connect,
check and close; every acquisition has a random deadline that may fire while it
waits, while its connection is being checked, while it holds the connection, or not
at all; some users raise; keepalive, lifetimes and idle timeouts run throughout and
the backend goes down for a while.  Afterwards every invariant must hold.

The seed is fixed; ``POOL_STORM_SEED=<n>`` runs the storm with another one (the test
prints it: a failure's captured output names it).
"""

from __future__ import annotations

import os
import random

import trio
import trio.testing

from dtesn_trio.errors import BackendUnavailable, Overloaded
from dtesn_trio.nurseries import ConnectionPool, ConnectionPoolConfig, open_pool
from tests.nurseries import MemConn, MemoryConnector

N = 10_000
WAVE = 250
SEED = int(os.environ.get("POOL_STORM_SEED", "20261127"))


class UserError(Exception):
    pass


class ResettingConnector(MemoryConnector):
    """Adds a reset with its own checkpoints, so that release can be cancelled too."""

    resets = 0

    async def reset(self, conn: MemConn) -> None:
        self.resets += 1
        await self._delay(0.01)
        if conn.broken:
            raise ConnectionError("reset failed")


async def test_cancellation_storm(autojump_clock: trio.testing.MockClock) -> None:
    print(f"POOL_STORM_SEED={SEED}")
    rng = random.Random(SEED)
    conn = ResettingConnector(connect_delay=0.02, check_delay=0.01, close_delay=0.01, rng=rng)
    config = ConnectionPoolConfig(
        min_connections=5,
        max_connections=20,
        max_concurrent_creates=4,
        max_retries=1,
        retry_delay=0.01,
        max_waiting=200,
        acquire_timeout=0.5,
        validation_bypass=0.005,
        keepalive_interval=0.3,
        idle_timeout=0.4,
        max_lifetime=1.0,
        lifetime_jitter=0.2,
        leak_detection_threshold=None,
    )
    holders: dict[int, int] = {}  # connection id -> user id, to prove exclusivity
    outcomes = {"ok": 0, "cancelled": 0, "user_error": 0, "unavailable": 0, "overloaded": 0}

    active: dict[int, trio.CancelScope] = {}

    async def chaos() -> None:
        # Deadlines fire only when every task is blocked (virtual time); this task
        # also cancels users between two checkpoints of the same tick.
        while True:
            for _ in range(rng.randrange(1, 30)):
                await trio.lowlevel.checkpoint()
                if active and rng.random() < 0.1:
                    active[rng.choice(list(active))].cancel()
            await trio.sleep(rng.random() * 0.005)  # lets virtual time advance

    async def user(pool: ConnectionPool[MemConn], uid: int, deadline: float, hold: float) -> None:
        raise_error = rng.random() < 0.05
        with trio.move_on_after(deadline) as scope:
            active[uid] = scope
            try:
                async with pool.connection() as c:
                    assert c.open, "handed a closed connection"
                    assert c.ident not in holders, "two users hold one connection"
                    holders[c.ident] = uid
                    try:
                        await trio.sleep(hold)
                        if raise_error:
                            raise UserError
                    finally:
                        del holders[c.ident]
            except UserError:
                outcomes["user_error"] += 1
                return
            except BackendUnavailable:
                outcomes["unavailable"] += 1
                return
            except Overloaded:
                outcomes["overloaded"] += 1
                return
            finally:
                del active[uid]
            outcomes["ok"] += 1
        if scope.cancelled_caught:
            outcomes["cancelled"] += 1

    async with open_pool(conn, config, rng=random.Random(1)) as pool:
        uid = 0
        wave = 0
        while uid < N:
            wave += 1
            conn.down = wave % 10 == 7  # the backend is down for some waves
            async with trio.open_nursery() as chaos_nursery:
                chaos_nursery.start_soon(chaos)
                async with trio.open_nursery() as nursery:
                    for _ in range(WAVE):
                        deadline = rng.choice([0.0, rng.random() * 0.05, rng.random() * 0.3, 10.0])
                        nursery.start_soon(user, pool, uid, deadline, rng.random() * 0.05)
                        uid += 1
                        if rng.random() < 0.3:
                            await trio.sleep(rng.random() * 0.01)
                    # Cancel a few whole waves from outside, at a random moment.
                    if wave % 13 == 0:
                        await trio.sleep(rng.random() * 0.05)
                        nursery.cancel_scope.cancel()
                chaos_nursery.cancel_scope.cancel()
            # Between waves: the pool is at rest and consistent.
            _check_invariants(pool, conn)
        conn.down = False
        await trio.sleep(5)  # maintenance settles: back to min_connections
        s = pool.statistics()
        assert s.open == config.min_connections
        _check_invariants(pool, conn)

    s = pool.statistics()
    assert s.total_requests == N - _never_started(outcomes)
    assert s.served_requests + s.failed_requests + s.cancelled_requests == s.total_requests
    assert (s.open, s.connecting, s.waiting, s.in_use, s.closing) == (0, 0, 0, 0, 0)
    assert conn.live == set()
    assert holders == {}
    assert s.connections_created == s.connections_closed
    # The storm really hit every path.
    assert outcomes["ok"] > 500
    assert outcomes["cancelled"] > 1000
    assert outcomes["unavailable"] > 10
    assert outcomes["user_error"] > 20
    assert s.checks_failed > 0
    assert s.connect_failures > 0
    assert conn.resets > 1000


def _never_started(outcomes: dict[str, int]) -> int:
    # Every user reached pool.connection() (a deadline of 0 still calls it), so none.
    return 0


def _check_invariants(pool: ConnectionPool[MemConn], conn: MemoryConnector) -> None:
    s = pool.statistics()
    assert s.waiting == 0
    assert s.in_use == 0
    assert s.open == s.idle + s.checking
    assert s.open + s.connecting <= pool.config.max_connections
    # Every connection the backend sees is one the pool knows, idle, being checked,
    # being created (not yet handed over) or being closed.
    assert len(conn.live) <= s.open + s.connecting + s.closing
    assert len(conn.live) >= s.open
    assert s.served_requests + s.failed_requests + s.cancelled_requests == s.total_requests
