"""Batch forming looks at each member once (issue 8), with the same timing as before."""

from __future__ import annotations

from collections.abc import Sequence

import trio
import trio.testing

from dtesn_trio.nurseries import BatchQueueConfig, open_batch_queue


class Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[float, list[int]]] = []

    async def __call__(self, items: list[int]) -> Sequence[int]:
        self.calls.append((trio.current_time(), list(items)))
        await trio.lowlevel.checkpoint()
        return items


async def test_oldest_member_leaving_moves_the_batch_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Recorder()
    config = BatchQueueConfig(max_batch_size=10, max_wait=1.0, default_timeout=60.0)
    async with open_batch_queue(engine, config) as queue, trio.open_nursery() as nursery:
        with trio.move_on_after(0.6):  # the oldest: leaves at 0.6
            await queue.submit(1)
        nursery.start_soon(queue.submit, 2)  # joins at 0.6 (after 1 was queued at 0)
        await trio.testing.wait_all_tasks_blocked()
    # Had the batch kept 1's arrival time it would have left at 1.0; with 1 gone it
    # leaves at 2's arrival + max_wait.
    assert engine.calls == [(1.6, [2])]


async def test_a_large_batch_formed_one_arrival_at_a_time(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Recorder()
    n = 2000
    config = BatchQueueConfig(
        max_queue_size=5 * n, max_batch_size=n, max_wait=100.0, default_timeout=1000.0
    )
    async with open_batch_queue(engine, config) as queue, trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(queue.submit, i)
            await trio.sleep(0.001)
        await trio.testing.wait_all_tasks_blocked()
    # One batch, every member, leaving the moment it was full (the last arrival).
    assert len(engine.calls) == 1
    at, items = engine.calls[0]
    assert sorted(items) == list(range(n))
    assert abs(at - 0.001 * (n - 1)) < 1e-6
