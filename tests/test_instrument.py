"""The loop monitor measures real blocking steps, and nothing else."""

from __future__ import annotations

import time

import trio

from dtesn_trio import LoopMonitor


async def test_monitor_records_the_blocking_step_and_its_task() -> None:
    monitor = LoopMonitor(slow_step_threshold=0.02)
    trio.lowlevel.add_instrument(monitor)  # installed mid-step: that step is not counted
    try:
        await trio.lowlevel.checkpoint()

        async def blocker() -> None:
            time.sleep(0.05)  # noqa: ASYNC251 - the point of the test: block the loop

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocker, name="blocker")
        await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(monitor)
    stats = monitor.statistics()
    assert 0.05 <= stats.max_step < 1.0
    assert stats.max_step_task == "blocker"
    assert stats.slow_steps == 1
    assert monitor.reset_window() == stats.max_step
    assert monitor.reset_window() == 0.0
