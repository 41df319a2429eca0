"""5,000 concurrent connections, each with a request in flight, all answered (issue 8).

The server (hypercorn's Trio worker over the real runtime) and 5,000 keep-alive client
connections (the soak runner's h11 client) share this test's Trio run.  The engine is
held shut by borrowing every token of the processor's thread limiter, so no request can
finish until all 5,000 are inside the server at once; then the tokens go back and every
request must be answered 200.  (``benchmarks/concurrency.py`` measures the other side:
how many requests due at once a server on its defaults answers in time, against the
FastAPI peer.)
"""

from __future__ import annotations

import resource
from functools import partial

import pytest
import trio

from dtesn_trio.cache import CacheConfig
from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import open_runtime
from dtesn_trio.server import ServerConfig, serve
from dtesn_trio.soak import HTTPClientError, open_http_client

CONNECTIONS = 5_000


def _enough_files(needed: int) -> bool:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= needed:
        return True
    if hard != resource.RLIM_INFINITY and hard < needed:
        return False
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))
    return True


def config(connections: int) -> RuntimeConfig:
    # Admission sized for the test: the point is what the server can hold, not the
    # default limits (500 in flight, 1,000/s with a burst of 100) refusing the burst.
    return RuntimeConfig(
        model=DTESNConfig(reservoir_size=64, membrane_depth=2),
        cache=CacheConfig(enabled=False),
        jobs=JobsConfig(enabled=False),
        admission=AdmissionConfig(
            max_concurrent_requests=2 * connections,
            max_requests_per_second=100 * connections,
            burst_limit=2 * connections,
            adaptive_scaling=False,
        ),
        queue=BatchQueueConfig(
            max_queue_size=5 * 2 * connections, max_batch_size=100, adaptive_timeout=False
        ),
    )


@pytest.mark.slow
@pytest.mark.timeout(90)
async def test_5000_concurrent_requests_all_complete() -> None:
    # client + server sockets of 5,000 connections live in this one process
    if not _enough_files(2 * CONNECTIONS + 1000):
        pytest.skip("RLIMIT_NOFILE too low for 10,000 sockets")
    statuses: dict[int, int] = {}
    errors: list[str] = []
    with trio.fail_after(80):
        async with open_runtime(config(CONNECTIONS)) as rt:
            info = await rt.nursery.start(
                partial(
                    serve,
                    rt,
                    # No server deadline, no backlog bound: on a slow machine filling
                    # 5,000 connections takes longer than the default 2.5 s deadline,
                    # and the point is that every request waits for the engine.
                    ServerConfig(
                        port=0, backlog=4096, max_in_flight=None, default_deadline_ms=None
                    ),
                )
            )
            state = info.app.state.dtesn
            threads = rt.processor._threads
            holders = [object() for _ in range(int(threads.total_tokens))]
            for holder in holders:  # the engine is shut: nothing can finish
                threads.acquire_on_behalf_of_nowait(holder)
            async with open_http_client(info.url) as client:

                async def one(i: int) -> None:
                    try:
                        response = await client.post_json(
                            "/v1/process", {"input": f"request {i}", "priority": 2}
                        )
                    except HTTPClientError as exc:
                        errors.append(f"{i}: {exc!r}")
                        return
                    statuses[response.status] = statuses.get(response.status, 0) + 1

                async with trio.open_nursery() as nursery:
                    for i in range(CONNECTIONS):
                        nursery.start_soon(one, i)
                    # Every request is inside the server, waiting for the engine.  (Real
                    # sockets: wait_all_tasks_blocked cannot tell bytes are in flight.)
                    while state.in_flight < CONNECTIONS and not errors and not statuses:  # noqa: ASYNC110
                        await trio.sleep(0.05)
                    peak = state.in_flight
                    connections_open = client.statistics().connections_open
                    stats = rt.statistics()
                    for holder in holders:
                        threads.release_on_behalf_of(holder)
            end = rt.statistics()
    assert errors == []
    assert statuses == {200: CONNECTIONS}
    assert peak == CONNECTIONS
    assert connections_open == CONNECTIONS
    # They were all queued or in a (held) batch at once, none refused.
    assert stats.queue.total_queued + stats.queue.running_items == CONNECTIONS
    assert end.queue.completed == CONNECTIONS
    assert end.admission.refused_overloaded == end.admission.refused_rate_limited == 0
