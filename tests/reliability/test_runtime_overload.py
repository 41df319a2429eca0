"""The runtime changes made for issue 8: the task count and the GIL switch interval."""

from __future__ import annotations

import sys

import pytest
import trio
import trio.testing

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig, ProcessorConfig
from dtesn_trio.instrument import count_tasks
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.runtime import open_runtime

SMALL = RuntimeConfig(
    model=DTESNConfig(reservoir_size=64, membrane_depth=2), jobs=JobsConfig(enabled=False)
)


async def test_count_tasks_follows_the_tree() -> None:
    before = count_tasks()
    assert before >= 2  # at least the root (init) task and this test's task
    async with trio.open_nursery() as outer:
        for _ in range(3):
            outer.start_soon(trio.sleep_forever)

        async def with_children() -> None:
            async with trio.open_nursery() as inner:
                for _ in range(4):
                    inner.start_soon(trio.sleep_forever)

        outer.start_soon(with_children)
        await trio.testing.wait_all_tasks_blocked()
        assert count_tasks() == before + 3 + 1 + 4
        outer.cancel_scope.cancel()
    assert count_tasks() == before


async def test_count_tasks_of_a_subtree() -> None:
    async with trio.open_nursery() as nursery:
        nursery.start_soon(trio.sleep_forever)
        await trio.testing.wait_all_tasks_blocked()
        this = trio.lowlevel.current_task()
        assert count_tasks(this) == 2  # this task and its one child
        nursery.cancel_scope.cancel()


def test_count_tasks_outside_a_run_is_zero() -> None:
    assert count_tasks() == 0


async def test_runtime_statistics_report_the_task_count() -> None:
    with trio.fail_after(30):
        async with open_runtime(SMALL) as rt:
            await trio.testing.wait_all_tasks_blocked()
            first = rt.statistics().tasks
            assert first == count_tasks() > 0
            assert rt.get_stats()["loop"]["tasks"] == first
            assert rt.metrics_snapshot()["tasks"] == first
            # Steady work leaves no task behind.
            for i in range(20):
                await rt.process(f"input {i}", use_cache=False)
            await trio.testing.wait_all_tasks_blocked()
            assert rt.statistics().tasks == first


async def test_switch_interval_is_set_while_the_runtime_runs_and_restored() -> None:
    before = sys.getswitchinterval()
    config = RuntimeConfig(
        model=SMALL.model,
        jobs=SMALL.jobs,
        processor=ProcessorConfig(switch_interval=0.0007),
    )
    with trio.fail_after(30):
        async with open_runtime(config):
            assert sys.getswitchinterval() == pytest.approx(0.0007)
    assert sys.getswitchinterval() == before


async def test_switch_interval_none_leaves_it_alone() -> None:
    before = sys.getswitchinterval()
    config = RuntimeConfig(
        model=SMALL.model, jobs=SMALL.jobs, processor=ProcessorConfig(switch_interval=None)
    )
    with trio.fail_after(30):
        async with open_runtime(config):
            assert sys.getswitchinterval() == before


def test_processor_defaults_and_validation() -> None:
    assert ProcessorConfig().switch_interval == 0.0005
    for bad in (0.0, -1.0, 2.0, "fast"):
        with pytest.raises(ValueError, match=r"processor\.switch_interval"):
            ProcessorConfig(switch_interval=bad)  # type: ignore[arg-type]


async def test_a_deadline_shorter_than_a_batch_is_refused_at_once() -> None:
    from dtesn_trio.errors import Overloaded

    with trio.fail_after(30):
        async with open_runtime(SMALL) as rt:
            await rt.process("warm up", use_cache=False)
            assert rt.queue is not None
            assert rt.queue.mean_batch_duration is not None
            # Pretend batches take 1 s now (the queue's own measure of its engine).
            rt.queue._batch_ewma = 1.0
            now = trio.current_time()
            with pytest.raises(Overloaded) as info:
                await rt.process("too tight", deadline=now + 0.5, use_cache=False)
            assert info.value.retry_after == 1.0
            assert rt.queue.statistics().submitted == 1  # refused before the queue: no wait
            # Room for one batch: admitted and answered.
            outcome = await rt.process("fits", deadline=trio.current_time() + 5.0)
            assert outcome.batch_size >= 1
            stats = rt.statistics()
    assert stats.queue.submitted == 2  # the refused one never reached the queue
