"""The seed document's snippets, in Trio form, runnable.

``seed/enhanced-async-request-processing.md`` shows its API in three sections -- "Usage
Examples", "Monitoring and Metrics" and "Configuration Options".  Each snippet below
keeps the seed's class names, parameters and stats keys; what changes is that every
resource is opened by ``async with`` (its owner is a nursery you can see) instead of
``start_async_resources()`` calls that leave tasks behind.  The README's migration
table lists the names we changed or dropped, and why.

Run: python examples/seed_usage.py
"""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import trio

from dtesn_trio import (
    ConnectionPoolConfig,
    DTESNConfig,
    RuntimeConfig,
    SQLiteConnector,
    create_app,
    open_pool,
    open_runtime,
    serve,
)
from dtesn_trio.compat import AsyncRequestQueue, ConcurrencyManager, DTESNProcessor
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.server import ServerConfig

# A small model so the example runs in seconds; the seed's snippets do not set one.
MODEL = DTESNConfig(reservoir_size=128, membrane_depth=3)


def show(title: str, stats: dict[str, Any], keys: list[str]) -> None:
    print(f"{title}:")
    for key in keys:
        print(f"  {key:<28} {stats[key]!r}")


async def configuration_options(db_path: str) -> dict[str, Any]:
    """'Configuration Options': ConnectionPoolConfig, ConcurrencyManager, AsyncRequestQueue."""
    pool_config = ConnectionPoolConfig(
        max_connections=500,  # 10x capacity
        min_connections=50,  # higher minimum
        enable_keepalive=True,  # health monitoring
        max_concurrent_creates=50,  # controlled creation
    )
    manager = ConcurrencyManager(
        max_concurrent_requests=500,  # 10x capacity
        max_requests_per_second=1000,  # 10x throughput
        adaptive_scaling=True,  # dynamic scaling
        scale_factor=1.2,  # scaling sensitivity
    )
    queue = AsyncRequestQueue(
        max_queue_size=10000,  # 10x capacity
        priority_levels=5,  # more priority levels
        batch_processing=True,  # enable batching
        batch_size=10,  # batch size
    )
    # The pool is real: 50 SQLite connections opened (and closed on leaving the block).
    async with open_pool(SQLiteConnector(db_path), pool_config) as pool:
        async with pool.connection() as conn:
            await conn.execute("SELECT 1")
        pool_stats = pool.get_stats()
    show(
        "pool.get_stats()",
        pool_stats,
        ["active_connections", "idle_connections", "pool_utilization", "avg_response_time"],
    )
    # The manager admits requests: `async with manager.throttle_request(priority)`.
    async with manager.throttle_request(priority=2):
        await trio.sleep(0.001)
    load = manager.get_current_load()
    show(
        "manager.get_current_load()",
        load,
        ["adaptive_scaling_enabled", "system_load", "avg_response_time", "success_rate"],
    )
    return {"pool": pool_config, "admission": manager.config, "queue": queue.config}


async def basic_enhanced_processing() -> DTESNProcessor:
    """'Usage Examples / Basic Enhanced Processing' and the processor's statistics."""
    processor = DTESNProcessor(
        MODEL,
        max_concurrent_processes=100,  # 10x capacity
        enable_async_optimization=True,
    )
    # Builds the model in a worker thread; nothing is left running afterwards.
    await processor.start_async_resources()
    result = await processor.process(
        input_data="test input",
        enable_concurrent=True,
        use_batching=True,  # batching across callers is the queue's job (below)
    )
    print(f"processor.process(...): {len(result.features)} features")

    # Batching for real: the seed's AsyncRequestQueue feeding the processor in batches.
    queue_spec = AsyncRequestQueue(max_queue_size=10000, priority_levels=5, batch_size=10)

    async def run_batch(items: list[str]) -> list[Any]:
        return list(await processor.process_batch(items))

    async with queue_spec.open(run_batch) as queue, trio.open_nursery() as nursery:
        for i in range(30):
            nursery.start_soon(queue.submit, f"queued input {i}")
    show(
        "queue.get_queue_stats()",
        queue.get_queue_stats(),
        ["total_queued_requests", "priority_queue_sizes", "queue_utilization"],
    )
    stats = processor.get_processing_stats()
    show(
        "processor.get_processing_stats()",
        stats,
        ["throughput", "peak_concurrent", "total_requests"],
    )
    return processor


async def enhanced_app_factory(parts: dict[str, Any], db_path: str) -> dict[str, Any]:
    """'Usage Examples / Enhanced App Factory': create_app(engine=..., config=...)."""
    config = RuntimeConfig(
        model=MODEL,
        admission=parts["admission"],
        queue=parts["queue"],
        jobs=JobsConfig(sqlite_path=db_path),
        shutdown_grace=2.0,
    )
    async with open_runtime(config) as engine:
        server_config = ServerConfig(port=0)
        app = create_app(
            engine=engine,
            config=server_config,
            enable_async_resources=True,  # always: the runtime owns every resource
        )
        stop = trio.Event()
        info = await engine.nursery.start(
            partial(serve, engine, server_config, app=app, shutdown_trigger=stop.wait)
        )
        async with httpx.AsyncClient(base_url=info.url) as client:
            r = await client.post("/v1/process", json={"input": "test input", "priority": 1})
            r.raise_for_status()
            stats = (await client.get("/v1/stats")).json()
        stop.set()
        print(f"POST /v1/process on {info.url}: batch_size {r.json()['batch_size']}")
        # In the runtime, the processor's stats carry the seed's nested dictionaries.
        show(
            "GET /v1/stats -> processing",
            stats["processing"],
            [
                "throughput",
                "peak_concurrent",
                "concurrency_stats",
                "connection_pool_stats",
                "queue_stats",
            ],
        )
        return stats


async def main() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        parts = await configuration_options(str(Path(tmp) / "pool.db"))
        await basic_enhanced_processing()
        return await enhanced_app_factory(parts, str(Path(tmp) / "jobs.db"))


if __name__ == "__main__":
    trio.run(main)
