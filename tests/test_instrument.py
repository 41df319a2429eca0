"""The loop monitor measures real blocking steps, and nothing else."""

from __future__ import annotations

import gc
import time
import tracemalloc

import trio

from dtesn_trio import LoopMonitor
from dtesn_trio.instrument import memory_statistics


async def test_monitor_records_the_blocking_step_and_its_task() -> None:
    now = [0.0]  # the monitor's clock: only the blocker's step takes any time
    monitor = LoopMonitor(slow_step_threshold=0.02, clock=lambda: now[0])
    trio.lowlevel.add_instrument(monitor)  # installed mid-step: that step is not counted
    try:
        await trio.lowlevel.checkpoint()

        async def blocker() -> None:
            now[0] += 0.05  # blocks the loop for 50 ms of the monitor's clock

        async with trio.open_nursery() as nursery:
            nursery.start_soon(blocker, name="blocker")
        await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(monitor)
    stats = monitor.statistics()
    assert stats.max_step == 0.05
    assert stats.max_step_task == "blocker"
    assert stats.slow_steps == 1
    assert stats.steps >= 3  # this task twice, the blocker once
    assert monitor.reset_window() == 0.05
    assert monitor.reset_window() == 0.0


async def test_monitor_measures_real_time_by_default() -> None:
    monitor = LoopMonitor(slow_step_threshold=0.02)
    trio.lowlevel.add_instrument(monitor)
    try:
        await trio.lowlevel.checkpoint()
        time.sleep(0.05)  # noqa: ASYNC251 - the point of the test: block the loop
        await trio.lowlevel.checkpoint()
    finally:
        trio.lowlevel.remove_instrument(monitor)
    # A lower bound only: a busy machine makes any step longer, never shorter.
    stats = monitor.statistics()
    assert stats.max_step >= 0.05
    assert stats.slow_steps >= 1


async def test_the_probe_sees_a_blocked_loop_then_traces_and_names_the_blocker() -> None:
    monitor = LoopMonitor(slow_step_threshold=0.02, trace_for=60.0)

    async def blocker() -> None:
        time.sleep(0.3)  # noqa: ASYNC251 - the point of the test: block the loop

    async with trio.open_nursery() as nursery:
        await nursery.start(monitor.run, 0.005)
        assert monitor.statistics().steps == 0  # a probe: no step is timed
        time.sleep(0.1)  # noqa: ASYNC251 - blocks the loop, not traced yet
        # the probe wakes (>= 95 ms late: it slept 5 ms at most), records the lag and
        # starts tracing every step
        await trio.testing.wait_all_tasks_blocked()
        lagged = monitor.statistics()
        nursery.start_soon(blocker, name="blocker")
        await trio.testing.wait_all_tasks_blocked()
        traced = monitor.statistics()
        nursery.cancel_scope.cancel()
    steps = monitor.statistics().steps
    for _ in range(3):
        await trio.lowlevel.checkpoint()
    # Lower bounds only: a busy machine makes any step longer, never shorter.
    assert lagged.max_step >= 0.095
    assert lagged.max_step_task == ""  # a lag, not a traced step
    assert lagged.slow_steps >= 1
    assert traced.max_step >= 0.3
    assert traced.max_step_task == "blocker"
    assert traced.steps > lagged.steps + 1  # every step is timed now
    assert monitor.statistics().steps == steps  # cancelled: the instrument is gone


def test_memory_statistics_follow_live_objects_not_rss() -> None:
    before = memory_statistics()
    assert before.rss_bytes is not None
    assert before.rss_bytes > 0
    assert before.allocated_blocks > 0
    held = [object() for _ in range(50_000)]
    during = memory_statistics()
    assert during.allocated_blocks - before.allocated_blocks >= 50_000
    del held
    after = memory_statistics()
    assert after.allocated_blocks - before.allocated_blocks < 5_000


def test_memory_statistics_report_tracemalloc_only_while_tracing() -> None:
    was_tracing = tracemalloc.is_tracing()
    if not was_tracing:
        assert memory_statistics().traced_bytes is None
        tracemalloc.start()
    try:
        base = memory_statistics()
        assert base.traced_bytes is not None
        assert base.traced_peak_bytes is not None
        block = bytearray(4 * 1024 * 1024)
        grown = memory_statistics()
        assert grown.traced_bytes is not None
        assert grown.traced_bytes - base.traced_bytes >= len(block)
        del block
        shrunk = memory_statistics()
        assert shrunk.traced_bytes is not None
        assert shrunk.traced_peak_bytes is not None
        assert shrunk.traced_bytes < grown.traced_bytes
        assert shrunk.traced_peak_bytes >= grown.traced_bytes
    finally:
        if not was_tracing:
            tracemalloc.stop()


def test_memory_statistics_collect_drops_cyclic_garbage() -> None:
    was_enabled = gc.isenabled()
    gc.disable()  # the garbage below must wait for the collection we ask for
    try:
        for _ in range(20_000):
            cycle: list[object] = []
            cycle.append(cycle)
        del cycle
        waiting = memory_statistics()
        collected = memory_statistics(collect=True)
    finally:
        if was_enabled:
            gc.enable()
    assert waiting.allocated_blocks - collected.allocated_blocks >= 20_000
