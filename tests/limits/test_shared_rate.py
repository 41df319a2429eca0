"""The shared GCRA limit, on a real redis-server: Redis's clock, several rates, fallback."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dtesn_trio.errors import BackendUnavailable, RateLimited
from dtesn_trio.limits.shared_rate import (
    Rate,
    SharedRateLimiter,
    SharedRateLimiterConfig,
    parse_rates,
)
from dtesn_trio.nurseries import ConnectionPoolConfig, RedisConnector, open_pool
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

POOL = ConnectionPoolConfig(min_connections=1, max_connections=4, max_concurrent_creates=1)


def redis_time(redis: RedisServer) -> float:
    """Redis's own clock (``TIME``), the one the GCRA script reads, in seconds."""
    script = "local t = redis.call('TIME') return t[1] * 1000000 + t[2]"
    return int(redis.command("EVAL", script, "0")) / 1e6


async def test_burst_then_refusal_with_exact_retry_after(redis: RedisServer) -> None:
    config = SharedRateLimiterConfig(rates="1/min:5")
    with trio.fail_after(10):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            limiter = SharedRateLimiter(pool, config)
            before = redis_time(redis)
            for _ in range(5):
                await limiter.try_acquire()
            with pytest.raises(RateLimited) as info:
                await limiter.try_acquire()
            ttl_ms = int(redis.command("PTTL", "{dtesn:rate:global}:0"))
            took = redis_time(redis) - before
    # The 6th call is one emission interval (60 s) early, minus the time (on Redis's
    # clock) since the first: bracketed by two readings of that clock.
    assert info.value.retry_after is not None
    assert 60.0 - took - 1e-6 <= info.value.retry_after <= 60.0
    stats = limiter.statistics()
    assert (stats.admitted, stats.limited, stats.using_fallback) == (5, 1, False)
    # The key lives exactly until the rate would be full again: 5 intervals after the first.
    assert 300_000 - took * 1000 - 1 <= ttl_ms <= 300_000


async def test_two_instances_share_one_budget(redis: RedisServer) -> None:
    # one token a minute: none comes back while the 20 calls run
    config = SharedRateLimiterConfig(key="shared-test", rates="1/min:6")
    admitted = 0
    with trio.fail_after(10):
        async with (
            open_pool(RedisConnector(redis.host, redis.port), POOL) as pool_a,
            open_pool(RedisConnector(redis.host, redis.port), POOL) as pool_b,
        ):
            limiters = [SharedRateLimiter(pool_a, config), SharedRateLimiter(pool_b, config)]
            for i in range(20):
                try:
                    await limiters[i % 2].try_acquire()
                    admitted += 1
                except RateLimited:
                    pass
    assert admitted == 6


async def test_several_rates_the_strictest_wins(redis: RedisServer) -> None:
    config = SharedRateLimiterConfig(rates="100/s:100;3/min:3")
    with trio.fail_after(10):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            limiter = SharedRateLimiter(pool, config)
            before = redis_time(redis)
            for _ in range(3):
                await limiter.try_acquire()
            with pytest.raises(RateLimited) as info:
                await limiter.try_acquire()
            took = redis_time(redis) - before
    # The per-minute rate refuses: the next slot is 20 s after the first call, not 10 ms.
    assert info.value.retry_after is not None
    assert 20.0 - took - 1e-6 <= info.value.retry_after <= 20.0


async def test_acquire_sleeps_retry_after_instead_of_polling(redis: RedisServer) -> None:
    config = SharedRateLimiterConfig(rates="50/s:1")
    with trio.fail_after(10):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            limiter = SharedRateLimiter(pool, config)
            for _ in range(10):
                await limiter.acquire()
    stats = limiter.statistics()
    assert stats.admitted == 10
    # Each waiter sleeps the exact retry_after once: about one refusal per call, not dozens.
    assert stats.limited <= 12


@pytest.mark.parametrize("fail_open", [True, False])
async def test_redis_down_falls_back_then_returns(redis: RedisServer, fail_open: bool) -> None:
    config = SharedRateLimiterConfig(rates="100/s:20", instances=2, fail_open=fail_open)
    pool_config = ConnectionPoolConfig(
        min_connections=1,
        max_connections=2,
        max_concurrent_creates=1,
        max_retries=0,
        retry_delay=0.01,
        connection_timeout=0.5,
        acquire_timeout=0.5,
    )
    with trio.fail_after(20):
        async with open_pool(RedisConnector(redis.host, redis.port), pool_config) as pool:
            limiter = SharedRateLimiter(pool, config)
            await limiter.try_acquire()
            redis.stop()
            if fail_open:
                # This instance's share of the burst (20 / 2 instances) goes through locally.
                for _ in range(10):
                    await limiter.try_acquire()
                with pytest.raises(RateLimited):
                    await limiter.try_acquire()
                assert limiter.statistics().using_fallback
            else:
                with pytest.raises(BackendUnavailable):
                    await limiter.try_acquire()
            redis.start()
            with trio.fail_after(10):
                while True:
                    try:
                        await limiter.try_acquire()
                    except (BackendUnavailable, RateLimited):
                        await trio.sleep(0.05)
                        continue
                    if not limiter.statistics().using_fallback:
                        break
    assert not limiter.statistics().using_fallback


