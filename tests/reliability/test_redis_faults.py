"""Redis (result cache + shared rate limit) killed during a soak, then started again.

A real runtime with ``cache.backend = "redis"`` and ``shared_limit.enabled``, served by
hypercorn on port 0, is driven open-loop at ``RATE`` requests/s (each with a deadline)
while the real redis-server is SIGKILLed for ``DOWN_SECONDS`` and restarted on the same
port.  For both ``fail_open`` settings:

- while Redis is down every request is answered before its deadline: 200 without the
  cache (fail open) or 503 (fail closed), never a hang and never a 5xx other than 503;
- the cache's breaker opens (requests stop trying Redis);
- soon after Redis is back (the figure is printed; the test allows twice
  ``HEALTHY_WITHIN`` s of real time), requests succeed again and the cache is used again;
- at rest, the server-side count of our Redis connections (``CLIENT LIST`` by client
  name) equals the pool's count of open connections: nothing leaked, nothing stranded.

``DOWN_SECONDS`` is 3 in CI; ``DTESN_FAULT_REDIS_DOWN=10`` runs the issue's 10 s.
Figures (time to the first refusal, p99 latency while down, time to healthy) are
printed with ``-s`` and written to ``docs/RELIABILITY-faults.md`` by hand.
"""

from __future__ import annotations

import json
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.cache import CacheConfig
from dtesn_trio.config import RedisSettings
from dtesn_trio.limits.shared_rate import SharedRateLimiterConfig
from dtesn_trio.runtime import Runtime, open_runtime
from tests.server.harness import served
from tests.server.runtimes import runtime_config
from tests.servers import RedisServer

pytestmark = [pytest.mark.redis, pytest.mark.slow]

DOWN_SECONDS = float(os.environ.get("DTESN_FAULT_REDIS_DOWN", "3"))
RATE = 40.0  # requests per second, open loop
DEADLINE_MS = 1000
HEALTHY_WITHIN = 5.0
CLIENT_NAME = "dtesn-trio"  # RedisConnector's default client name


@dataclass
class Sample:
    sent: float  # trio time
    latency: float
    status: int
    code: str | None
    cache_hit: bool


class Soak:
    """Open-loop load: one request every ``1 / RATE`` s, each in its own task."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client
        self.samples: list[Sample] = []
        self.n = 0

    async def one(self, text: str) -> None:
        sent = trio.current_time()
        body = {"input": text, "deadline_ms": DEADLINE_MS}
        try:
            r = await self.client.post("/v1/process", json=body)
        except httpx.TimeoutException:
            self.samples.append(Sample(sent, math.inf, 0, "client_timeout", False))
            return
        latency = trio.current_time() - sent
        data = r.json()
        code = data["error"]["code"] if r.status_code != 200 else None
        hit = bool(data.get("cache_hit")) if r.status_code == 200 else False
        self.samples.append(Sample(sent, latency, r.status_code, code, hit))

    async def run(self, nursery: trio.Nursery, until: trio.Event) -> None:
        period = 1.0 / RATE
        start = trio.current_time()
        while not until.is_set():
            # Half the inputs repeat (cache hits when the cache works), half are new.
            text = f"soak {self.n % 20}" if self.n % 2 else f"fresh {self.n}"
            nursery.start_soon(self.one, text)
            self.n += 1
            await trio.sleep_until(start + self.n * period)

    def between(self, t0: float, t1: float) -> list[Sample]:
        return [s for s in self.samples if t0 <= s.sent < t1]


def _p99(values: list[float]) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.99 * len(ordered)) - 1)]


async def _settled_counts(rt: Runtime, redis: RedisServer) -> tuple[int, int]:
    """(server-side clients named ours, pool's open) once both agree, or after 5 s."""
    pool = rt.pools["redis"]
    server = open_ = -1
    with trio.move_on_after(5):
        while True:
            stats = pool.statistics()
            server = await trio.to_thread.run_sync(lambda: redis.client_count(name=CLIENT_NAME))
            open_ = stats.open
            if stats.connecting == stats.closing == 0 and server == open_:
                break
            await trio.sleep(0.05)
    return server, open_


def _freeze(redis: RedisServer) -> None:
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGSTOP)


def _thaw(redis: RedisServer) -> None:
    assert redis.proc is not None
    redis.proc.send_signal(signal.SIGCONT)


@pytest.mark.parametrize(
    ("fault", "cache_fail_open", "limit_fail_open"),
    [
        ("kill", True, True),
        ("kill", False, False),
        ("kill", False, True),
        ("freeze", True, True),
    ],
    ids=["fail_open", "fail_closed", "cache_fail_closed", "frozen_fail_open"],
)
async def test_redis_down_then_up_during_a_soak(
    tmp_path: Path, redis: RedisServer, fault: str, cache_fail_open: bool, limit_fail_open: bool
) -> None:
    """``kill``: SIGKILL, then a new redis-server on the same port (connections refused
    while down).  ``freeze``: SIGSTOP, then SIGCONT (connections accepted by the kernel,
    never answered: the case that hangs a client without timeouts)."""
    down, up = (RedisServer.stop, RedisServer.start) if fault == "kill" else (_freeze, _thaw)
    try:
        await _soak_through_a_redis_fault(
            tmp_path, redis, down, up, fault, cache_fail_open, limit_fail_open
        )
    finally:
        if fault == "freeze":
            _thaw(redis)


