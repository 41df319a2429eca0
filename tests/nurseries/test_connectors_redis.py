"""The Redis connector and the pool against a real redis-server."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dtesn_trio.errors import BackendUnavailable
from dtesn_trio.nurseries import (
    ConnectionPoolConfig,
    RedisConnection,
    RedisConnectionError,
    RedisConnector,
    RedisResponseError,
    open_pool,
)
from tests.servers import RedisServer

pytestmark = pytest.mark.redis


def cfg(**kw: object) -> ConnectionPoolConfig:
    base: dict[str, object] = {"min_connections": 2, "max_connections": 8, "backoff_jitter": 0.0}
    base.update(kw)
    return ConnectionPoolConfig(**base)  # type: ignore[arg-type]


def test_from_url() -> None:
    c = RedisConnector.from_url("redis://:s%40cret@example.org:6390/3", client_name="x")
    assert (c.host, c.port, c.db, c.password, c.client_name) == (
        "example.org",
        6390,
        3,
        "s@cret",
        "x",
    )
    assert RedisConnector.from_url("redis://localhost").port == 6379
    with pytest.raises(ValueError, match="redis://"):
        RedisConnector.from_url("http://localhost")
    with pytest.raises(ValueError, match="db"):
        RedisConnector.from_url("redis://localhost/abc")
    with pytest.raises(ValueError, match="client_name"):
        RedisConnector(client_name="has space")


async def test_commands(redis: RedisServer) -> None:
    connector = RedisConnector(redis.host, redis.port, client_name="t-commands")
    with trio.fail_after(10):
        conn = await connector.connect()
        try:
            assert await conn.ping()
            assert await conn.set("k", "v")
            assert await conn.get("k") == b"v"
            assert await conn.get("missing") is None
            assert await conn.set("k", "w", nx=True) is False
            assert await conn.set("t", b"\x00\xff", ex=0.5)
            pttl = await conn.execute("PTTL", "t")
            assert 0 < pttl <= 500
            assert await conn.execute("INCRBY", "n", 5) == 5
            assert await conn.pipeline(
                [["INCR", "n"], ["GET", "k"], ["LRANGE", "nope", 0, -1]]
            ) == [
                6,
                b"v",
                [],
            ]
            with pytest.raises(RedisResponseError, match="WRONGTYPE"):
                await conn.execute("LPUSH", "k", "x")
            # An error inside a pipeline: every reply was read, the connection still works.
            with pytest.raises(RedisResponseError, match="unknown command"):
                await conn.pipeline([["SET", "a", 1], ["NOSUCHCMD"], ["SET", "b", 2]])
            assert await conn.execute("MGET", "a", "b") == [b"1", b"2"]
            assert await conn.delete("a", "b", "zz") == 2
            assert not conn.broken
            assert redis.client_count(name="t-commands") == 1
        finally:
            await connector.close(conn)
        assert conn.broken
        with pytest.raises(RedisConnectionError):
            await conn.get("k")


async def test_scripts_and_noscript_reload(redis: RedisServer) -> None:
    script = "return {KEYS[1], ARGV[1], redis.call('INCR', KEYS[1])}"
    async with open_pool(RedisConnector(redis.host, redis.port), cfg()) as pool:
        with trio.fail_after(10):
            async with pool.connection() as conn:
                sha = await conn.script_load(script)
                assert len(sha) == 40
                assert await conn.evalsha(sha, ["c"], [7]) == [b"c", b"7", 1]
                await conn.execute("SCRIPT", "FLUSH")
                # eval_script survives the flush: NOSCRIPT -> SCRIPT LOAD -> EVALSHA.
                assert await conn.eval_script(script, ["c"], ["x"]) == [b"c", b"x", 2]
                assert await conn.eval_script(script, ["c"], ["y"]) == [b"c", b"y", 3]


async def _settle(redis: RedisServer, name: str, expected: int) -> int:
    """The server notices closed sockets asynchronously: poll briefly for the count."""
    count = -1
    for _ in range(200):
        count = redis.client_count(name=name)
        if count == expected:
            return count
        await trio.sleep(0.01)
    return count


async def test_server_count_matches_pool_count(redis: RedisServer) -> None:
    name = "t-count"
    connector = RedisConnector(redis.host, redis.port, client_name=name)
    with trio.fail_after(20):
        async with open_pool(connector, cfg(min_connections=5, max_connections=20)) as pool:
            assert redis.client_count(name=name) == 5 == pool.statistics().open
            barrier = _Barrier(12)
            async with trio.open_nursery() as nursery:
                for i in range(12):
                    nursery.start_soon(_get_after_barrier, pool, i, barrier)
            s = pool.statistics()
            assert (s.in_use, s.waiting, s.connecting) == (0, 0, 0)
            assert await _settle(redis, name, s.open) == s.open
            assert s.open == 12
        assert await _settle(redis, name, 0) == 0
        assert pool.statistics().open == 0


class _Barrier:
    """``wait()`` returns once ``n`` tasks are waiting."""

    def __init__(self, n: int) -> None:
        self.left = n
        self.all_here = trio.Event()

    async def wait(self) -> None:
        self.left -= 1
        if self.left == 0:
            self.all_here.set()
        await self.all_here.wait()


async def _get_after_barrier(pool: object, i: int, barrier: _Barrier) -> None:
    async with pool.connection() as conn:  # type: ignore[attr-defined]
        await conn.set(f"k{i}", i)
        await barrier.wait()  # all 12 hold theirs: 12 connections are needed at once
        assert await conn.get(f"k{i}") == str(i).encode()


async def test_zero_connections_after_error_exit(redis: RedisServer) -> None:
    name = "t-error"
    with trio.fail_after(20):
        with pytest.raises(ZeroDivisionError):  # noqa: PT012
            async with (
                open_pool(RedisConnector(redis.host, redis.port, client_name=name), cfg()) as pool,
                pool.connection() as conn,
            ):
                await conn.ping()
                1 / 0  # noqa: B018
        assert await _settle(redis, name, 0) == 0


async def test_zero_connections_after_hard_cancel(redis: RedisServer) -> None:
    name = "t-cancel"
    with trio.fail_after(20):
        with trio.CancelScope() as scope:
            async with (
                open_pool(
                    RedisConnector(redis.host, redis.port, client_name=name), cfg(min_connections=3)
                ) as pool,
                trio.open_nursery() as nursery,
            ):

                async def busy() -> None:
                    while True:
                        async with pool.connection() as conn:
                            await conn.execute("BLPOP", "never", 0.05)

                for _ in range(6):
                    nursery.start_soon(busy)
                await trio.testing.wait_all_tasks_blocked()  # commands in flight
                assert redis.client_count(name=name) >= 3
                scope.cancel()
        assert await _settle(redis, name, 0) == 0


async def test_interrupted_command_breaks_connection_and_pool_discards_it(
    redis: RedisServer,
) -> None:
    name = "t-interrupt"
    connector = RedisConnector(redis.host, redis.port, client_name=name)
    with trio.fail_after(20):
        async with open_pool(connector, cfg(min_connections=1, max_connections=1)) as pool:
            seen: list[RedisConnection] = []
            with trio.move_on_after(0.1):
                async with pool.connection() as conn:
                    seen.append(conn)
                    await conn.execute("BLPOP", "never", 5)
            assert seen[0].broken
            # Discarded as it came back (no checkpoint since): none open, none idle; the
            # pool is refilling to min_connections in the background.
            stats = pool.statistics()
            assert (stats.open, stats.idle, stats.in_use) == (0, 0, 0)
            async with pool.connection() as conn2:
                assert conn2 is not seen[0]
                assert await conn2.ping()
            # exactly one replacement, idle again: the broken one closed, not returned
            stats = pool.statistics()
            assert (stats.open, stats.idle, stats.connections_created) == (1, 1, 2)
            assert await _settle(redis, name, 1) == 1
            assert pool.statistics().connections_closed == 1


async def test_server_killed_idle_and_in_use_then_heals(redis: RedisServer) -> None:
    name = "t-fault"
    connector = RedisConnector(redis.host, redis.port, client_name=name)
    config = cfg(min_connections=3, max_connections=6, acquire_timeout=2.0, max_retries=2)
    with trio.fail_after(30):
        async with open_pool(connector, config) as pool:
            started = trio.Event()

            async def in_use() -> None:
                with pytest.raises(BackendUnavailable):  # noqa: PT012
                    async with pool.connection() as conn:
                        started.set()
                        await conn.execute("BLPOP", "never", 10)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(in_use)
                await started.wait()
                await trio.testing.wait_all_tasks_blocked()  # the BLPOP is sent
                redis.stop()  # kills one connection in use and two idle ones
            # Callers get BackendUnavailable within their deadline, never a hang.
            for _ in range(3):
                t0 = trio.current_time()
                with pytest.raises(BackendUnavailable):
                    async with pool.connection() as conn:
                        await conn.ping()
                # real time: acquire_timeout (2 s) plus slack for a busy machine
                assert trio.current_time() - t0 < 5.0
            redis.start()
            # The pool heals by itself: back to min_connections, all usable.
            for _ in range(300):
                if pool.statistics().open >= 3 and redis.client_count(name=name) >= 3:
                    break
                await trio.sleep(0.02)
            async with pool.connection() as conn:
                assert await conn.ping()
            s = pool.statistics()
            assert s.connect_failures > 0
            assert s.open >= 3
            assert await _settle(redis, name, s.open) == s.open
        assert await _settle(redis, name, 0) == 0


async def test_start_failure_names_redis_and_the_error() -> None:
    from tests.servers import free_port

    port = free_port()  # nothing listens there
    config = cfg(min_connections=2, max_retries=1, retry_delay=0.01)
    with trio.fail_after(10), pytest.raises(BackendUnavailable) as info:
        async with open_pool(RedisConnector("127.0.0.1", port), config):
            pass  # pragma: no cover
    assert f"redis://127.0.0.1:{port}/0" in str(info.value)
    assert "2 attempt" in str(info.value)
    assert "Error" in str(info.value)


def test_connectors_satisfy_the_protocol() -> None:
    from dtesn_trio.nurseries import Connector, SQLiteConnector, TCPConnector

    assert isinstance(RedisConnector(), Connector)
    assert isinstance(SQLiteConnector(":memory:"), Connector)
    assert isinstance(TCPConnector("127.0.0.1", 1), Connector)
