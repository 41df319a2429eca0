"""Embedded callers on the runtime's defaults wait their turn (issue 13).

An in-process caller with no deadline expects what a ``trio.CapacityLimiter`` gives:
backpressure, not refusal.  With ``open_runtime``'s defaults, 1,000 tasks calling
``rt.process`` at once are all answered (the seed's burst of 100 refused 886 of them),
and a level that is full makes its callers wait for space instead of refusing them.
"""

from __future__ import annotations

import trio

from dtesn_trio import DTESNConfig, RuntimeConfig, open_runtime
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig

SMALL = DTESNConfig(reservoir_size=32, membrane_depth=2)


async def test_a_thousand_tasks_at_once_are_all_answered() -> None:
    config = RuntimeConfig(model=SMALL, jobs=JobsConfig(enabled=False))
    answered = 0
    batch_sizes: list[int] = []

    async def call(i: int) -> None:
        nonlocal answered
        outcome = await rt.process(f"embedded {i}")
        answered += 1
        batch_sizes.append(outcome.batch_size)

    with trio.fail_after(120):
        async with open_runtime(config) as rt, trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(call, i)
        stats = rt.get_stats()
    assert answered == 1000
    load = stats["load"]
    assert (load["refused_rate_limited"], load["refused_overloaded"]) == (0, 0)
    # they waited in the queue, and the queue batched them while the workers were busy
    assert max(batch_sizes) > 1


async def test_a_full_level_makes_callers_wait_not_fail() -> None:
    # capacity 2 per level: 40 callers at one level; each waits for space, none refused
    queue = BatchQueueConfig(priority_levels=5, max_queue_size=10, max_batch_size=2)
    config = RuntimeConfig(
        model=SMALL,
        jobs=JobsConfig(enabled=False),
        queue=queue,
        admission=AdmissionConfig(priority_levels=5),
    )
    results: list[int] = []

    async def call(i: int) -> None:
        outcome = await rt.process(f"full level {i}", priority=4)
        results.append(outcome.batch_size)

    with trio.fail_after(120):
        async with open_runtime(config) as rt, trio.open_nursery() as nursery:
            for i in range(40):
                nursery.start_soon(call, i)
        queue_stats = rt.queue.statistics() if rt.queue is not None else None
    assert len(results) == 40
    assert queue_stats is not None
    assert (queue_stats.rejected_full, queue_stats.rejected_deadline) == (0, 0)
