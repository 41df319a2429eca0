"""Maintenance on virtual time: idle timeout, lifetime, keepalive, back-off, leaks,
checkout validation, bounded creation, resize and drain.  Times are exact."""

from __future__ import annotations

import itertools
import logging
import random

import pytest
import trio
import trio.testing

from dtesn_trio.nurseries import ConnectionPool, open_pool
from tests.nurseries import MemConn, MemoryConnector, cfg


async def _use_n_at_once(pool: ConnectionPool[MemConn], n: int) -> list[MemConn]:
    """Hold n connections at the same time, release them together; return them."""
    got: list[MemConn] = []
    release = trio.Event()

    async def hold() -> None:
        async with pool.connection() as c:
            got.append(c)
            await release.wait()

    async with trio.open_nursery() as nursery:
        for _ in range(n):
            nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        assert len(got) == n
        release.set()
    return got


async def test_idle_timeout_down_to_min(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    async with open_pool(
        conn, cfg(min_connections=1, max_connections=4, idle_timeout=10.0)
    ) as pool:
        t0 = trio.current_time()
        await trio.sleep(3)
        await _use_n_at_once(pool, 4)
        assert pool.statistics().open == 4
        await trio.sleep(6.5)
        # A fresh use of one connection keeps it alive longer.
        async with pool.connection():
            pass
        await trio.sleep(100)
        assert sorted(t - t0 for t in conn.close_times) == [13.0, 13.0, 13.0]
        assert pool.statistics().open == 1  # never below min_connections
        assert len(conn.live) == 1


async def test_lifetime_with_seeded_jitter(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=3, max_connections=3, max_lifetime=100.0, lifetime_jitter=0.1)
    expected_rng = random.Random(7)
    expected = sorted(100.0 * (1 - 0.1 * expected_rng.random()) for _ in range(3))
    async with open_pool(conn, config, rng=random.Random(7)) as pool:
        t0 = trio.current_time()
        await trio.sleep(100.5)
        assert sorted(t - t0 for t in conn.close_times) == pytest.approx(expected, abs=1e-9)
        assert all(90.0 <= t <= 100.0 for t in expected)
        # Each retired connection was replaced at once.
        assert pool.statistics().open == 3
        assert len(conn.live) == 3
        assert conn.next_id == 6


async def test_lifetime_never_retires_a_connection_in_use(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=1, max_connections=1, max_lifetime=10.0)
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        async with pool.connection() as c:
            await trio.sleep(25)
            assert c.open
        await trio.testing.wait_all_tasks_blocked()
        assert not c.open
        assert [t - t0 for t in conn.close_times] == [25.0]
        async with pool.connection() as c2:
            assert c2 is not c


async def test_keepalive_checks_idle_connections(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=2, enable_keepalive=True, keepalive_interval=30.0)
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        await trio.sleep(95)
        assert [t - t0 for t in conn.check_times] == [30, 30, 60, 60, 90, 90]
        # A connection that breaks while idle is found by keepalive and replaced.
        broken = next(iter(conn.live))
        broken.broken = True
        await trio.sleep(30)
        assert [t - t0 for t in conn.close_times] == [120]
        assert broken not in conn.live
        s = pool.statistics()
        assert (s.open, s.checks_failed, s.connections_created) == (2, 1, 3)


async def test_keepalive_is_deferred_by_use(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    config = cfg(
        min_connections=1, max_connections=1, enable_keepalive=True, keepalive_interval=30.0
    )
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        await trio.sleep(20)
        async with pool.connection():  # checked on checkout (idle > 0.5 s)
            pass
        await trio.sleep(45)
        assert [t - t0 for t in conn.check_times] == [20, 50]


async def test_refill_backs_off_exponentially(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=2, retry_delay=1.0, reconnect_max_delay=8.0)
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        conn.down = True
        conn.connect_times.clear()
        await pool.drain()  # both connections go; the backend refuses new ones
        await trio.sleep(24)
        assert [t - t0 for t in conn.connect_times] == [0, 0, 1, 1, 3, 3, 7, 7, 15, 15, 23, 23]
        conn.down = False
        await trio.sleep(8)  # next round at 23 + 8 = 31 succeeds
        assert [t - t0 for t in conn.connect_times[-2:]] == [31, 31]
        assert pool.statistics().open == 2
        assert pool.statistics().last_error is None


async def test_reconnect_jitter_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=1, retry_delay=1.0, reconnect_max_delay=100.0, backoff_jitter=0.1)
    async with open_pool(conn, config, rng=random.Random(3)) as pool:
        t0 = trio.current_time()
        conn.down = True
        conn.connect_times.clear()
        await pool.drain()
        await trio.sleep(40)
        times = [t - t0 for t in conn.connect_times]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert len(gaps) >= 4
        for k, gap in enumerate(gaps):
            assert 0.9 * 2**k <= gap <= 1.1 * 2**k
        assert gaps != [2**k for k in range(len(gaps))]  # jitter is applied


async def test_leak_detection_logs_the_acquirers_stack(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    conn = MemoryConnector()
    config = cfg(leak_detection_threshold=5.0)
    caplog.set_level(logging.WARNING, logger="dtesn_trio.nurseries.pool")
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        async with pool.connection():
            await trio.sleep(4.9)
            assert pool.statistics().leaks_reported == 0
            await trio.sleep(10)
        async with pool.connection():  # short use: no report
            await trio.sleep(1)
        assert pool.statistics().leaks_reported == 1
    (record,) = caplog.records
    assert "held for 5.000s" in record.getMessage()
    assert "test_leak_detection_logs_the_acquirers_stack" in record.getMessage()
    assert trio.current_time() - t0 == pytest.approx(15.9)


async def test_checkout_validation_and_bypass_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=1, max_connections=1)) as pool:
        t0 = trio.current_time()
        await trio.sleep(1)
        async with pool.connection() as c:  # idle 1 s: checked
            pass
        await trio.sleep(0.4)
        async with pool.connection():  # used 0.4 s ago: not checked
            pass
        assert [t - t0 for t in conn.check_times] == [1.0]
        with pytest.raises(ValueError, match="user"):
            async with pool.connection():
                raise ValueError("user error")
        async with pool.connection():  # suspect after an error: checked at once
            pass
        assert [t - t0 for t in conn.check_times] == [1.0, 1.4]
        # A broken connection is discarded and replaced, never handed out.
        c.broken = True
        await trio.sleep(1)
        async with pool.connection() as c2:
            assert c2 is not c
            assert c2.open
        assert not c.open
        assert pool.statistics().checks_failed == 1


