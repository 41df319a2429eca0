"""The result caches' expiry and bounds: the memory LRU on virtual time, the Redis cache
on a real redis-server (Redis's clock, read with PTTL)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dtesn_trio.cache import CacheConfig, MemoryCache
from dtesn_trio.nurseries import ConnectionPoolConfig, RedisConnector, open_pool
from dtesn_trio.redis_cache import RedisCache
from tests.servers import RedisServer

POOL = ConnectionPoolConfig(min_connections=1, max_connections=2, max_concurrent_creates=1)


async def test_memory_entries_expire_exactly_at_ttl_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = MemoryCache(CacheConfig(ttl_seconds=10.0))
    await cache.set("a", {"v": 1})
    await trio.sleep(5.0)
    await cache.set("b", {"v": 2})
    await trio.sleep(5.0 - 1e-9)
    assert await cache.get("a") == {"v": 1}  # a hit does not extend the TTL
    await trio.sleep(1e-9)
    assert trio.current_time() == 10.0
    assert await cache.get("a") is None  # expired at set time + 10 s
    assert await cache.get("b") == {"v": 2}
    assert cache.statistics().entries == 1  # the expired entry is gone, not kept
    await cache.set("b", {"v": 3})  # writing again restarts the TTL
    await trio.sleep(9.0)
    assert await cache.get("b") == {"v": 3}
    await trio.sleep(1.0)
    assert await cache.get("b") is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.entries) == (3, 2, 0)


async def test_memory_cache_evicts_the_least_recently_used_past_max_entries(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache = MemoryCache(CacheConfig(max_entries=3, ttl_seconds=60.0))
    for key in "abc":
        await cache.set(key, {"k": key})
        await trio.sleep(1.0)
    assert await cache.get("a") == {"k": "a"}  # "a" is now the most recently used
    await cache.set("d", {"k": "d"})  # over the bound: "b", the least recent, goes
    assert cache.statistics().entries == 3
    assert await cache.get("b") is None
    assert [await cache.get(k) for k in "acd"] == [{"k": "a"}, {"k": "c"}, {"k": "d"}]
    await cache.set("c", {"k": "c2"})  # overwriting is not a new entry: nothing goes
    assert cache.statistics().entries == 3
    assert await cache.get("a") == {"k": "a"}
    await cache.set("e", {"k": "e"})  # order of use now d, c, a: "d" goes
    assert await cache.get("d") is None
    assert cache.statistics().entries == 3


@pytest.mark.redis
@pytest.mark.parametrize(("ttl_seconds", "ttl_ms"), [(2.5, 2500), (60.0, 60_000)])
async def test_entries_expire_after_ttl_seconds(
    redis: RedisServer, ttl_seconds: float, ttl_ms: int
) -> None:
    config = CacheConfig(backend="redis", ttl_seconds=ttl_seconds, key_prefix="t:")
    with trio.fail_after(10):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            cache = RedisCache(pool, config)
            await cache.set("k", {"features": [1.0, 2.0]})
            left = int(redis.command("PTTL", "t:k"))
            # the expiry Redis holds is the TTL, counting down (1 s of it may have passed
            # on a busy machine between the SET and the PTTL)
            assert ttl_ms - 1000 < left <= ttl_ms
            # a value written again gets a fresh TTL
            redis.command("PEXPIRE", "t:k", "100000000")
            await cache.set("k", {"features": [3.0]})
            assert 0 < int(redis.command("PTTL", "t:k")) <= ttl_ms
            # once Redis has expired it, it is a miss (expired here by Redis itself, at
            # once, rather than by waiting for the TTL)
            redis.command("PEXPIRE", "t:k", "60000")
            assert await cache.get("k") == {"features": [3.0]}
            redis.command("PEXPIRE", "t:k", "0")
            assert await cache.get("k") is None
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.errors) == (1, 1, 0)
