"""The pool with an in-memory connector: hand-off, limits, errors, shutdown."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from dtesn_trio.errors import BackendUnavailable, Overloaded, ShuttingDown
from dtesn_trio.nurseries import ConnectionPool, ConnectionPoolConfig, open_pool
from tests.nurseries import MemConn, MemoryConnector, cfg


def test_config_defaults_are_the_seeds() -> None:
    c = ConnectionPoolConfig()
    assert (c.max_connections, c.min_connections) == (500, 50)
    assert (c.connection_timeout, c.idle_timeout, c.max_retries, c.retry_delay) == (
        15.0,
        180.0,
        3,
        0.05,
    )
    assert (c.enable_keepalive, c.keepalive_interval, c.max_concurrent_creates) == (
        True,
        30.0,
        50,
    )
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_connections = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"max_connections": 5, "min_connections": 10}, "pool.max_connections"),
        ({"max_connections": 0}, "pool.max_connections"),
        ({"connection_timeout": -1}, "pool.connection_timeout"),
        ({"max_retries": 1.5}, "pool.max_retries"),
        ({"max_waiting": -1}, "pool.max_waiting"),
        ({"acquire_timeout": 0}, "pool.acquire_timeout"),
        ({"leak_detection_threshold": 0}, "pool.leak_detection_threshold"),
        ({"enable_keepalive": "yes"}, "pool.enable_keepalive"),
        ({"lifetime_jitter": 0.9}, "pool.lifetime_jitter"),
    ],
)
def test_config_errors_name_the_field(kw: dict[str, object], field: str) -> None:
    with pytest.raises(ValueError, match=field):
        ConnectionPoolConfig(**kw)  # type: ignore[arg-type]


async def test_opens_min_and_closes_everything_on_exit() -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=3)) as pool:
        s = pool.statistics()
        assert (s.open, s.idle, s.in_use, s.connecting, s.state) == (3, 3, 0, 0, "running")
        assert len(conn.live) == 3
        async with pool.connection() as c:
            assert isinstance(c, MemConn)
            assert c in conn.live
            assert pool.statistics().in_use == 1
    assert conn.live == set()
    assert pool.statistics().state == "closed"
    assert pool.statistics().connections_closed == 3


async def test_most_recently_used_first() -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg()) as pool:
        async with pool.connection() as a, pool.connection() as b:
            pass
        # b was released last (inner context exits first? no: a released last)
        async with pool.connection() as c:
            assert c is a
        async with pool.connection() as c2:
            assert c2 is a
        assert b is not a


async def test_fifo_waiters_and_direct_hand_off() -> None:
    conn = MemoryConnector()
    order: list[str] = []
    async with open_pool(conn, cfg(min_connections=1, max_connections=1)) as pool:
        release = trio.Event()

        async def holder() -> None:
            async with pool.connection():
                order.append("holder")
                await release.wait()

        async def waiter(name: str) -> None:
            async with pool.connection():
                order.append(name)
                await trio.lowlevel.checkpoint()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            for name in ("w1", "w2", "w3"):
                nursery.start_soon(waiter, name)
                await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().waiting == 3
            release.set()
            # A late-comer that arrives right at release must queue behind the waiters.
            nursery.start_soon(waiter, "late")
        assert order == ["holder", "w1", "w2", "w3", "late"]
        assert conn.next_id == 1  # one connection served everyone


async def test_one_checkout_object_entered_twice_refuses_the_second_task() -> None:
    # A pool.connection() object is one waiter: a second task entering it while the
    # first still waits for a connection is refused, and the first is served.
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=1, max_connections=1)) as pool:
        release = trio.Event()
        shared = pool.connection()
        served: list[str] = []

        async def holder() -> None:
            async with pool.connection():
                await release.wait()

        async def first() -> None:
            async with shared:
                served.append("first")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(RuntimeError, match="already in use"):
                async with shared:
                    pass  # pragma: no cover
            release.set()
        assert served == ["first"]
        async with shared:  # usable again once its first use ended
            served.append("again")
        assert served == ["first", "again"]
        stats = pool.statistics()
        assert stats.waiting == 0
        assert stats.in_use == 0


async def test_a_checkout_cancelled_while_waiting_can_be_entered_again() -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(min_connections=1, max_connections=1)) as pool:
        release = trio.Event()
        shared = pool.connection()

        async def holder() -> None:
            async with pool.connection():
                await release.wait()

        async def waits() -> None:
            async with shared:
                pass  # pragma: no cover

        async with trio.open_nursery() as nursery:
            nursery.start_soon(holder)
            await trio.testing.wait_all_tasks_blocked()
            async with trio.open_nursery() as inner:
                inner.start_soon(waits)
                await trio.testing.wait_all_tasks_blocked()
                assert pool.statistics().waiting == 1
                inner.cancel_scope.cancel()
            assert pool.statistics().waiting == 0
            release.set()
        async with shared as c:  # its cancelled use left it free
            assert c.open
        stats = pool.statistics()
        assert stats.in_use == 0
        assert stats.cancelled_requests == 1


async def test_waiter_cap_sheds_with_overloaded() -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=1, max_connections=1, max_waiting=2)
    async with open_pool(conn, config) as pool, trio.open_nursery() as nursery:
        release = trio.Event()

        async def hold() -> None:
            async with pool.connection():
                await release.wait()

        for _ in range(3):  # one holder, two waiters
            nursery.start_soon(hold)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded, match="max_waiting"):
            async with pool.connection():
                pass  # pragma: no cover
        assert pool.statistics().overloaded_requests == 1
        assert pool.statistics().failed_requests == 1
        release.set()


async def test_acquire_timeout_when_saturated_is_overloaded(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector()
    config = cfg(min_connections=1, max_connections=1, acquire_timeout=2.5)
    async with open_pool(conn, config) as pool, pool.connection():
        t0 = trio.current_time()
        with pytest.raises(Overloaded, match="acquire_timeout"):
            async with pool.connection():
                pass  # pragma: no cover
        assert trio.current_time() - t0 == 2.5
        assert pool.statistics().waiting == 0


async def test_acquire_timeout_when_backend_down_is_backend_unavailable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector(connect_delay=100.0)
    config = cfg(min_connections=0, max_connections=2, acquire_timeout=3.0)
    async with open_pool(conn, config) as pool:
        t0 = trio.current_time()
        with pytest.raises(BackendUnavailable, match="acquire_timeout"):
            async with pool.connection():
                pass  # pragma: no cover
        assert trio.current_time() - t0 == 3.0


async def test_start_failure_names_backend_and_error(
    autojump_clock: trio.testing.MockClock,
) -> None:
    conn = MemoryConnector()
    conn.down = True
    t0 = trio.current_time()
    with pytest.raises(BackendUnavailable) as info:
        async with open_pool(conn, cfg(min_connections=3, max_retries=3)):
            pass  # pragma: no cover
    msg = str(info.value)
    assert "memory" in msg
    assert "memory backend is down" in msg
    assert "4 attempt" in msg
    # 3 creators × 4 attempts, retries after 0.05, 0.1, 0.2 s (jitter off).
    assert sorted(set(t - t0 for t in conn.connect_times)) == pytest.approx([0.0, 0.05, 0.15, 0.35])
    assert conn.live == set()


async def test_start_failure_closes_connections_that_did_open() -> None:
    class HalfDown(MemoryConnector):
        async def connect(self) -> MemConn:
            if len(self.connect_times) >= 2:
                await trio.sleep(0.01)  # the first two are open by then
                raise ConnectionRefusedError("full")
            return await super().connect()

    conn = HalfDown()
    with pytest.raises(BackendUnavailable):
        async with open_pool(conn, cfg(min_connections=4, max_retries=0)):
            pass  # pragma: no cover
    assert conn.next_id == 2
    assert conn.live == set()
    # The same through run(): the pool ends closed, not stuck "starting".
    conn2 = HalfDown()
    pool = ConnectionPool(conn2, cfg(min_connections=4, max_retries=0))
    async with trio.open_nursery() as nursery:
        with pytest.raises(BackendUnavailable, match="full"):
            await nursery.start(pool.run)
    assert pool.statistics().state == "closed"
    assert pool.statistics().open == 0
    assert conn2.live == set()


async def test_body_exception_propagates_unwrapped() -> None:
    conn = MemoryConnector()
    with pytest.raises(KeyError, match="boom"):
        async with open_pool(conn, cfg()) as pool, pool.connection():
            raise KeyError("boom")
    assert conn.live == set()


async def test_hard_cancel_while_in_use_closes_everything() -> None:
    conn = MemoryConnector()
    with trio.move_on_after(5) as scope:
        async with (
            open_pool(conn, cfg(min_connections=2, max_connections=5)) as pool,
            trio.open_nursery() as nursery,
        ):
            for _ in range(5):
                nursery.start_soon(_hold_forever, pool)
            for _ in range(3):  # waiters beyond max
                nursery.start_soon(_hold_forever, pool)
            await trio.testing.wait_all_tasks_blocked()
            assert pool.statistics().in_use == 5
            assert pool.statistics().waiting == 3
            scope.cancel()
    assert scope.cancelled_caught
    assert conn.live == set()
    s = pool.statistics()
    assert (s.open, s.waiting, s.connecting) == (0, 0, 0)


async def _hold_forever(pool: ConnectionPool[MemConn]) -> None:
    async with pool.connection():
        await trio.sleep_forever()


async def test_not_running_raises_shutting_down() -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg()) as pool:
        pass
    with pytest.raises(ShuttingDown):
        async with pool.connection():
            pass  # pragma: no cover
    fresh = ConnectionPool(conn, cfg())
    with pytest.raises(ShuttingDown):
        async with fresh.connection():
            pass  # pragma: no cover


async def test_run_in_callers_nursery() -> None:
    conn = MemoryConnector()
    async with trio.open_nursery() as nursery:
        pool: ConnectionPool[MemConn] = await nursery.start(ConnectionPool(conn, cfg()).run)
        async with pool.connection() as c:
            assert c in conn.live
        nursery.cancel_scope.cancel()
    assert conn.live == set()
    with pytest.raises(RuntimeError, match="already run"):
        await pool.run()


async def test_get_stats_has_the_seed_keys() -> None:
    conn = MemoryConnector()
    async with open_pool(conn, cfg(max_connections=4)) as pool:
        async with pool.connection():
            stats = pool.get_stats()
        assert set(stats) == {
            "active_connections",
            "idle_connections",
            "total_requests",
            "failed_requests",
            "avg_response_time",
            "pool_utilization",
            "last_updated",
        }
        assert stats["active_connections"] == 1
        assert stats["pool_utilization"] == 0.25
        assert stats["total_requests"] == 1
        assert pool.get_stats()["active_connections"] == 0


async def test_error_in_block_during_outer_cancel_is_not_swallowed() -> None:
    async def fails_in_cleanup() -> None:
        try:
            await trio.sleep_forever()
        finally:
            raise RuntimeError("in cleanup")

    conn = MemoryConnector()
    with pytest.raises(ExceptionGroup) as info, trio.move_on_after(5) as scope:  # noqa: PT012
        async with open_pool(conn, cfg()), trio.open_nursery() as nursery:
            nursery.start_soon(fails_in_cleanup)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert info.group_contains(RuntimeError, match="in cleanup")
    assert conn.live == set()


async def test_a_connection_given_back_after_the_pool_stopped_is_closed_by_its_holder() -> None:
    conn = MemoryConnector()
    pool = ConnectionPool(conn, cfg(min_connections=1, max_connections=1))
    release = trio.Event()
    held = trio.Event()

    async def holder() -> None:
        async with pool.connection():
            held.set()
            await release.wait()

    async with trio.open_nursery() as outer:
        async with trio.open_nursery() as pool_nursery:
            await pool_nursery.start(pool.run)
            outer.start_soon(holder)
            await held.wait()
            pool_nursery.cancel_scope.cancel()
        # The pool's nursery is closed now; the connection is still held.
        s = pool.statistics()
        assert (s.state, s.in_use, s.connections_closed) == ("closed", 1, 0)
        release.set()
    s = pool.statistics()
    assert (s.open, s.in_use, s.closing, s.connections_closed) == (0, 0, 0, 1)
    assert conn.live == set()