async def test_set_rates_applies_on_the_next_call_and_to_the_fallback(
    redis: RedisServer,
) -> None:
    config = SharedRateLimiterConfig(rates="1/h:1", instances=2)
    pool_config = ConnectionPoolConfig(
        min_connections=1,
        max_connections=2,
        max_concurrent_creates=1,
        max_retries=0,
        retry_delay=0.01,
        connection_timeout=0.5,
        acquire_timeout=0.5,
    )
    with trio.fail_after(20):
        async with open_pool(RedisConnector(redis.host, redis.port), pool_config) as pool:
            limiter = SharedRateLimiter(pool, config)
            await limiter.try_acquire()  # the whole burst of one
            with pytest.raises(RateLimited):
                await limiter.try_acquire()
            with pytest.raises(ValueError, match="must keep the number of rates"):
                limiter.set_rates([Rate(1, 3600.0, 10), Rate(5, 1.0)])
            # A burst of 10 an hour from the next call on: 9 more, then refused.
            limiter.set_rates([Rate(1, 3600.0, 10)])
            for _ in range(9):
                await limiter.try_acquire()
            with pytest.raises(RateLimited) as info:
                await limiter.try_acquire()
            assert info.value.retry_after is not None
            assert 3590.0 < info.value.retry_after <= 3600.0  # one interval, minus the calls
            assert limiter.statistics().admitted == 10
            # The local fallback follows the new rate: this instance's share of the
            # burst (10 // 2 instances) goes through while Redis is down, then no more.
            redis.stop()
            for _ in range(5):
                await limiter.try_acquire()
            with pytest.raises(RateLimited):
                await limiter.try_acquire()
            stats = limiter.statistics()
    assert stats.using_fallback
    assert stats.fallback_calls == 6


def test_parse_rates_reads_specs_and_names_bad_ones() -> None:
    assert parse_rates("100/s:20; 5000/min") == (Rate(100.0, 1.0, 20), Rate(5000.0, 60.0))
    assert parse_rates("10/5s") == (Rate(10.0, 5.0),)
    with pytest.raises(ValueError, match=r"shared_limit\.rates: cannot read '10/fortnight'"):
        parse_rates("10/fortnight")
    with pytest.raises(ValueError, match="must name at least one rate"):
        SharedRateLimiterConfig(rates=" ; ")


async def test_hung_redis_times_out_and_only_one_call_probes(redis: RedisServer) -> None:
    """A Redis that stops answering (CLIENT PAUSE) costs one call ``timeout``; while a
    probe is out, every other call goes straight to the fallback without the pool."""
    # A probe is out for one timeout (0.5 s): the five calls below must run inside it.
    config = SharedRateLimiterConfig(rates="1000/s:100", timeout=0.5)
    probe_done = trio.Event()
    with trio.fail_after(15):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            limiter = SharedRateLimiter(pool, config)
            await limiter.try_acquire()
            # (the pause outlasts the probe below on a busy machine; UNPAUSE in the
            # finally clause is itself paused until then)
            redis.command("CLIENT", "PAUSE", "3000", "ALL")
            try:
                start = trio.current_time()
                await limiter.try_acquire()  # no answer: fallback after the timeout
                # real time: one timeout, and back well before the 3 s pause ends
                assert 0.5 <= trio.current_time() - start < 2.5
                assert limiter.statistics().using_fallback

                async def probe() -> None:
                    await limiter.try_acquire()
                    probe_done.set()

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(probe)
                    await trio.testing.wait_all_tasks_blocked()
                    requests = pool.statistics().total_requests
                    for _ in range(5):
                        await limiter.try_acquire()
                    assert not probe_done.is_set()
                    assert pool.statistics().total_requests == requests
                stats = limiter.statistics()
                assert (stats.fallback_calls, stats.admitted) == (7, 1)
            finally:
                redis.command("CLIENT", "UNPAUSE")
            await limiter.try_acquire()  # Redis answers the next probe: shared again
    stats = limiter.statistics()
    assert (stats.using_fallback, stats.admitted) == (False, 2)


async def test_cancelled_probe_frees_the_probe_slot(redis: RedisServer) -> None:
    config = SharedRateLimiterConfig(rates="1000/s:100", timeout=0.2)
    with trio.fail_after(15):
        async with open_pool(RedisConnector(redis.host, redis.port), POOL) as pool:
            limiter = SharedRateLimiter(pool, config)
            redis.command("CLIENT", "PAUSE", "3000", "ALL")  # outlasts the probe below
            try:
                await limiter.try_acquire()  # times out: fallback
                with trio.move_on_after(0.05):
                    await limiter.try_acquire()  # the probe, cancelled mid-flight
                assert limiter.statistics().using_fallback
            finally:
                redis.command("CLIENT", "UNPAUSE")
            await limiter.try_acquire()  # probes again (the slot was freed): shared
    stats = limiter.statistics()
    assert (stats.using_fallback, stats.admitted, stats.fallback_calls) == (False, 1, 1)