async def test_creation_is_bounded_and_concurrent(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector(connect_delay=1.0)
    config = cfg(min_connections=20, max_connections=20, max_concurrent_creates=5)
    t0 = trio.current_time()
    async with open_pool(conn, config) as pool:
        assert trio.current_time() - t0 == 4.0
        assert conn.max_connecting == 5
        assert pool.statistics().open == 20


async def test_waiters_get_backend_unavailable_when_connect_fails(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from dtesn_trio.errors import BackendUnavailable

    conn = MemoryConnector()
    config = cfg(min_connections=0, max_connections=4, max_retries=2, retry_delay=0.5)
    async with open_pool(conn, config) as pool:
        conn.down = True
        t0 = trio.current_time()
        with pytest.raises(BackendUnavailable, match="3 attempt"):
            async with pool.connection():
                pass  # pragma: no cover
        assert trio.current_time() - t0 == 1.5  # retries after 0.5 and 1.0 s
        s = pool.statistics()
        assert (s.waiting, s.connecting, s.failed_requests) == (0, 0, 1)


async def test_resize(autojump_clock: trio.testing.MockClock) -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=1, max_connections=6)) as pool:
        await _use_n_at_once(pool, 5)
        assert pool.statistics().open == 5
        pool.resize(1, 2)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().open == 2
        assert len(conn.live) == 2
        pool.resize(4, 8)
        await trio.testing.wait_all_tasks_blocked()
        assert pool.statistics().open == 4
        assert pool.statistics().max_connections == 8
        with pytest.raises(ValueError, match=r"pool\.max_connections"):
            pool.resize(5, 3)


async def test_drain_replaces_idle_now_and_in_use_on_return(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=3, max_connections=4)) as pool:
        old = set(conn.live)
        async with pool.connection() as held:
            await pool.drain()
            assert held.open
            assert len([c for c in old if c.open]) == 1
            await trio.testing.wait_all_tasks_blocked()
        await trio.testing.wait_all_tasks_blocked()
        assert not held.open
        assert not (conn.live & old)
        assert pool.statistics().open == 3


async def test_cancelled_waiters_leave_no_slot_connecting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """httpcore #1093: waiters cancelled while their connections are being made must
    not leave slots stuck "connecting"; the connections made go to the idle stack."""
    conn = MemoryConnector(connect_delay=1.0)
    async with open_pool(conn, cfg(min_connections=0, max_connections=3)) as pool:
        with trio.move_on_after(0.5):
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(_acquire_once, pool)
        s = pool.statistics()
        assert (s.waiting, s.connecting, s.cancelled_requests) == (0, 3, 10)
        await trio.sleep(1)
        s = pool.statistics()
        assert (s.connecting, s.idle, s.open) == (0, 3, 3)
        t0 = trio.current_time()
        async with pool.connection():  # served at once from the idle stack
            assert trio.current_time() == t0


async def test_a_waiter_timing_out_when_the_refill_is_due_leaves_the_refill_to_run(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A waiter's timeout and the refill's back-off end at the same instant: the
    waiter leaves from its abort callback, which must not make the due refill's
    connection there (it could not be started, and its slot would stay "connecting"
    for good); the maintenance task makes it."""
    from dtesn_trio.errors import BackendUnavailable

    conn = MemoryConnector()
    config = cfg(min_connections=2, retry_delay=1.0, acquire_timeout=1.0, max_retries=0)
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        conn.down = True
        conn.connect_times.clear()
        await pool.drain()  # the refill fails at once; the next round is due at 1
        conn.down = False
        conn.connect_delay = 5.0
        with pytest.raises(BackendUnavailable, match="acquire_timeout"):
            async with pool.connection():  # its connection takes until 5
                pass  # pragma: no cover
        assert trio.current_time() - t0 == 1.0
        await trio.sleep(9)
        assert [t - t0 for t in conn.connect_times] == [0, 0, 0, 1]
        s = pool.statistics()
        assert (s.open, s.idle, s.connecting, s.waiting) == (2, 2, 0, 0)
        assert len(conn.live) == 2


async def _acquire_once(pool: ConnectionPool[MemConn]) -> None:
    async with pool.connection():
        pass  # pragma: no cover


async def test_exit_is_bounded_when_close_hangs(autojump_clock: trio.testing.MockClock) -> None:
    """asyncpg #547: a close that never returns must not hang the pool's exit."""
    conn = MemoryConnector(close_delay=1000.0)
    t0 = trio.current_time()
    async with open_pool(conn, cfg(min_connections=4, close_grace=2.0)):
        pass
    # Four closes run concurrently, each given close_grace.
    assert trio.current_time() - t0 == 2.0
