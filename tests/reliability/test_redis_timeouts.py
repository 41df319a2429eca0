"""A frozen Redis (SIGSTOP: connections accepted, never answered) against the shared
limit and the result cache: each call is bounded by ``redis.timeout``, the breaker
opens after the fifth failure, and from then on calls do not touch Redis at all."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest
import trio

from dtesn_trio.cache import CacheConfig
from dtesn_trio.errors import BackendUnavailable
from dtesn_trio.limits.shared_rate import SharedRateLimiter, SharedRateLimiterConfig
from dtesn_trio.nurseries import ConnectionPoolConfig, RedisConnector, open_pool
from dtesn_trio.redis_cache import RedisCache
from tests.servers import RedisServer

pytestmark = pytest.mark.redis

TIMEOUT = 0.2


@pytest.fixture
def frozen(redis: RedisServer) -> Iterator[RedisServer]:
    """The test's redis-server; ``freeze()`` is undone (SIGCONT) whatever happens."""
    yield redis
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGCONT)


def _freeze(redis: RedisServer) -> None:
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)


@pytest.mark.parametrize("fail_open", [True, False])
async def test_frozen_redis_costs_a_call_at_most_the_timeout(
    frozen: RedisServer, fail_open: bool
) -> None:
    pool_config = ConnectionPoolConfig(min_connections=1, max_connections=8)
    with trio.fail_after(30):
        async with open_pool(RedisConnector(frozen.host, frozen.port), pool_config) as pool:
            limiter = SharedRateLimiter(
                pool, SharedRateLimiterConfig(rates="1000/s", fail_open=fail_open), timeout=TIMEOUT
            )
            cache = RedisCache(
                pool, CacheConfig(backend="redis", fail_open=fail_open), timeout=TIMEOUT
            )
            await limiter.try_acquire()
            assert await cache.get("k") is None
            _freeze(frozen)
            for component in (limiter, cache):
                call = limiter.try_acquire if component is limiter else lambda: cache.get("k")
                for i in range(6):
                    # Without redis.timeout this waits forever (a frozen Redis accepts
                    # the bytes and never answers): the bound is the property.  (Real
                    # time: 2 s over the timeout is slack for a busy machine.)
                    with trio.fail_after(TIMEOUT + 2.0):
                        if fail_open:
                            await call()
                        else:
                            with pytest.raises(BackendUnavailable) as info:
                                await call()
                            if i == 0:
                                knob = "shared_limit" if component is limiter else "redis"
                                assert f"{knob}.timeout" in str(info.value)
                state = component.breaker.statistics().state.value
                assert state == "open", (component, state)
                before = pool.statistics().total_requests
                # open: no Redis call at all (the count below); the bound is generous
                with trio.fail_after(1.0):
                    if fail_open:
                        await call()
                    else:
                        with pytest.raises(BackendUnavailable):
                            await call()
                assert pool.statistics().total_requests == before
    if fail_open:
        assert limiter.statistics().using_fallback
        assert limiter.statistics().fallback_calls == 7