async def _soak_through_a_redis_fault(
    tmp_path: Path,
    redis: RedisServer,
    down: Any,
    up: Any,
    fault: str,
    cache_fail_open: bool,
    limit_fail_open: bool,
) -> None:
    config = runtime_config(
        tmp_path,
        redis=RedisSettings(url=redis.url),
        cache=CacheConfig(backend="redis", ttl_seconds=60, fail_open=cache_fail_open),
        shared_limit=SharedRateLimiterConfig(
            enabled=True, rates="100000/s:10000", fail_open=limit_fail_open
        ),
    )
    fail_open = cache_fail_open and limit_fail_open
    # The breaker that sees Redis first: the shared limit runs before the cache.
    first = "limit" if not limit_fail_open else "cache"
    figures: dict[str, Any] = {
        "fault": fault,
        "cache_fail_open": cache_fail_open,
        "limit_fail_open": limit_fail_open,
        "down_s": DOWN_SECONDS,
        "rate": RATE,
    }
    with trio.fail_after(60 + 2 * DOWN_SECONDS):
        async with open_runtime(config) as rt, served(rt) as s:
            assert rt.cache is not None
            assert rt.shared_limiter is not None
            cache_breaker = rt.cache.breaker  # type: ignore[attr-defined]
            breaker = cache_breaker if first == "cache" else rt.shared_limiter.breaker
            soak = Soak(s.client)
            stop = trio.Event()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(soak.run, nursery, stop)
                await trio.sleep(1.0)  # warm: the cache fills, connections open
                killed = trio.current_time()
                await trio.to_thread.run_sync(down, redis)
                breaker_opened: float | None = None
                while trio.current_time() < killed + DOWN_SECONDS:
                    if breaker_opened is None and breaker.statistics().state.value == "open":
                        breaker_opened = trio.current_time()
                    await trio.sleep(0.01)
                await trio.to_thread.run_sync(up, redis)
                back = trio.current_time()
                # Healthy: requests succeed and the cache answers hits again.
                healthy_at: float | None = None
                while trio.current_time() < back + 2 * HEALTHY_WITHIN + 2:
                    await trio.sleep(0.1)
                    recent = soak.between(trio.current_time() - 0.6, trio.current_time() - 0.1)
                    if (
                        len(recent) >= 10
                        and all(x.status == 200 for x in recent)
                        and any(x.cache_hit for x in recent)
                        and cache_breaker.statistics().state.value == "closed"
                        and rt.shared_limiter.breaker.statistics().state.value == "closed"
                    ):
                        healthy_at = min(x.sent for x in recent)
                        break
                stop.set()
            server_clients, pool_open = await _settled_counts(rt, redis)
            engine = rt.admission.statistics().breaker

    warm = [x for x in soak.samples if x.sent + x.latency < killed]
    down = soak.between(killed, back)
    assert warm
    assert all(x.status == 200 for x in warm), [x for x in warm if x.status != 200][:3]
    assert any(x.cache_hit for x in warm)

    # While down: every request answered before its deadline, never a hang.
    deadline = DEADLINE_MS / 1000
    assert len(down) >= RATE * DOWN_SECONDS * 0.5  # open loop: a busy machine sends late
    # Real time.  The runtime's own bound, before the breakers open, is 3 x
    # redis.timeout (shared limit, cache GET, cache SET) = 0.75 s, after, nothing; a
    # hang would last until the client's 20 s timeout.  2 s over the deadline is slack
    # for the HTTP round trip on a loaded 2-core machine, not for a hang.
    slow = [x for x in down if x.latency > deadline + 2.0]
    assert not slow, slow[:5]
    statuses = {x.status for x in down}
    if fail_open:
        assert statuses == {200}, [x for x in down if x.status != 200][:5]
        assert not any(x.cache_hit for x in down[len(down) // 10 :])
    else:
        assert statuses <= {200, 503}, [x for x in down if x.status not in (200, 503)][:5]
        refusals = [x for x in down if x.status == 503]
        assert len(refusals) >= len(down) * 0.8
        assert {x.code for x in refusals} == {"backend_unavailable"}
        first_503 = min(x.sent + x.latency for x in refusals)
        figures["first_503_after_kill_ms"] = round((first_503 - killed) * 1000, 1)
        figures["refusal_p99_ms"] = round(_p99([x.latency for x in refusals]) * 1000, 1)
    assert breaker_opened is not None, f"the {first} breaker never opened"
    # Redis failures are the Redis breakers' business: the engine's stays closed.
    assert engine.state.value == "closed"
    assert engine.failed_calls_total == 0
    figures["breaker_open_after_kill_ms"] = round((breaker_opened - killed) * 1000, 1)
    figures["down_p99_ms"] = round(_p99([x.latency for x in down]) * 1000, 1)
    figures["down_max_ms"] = round(max(x.latency for x in down) * 1000, 1)
    settled = [x.latency for x in down if x.sent > breaker_opened]
    figures["down_p50_breaker_open_ms"] = round(sorted(settled)[len(settled) // 2] * 1000, 1)
    figures["down_p99_breaker_open_ms"] = round(_p99(settled) * 1000, 1)

    # Back: healthy within HEALTHY_WITHIN seconds, and no connection leaked.
    assert healthy_at is not None, "not healthy after redis came back"
    figures["healthy_after_restart_s"] = round(max(0.0, healthy_at - back), 2)
    # real time: the breakers' 2 s wait and the pool's reconnect, doubled for a busy machine
    assert healthy_at - back <= 2 * HEALTHY_WITHIN
    figures["redis_clients"] = server_clients
    figures["pool_open"] = pool_open
    assert server_clients == pool_open
    assert pool_open >= 1
    print("\nredis-fault figures:", json.dumps(figures))
