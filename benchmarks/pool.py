"""Connection pool benchmark: the pool's overhead, Redis through the pool, fill time.

Every figure has a baseline measured in the same run:

- ``pool_ops_per_s``: acquire+release through ``open_pool`` with an in-memory connector,
  against ``bare_limiter_ops_per_s``: ``async with trio.CapacityLimiter`` (the least a
  pool can do) -> ``pool_ratio`` (target >= 0.7).
- ``pool_get_per_s``: sequential Redis GET through the pool and our hiredis connector,
  against ``raw_socket_get_per_s``: the same GET bytes on a bare trio socket ->
  ``redis_ratio`` (target >= 0.5).  ``coredis_get_per_s`` is measured too (when coredis
  is installed): the library the connector was chosen against.
- ``fill_500_s``: opening 500 Redis connections with 50 concurrent creates, against
  ``fill_500_serial_s`` (one at a time) -> ``fill_speedup``.  On localhost a connect
  costs almost nothing but CPU, so this is about 1 on a small machine; the same fill
  over a link with 5 ms added per connect (``fill_500_5ms_s`` /
  ``fill_500_5ms_serial_s`` -> ``fill_speedup_5ms``) shows what bounded concurrent
  creation buys (HikariCP's single adder thread is its open issue #1896).

Run from the repository root: ``python benchmarks/pool.py [--quick] [--json]``.  It
starts its own redis-server on a free port and stops it by PID.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import trio  # noqa: E402

from dtesn_trio.nurseries import ConnectionPoolConfig, RedisConnector, open_pool  # noqa: E402
from tests.servers import RedisServer  # noqa: E402


class _Conn:
    __slots__ = ()


class MemoryConnector:
    name = "memory"

    async def connect(self) -> _Conn:
        await trio.lowlevel.checkpoint()
        return _Conn()

    async def check(self, conn: _Conn) -> None:
        await trio.lowlevel.checkpoint()

    async def close(self, conn: _Conn) -> None:
        await trio.lowlevel.checkpoint()


def _best(samples: list[float]) -> float:
    return max(samples)


async def bench_limiter(n: int) -> float:
    limiter = trio.CapacityLimiter(10)
    t0 = time.perf_counter()
    for _ in range(n):
        async with limiter:
            pass
    return n / (time.perf_counter() - t0)


async def bench_pool_ops(n: int) -> float:
    config = ConnectionPoolConfig(min_connections=10, max_connections=10)
    async with open_pool(MemoryConnector(), config) as pool:
        t0 = time.perf_counter()
        for _ in range(n):
            async with pool.connection():
                pass
        return n / (time.perf_counter() - t0)


async def bench_raw_get(server: RedisServer, n: int) -> float:
    stream = await trio.open_tcp_stream(server.host, server.port)
    payload = b"*2\r\n$3\r\nGET\r\n$5\r\nbench\r\n"
    expected = b"$5\r\nvalue\r\n"
    async with stream:
        t0 = time.perf_counter()
        for _ in range(n):
            await stream.send_all(payload)
            buf = b""
            while len(buf) < len(expected):
                buf += await stream.receive_some(65536)
        rate = n / (time.perf_counter() - t0)
    if buf != expected:
        raise RuntimeError(f"unexpected reply {buf!r}")
    return rate


async def bench_pool_get(server: RedisServer, n: int) -> float:
    config = ConnectionPoolConfig(min_connections=4, max_connections=4)
    connector = RedisConnector(server.host, server.port, client_name="bench-pool")
    async with open_pool(connector, config) as pool:
        t0 = time.perf_counter()
        for _ in range(n):
            async with pool.connection() as conn:
                value = await conn.get("bench")
        rate = n / (time.perf_counter() - t0)
    if value != b"value":
        raise RuntimeError(f"unexpected value {value!r}")
    return rate


async def bench_coredis_get(server: RedisServer, n: int) -> float | None:
    try:
        import coredis
    except ImportError:
        return None
    client: Any = coredis.Redis(host=server.host, port=server.port)
    async with client:
        await client.get("bench")
        t0 = time.perf_counter()
        for _ in range(n):
            await client.get("bench")
        return n / (time.perf_counter() - t0)


class SlowLinkRedisConnector(RedisConnector):
    """Redis on localhost with 5 ms added before each connect: a network round trip."""

    async def connect(self) -> Any:
        await trio.sleep(0.005)
        return await super().connect()


async def bench_fill(server: RedisServer, concurrent: int, *, slow_link: bool = False) -> float:
    config = ConnectionPoolConfig(
        min_connections=500, max_connections=500, max_concurrent_creates=concurrent
    )
    cls = SlowLinkRedisConnector if slow_link else RedisConnector
    connector = cls(server.host, server.port, client_name="bench-fill")
    t0 = time.perf_counter()
    async with open_pool(connector, config) as pool:
        elapsed = time.perf_counter() - t0
        if pool.statistics().open != 500:
            raise RuntimeError("pool did not open 500 connections")
    return elapsed


async def run(quick: bool) -> dict[str, Any]:
    ops = 20_000 if quick else 50_000
    gets = 3_000 if quick else 10_000
    rounds = 8 if quick else 20  # interleaved; best of each, to see past other load
    out: dict[str, Any] = {}
    limiter, pool = [], []
    for _ in range(rounds):  # interleaved, so that both see the same machine load
        limiter.append(await bench_limiter(ops))
        pool.append(await bench_pool_ops(ops))
    out["bare_limiter_ops_per_s"] = _best(limiter)
    out["pool_ops_per_s"] = _best(pool)
    out["pool_ratio"] = out["pool_ops_per_s"] / out["bare_limiter_ops_per_s"]

    server = RedisServer()
    server.start()
    try:
        server.command("SET", "bench", "value")
        raw, pooled, core = [], [], []
        for _ in range(rounds):
            raw.append(await bench_raw_get(server, gets))
            pooled.append(await bench_pool_get(server, gets))
        for _ in range(1 if quick else 2):
            rate = await bench_coredis_get(server, gets // 2)
            if rate is not None:
                core.append(rate)
        out["raw_socket_get_per_s"] = _best(raw)
        out["pool_get_per_s"] = _best(pooled)
        out["redis_ratio"] = out["pool_get_per_s"] / out["raw_socket_get_per_s"]
        out["coredis_get_per_s"] = _best(core) if core else None
        out["fill_500_s"] = await bench_fill(server, 50)
        out["fill_500_serial_s"] = await bench_fill(server, 1)
        out["fill_speedup"] = out["fill_500_serial_s"] / out["fill_500_s"]
        out["fill_500_5ms_s"] = await bench_fill(server, 50, slow_link=True)
        out["fill_500_5ms_serial_s"] = await bench_fill(server, 1, slow_link=True)
        out["fill_speedup_5ms"] = out["fill_500_5ms_serial_s"] / out["fill_500_5ms_s"]
    finally:
        server.close()
    out["quick"] = quick
    out["python"] = platform.python_version()
    out["trio"] = trio.__version__
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short run (< 45 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    result = trio.run(run, args.quick)
    if args.json:
        print(json.dumps(result))
        return
    rows = [
        ("acquire+release, pool (memory)", "pool_ops_per_s", "/s"),
        ("acquire+release, bare CapacityLimiter", "bare_limiter_ops_per_s", "/s"),
        ("  pool_ratio (target >= 0.7)", "pool_ratio", ""),
        ("Redis GET through the pool", "pool_get_per_s", "/s"),
        ("Redis GET on a raw trio socket", "raw_socket_get_per_s", "/s"),
        ("  redis_ratio (target >= 0.5)", "redis_ratio", ""),
        ("Redis GET with coredis (reference)", "coredis_get_per_s", "/s"),
        ("open 500 connections, 50 at a time", "fill_500_s", " s"),
        ("open 500 connections, 1 at a time", "fill_500_serial_s", " s"),
        ("  fill_speedup (localhost: connects cost ~0)", "fill_speedup", "x"),
        ("open 500, 5 ms link, 50 at a time", "fill_500_5ms_s", " s"),
        ("open 500, 5 ms link, 1 at a time", "fill_500_5ms_serial_s", " s"),
        ("  fill_speedup_5ms", "fill_speedup_5ms", "x"),
    ]
    print(f"{'measurement':<46}{'value':>14}")
    for label, key, unit in rows:
        v = result[key]
        text = "n/a" if v is None else (f"{v:,.0f}{unit}" if v > 100 else f"{v:.3f}{unit}")
        print(f"{label:<46}{text:>14}")


if __name__ == "__main__":
    main()
