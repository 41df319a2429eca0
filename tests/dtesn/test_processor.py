"""The processor: results, limits, BLAS control, stats, and cancellation."""

from __future__ import annotations

import threading
from functools import partial

import numpy as np
import pytest
import trio
import trio.testing
from threadpoolctl import threadpool_info

from dtesn_trio.dtesn import (
    DTESNConfig,
    DTESNModel,
    DTESNProcessor,
    DTESNResult,
    ProcessorConfig,
    RateWindow,
    blas_threads,
)
from dtesn_trio.errors import InvalidRequest
from dtesn_trio.executor import Executor

SMALL = DTESNConfig(membrane_depth=3, reservoir_size=60, seed=7)


class GatedModel(DTESNModel):
    """A real model whose single path waits for the test to open a gate (in its thread)."""

    def __init__(self, config: DTESNConfig) -> None:
        super().__init__(config)
        self.entered = threading.Semaphore(0)
        self.gate = threading.Event()
        self.blas_seen: list[int] = []

    def process_one(self, x: object) -> DTESNResult:
        self.blas_seen.append(
            min(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")
        )
        self.entered.release()
        self.gate.wait(10)
        return super().process_one(x)


async def wait_entered(model: GatedModel) -> None:
    """Wait (off the loop) until one call has entered the model in its worker thread."""
    assert await trio.to_thread.run_sync(model.entered.acquire, True, 10)


def check_books(proc: DTESNProcessor) -> None:
    st = proc.statistics()
    done = st.completed_requests + st.failed_requests + st.cancelled_requests
    assert done + st.concurrent_requests == st.total_requests
    assert (
        st.available_processing_slots + min(st.concurrent_requests, st.max_concurrent_processes)
        >= st.max_concurrent_processes
    )


async def test_process_and_batch_compute_the_models_numbers() -> None:
    model = DTESNModel(SMALL)
    proc = DTESNProcessor(model, ProcessorConfig(max_concurrent_processes=4))
    with trio.fail_after(30):
        one = await proc.process("hello")
        batch = await proc.process_batch(["hello", [0.1, 0.2], "x"])
    np.testing.assert_array_equal(one.features, model.process_one("hello").features)
    np.testing.assert_allclose(batch[0].features, one.features, rtol=0, atol=1e-12)
    assert [r.steps for r in batch] == [5, 2, 1]
    st = proc.statistics()
    assert (st.total_requests, st.completed_requests, st.batch_requests) == (4, 4, 1)
    assert (st.failed_requests, st.cancelled_requests, st.concurrent_requests) == (0, 0, 0)
    assert st.peak_concurrent == 3
    assert st.avg_processing_time > 0
    check_books(proc)


async def test_seed_constructor_and_stats_keys() -> None:
    proc = DTESNProcessor(max_concurrent_processes=100, enable_async_optimization=True)
    assert proc.config == ProcessorConfig()
    assert proc.model_config == DTESNConfig()
    stats = proc.get_processing_stats()
    for key in (
        "total_requests", "concurrent_requests", "failed_requests", "avg_processing_time",
        "throughput", "peak_concurrent", "batch_requests", "max_concurrent_processes",
        "available_processing_slots", "async_optimization_enabled", "concurrency_stats",
        "connection_pool_stats", "queue_stats",
    ):  # fmt: skip
        assert key in stats
    assert stats["max_concurrent_processes"] == stats["available_processing_slots"] == 100
    assert stats["queue_stats"] == {}
    withq = DTESNProcessor(SMALL, queue_stats=lambda: {"depth": 3})
    assert withq.get_processing_stats()["queue_stats"] == {"depth": 3}
    serial = DTESNProcessor(SMALL, enable_async_optimization=False)
    assert serial.statistics().worker_threads == 1


async def test_seed_process_keywords_are_accepted() -> None:
    proc = DTESNProcessor(SMALL)
    with trio.fail_after(30):
        await proc.start_async_resources()
        result = await proc.process(
            input_data="test input", enable_concurrent=True, use_batching=True
        )
        await proc.stop_async_resources()
    assert result.steps == 10


def test_threads_never_exceed_the_cores() -> None:
    assert ProcessorConfig().resolved_threads(cores=2) == (2, 1)
    assert ProcessorConfig(blas_threads=2).resolved_threads(cores=2) == (1, 2)
    assert ProcessorConfig(worker_threads=40).resolved_threads(cores=2) == (2, 1)
    assert ProcessorConfig(blas_threads=8, worker_threads=3).resolved_threads(cores=4) == (1, 4)
    assert ProcessorConfig(max_concurrent_processes=500).resolved_threads(cores=8) == (8, 1)
    with pytest.raises(ValueError, match=r"processor\.max_concurrent_processes must be >= 1"):
        ProcessorConfig(max_concurrent_processes=0)
    with pytest.raises(ValueError, match=r"processor\.blas_threads must be >= 1"):
        ProcessorConfig(blas_threads=0)
    with pytest.raises(ValueError, match=r"processor\.throughput_window must be > 0"):
        ProcessorConfig(throughput_window=0)


async def test_blas_is_held_to_one_thread_while_computing() -> None:
    model = GatedModel(SMALL)
    proc = DTESNProcessor(model)
    before = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    model.gate.set()
    with trio.fail_after(30):
        await proc.process("abc")
    assert model.blas_seen == [1]
    after = [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]
    assert after == before


def test_blas_leases_restore_after_the_last_one() -> None:
    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    with blas_threads(2):
        with blas_threads(1):
            assert all(n == 1 for n in blas())
        assert all(n == 1 for n in blas())  # tightened, not loosened, while leases overlap
    assert blas() == before
    # threadpoolctl ignores changes from all but one "controlling" thread: a lease taken
    # in a thread that is still alive must not stop leases in other threads working.
    release = threading.Event()
    leased = threading.Event()

    def lease_then_idle() -> None:
        with blas_threads(1):
            pass
        leased.set()
        release.wait(10)  # alive, like a cached worker thread

    other = threading.Thread(target=lease_then_idle)
    other.start()
    try:
        assert leased.wait(10)
        with blas_threads(1):
            assert all(n == 1 for n in blas())
        assert blas() == before
    finally:
        release.set()
        other.join()


async def test_an_open_thread_executor_holds_blas_until_it_closes() -> None:
    def blas() -> list[int]:
        return [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]

    before = blas()
    executor = Executor(SMALL, ProcessorConfig(blas_threads=1))
    async with executor.open():
        assert all(n == 1 for n in blas())  # between calls too, not only during one
        with blas_threads(1):  # a call's own lease inside it changes nothing
            assert all(n == 1 for n in blas())
        assert all(n == 1 for n in blas())
    assert blas() == before


async def test_a_different_depth_builds_a_variant_once() -> None:
    proc = DTESNProcessor(SMALL)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            for _ in range(3):
                nursery.start_soon(partial(proc.process, "abc", membrane_depth=2))
        deep = await proc.process("abc", membrane_depth=2)
        base = await proc.process("abc")
    assert proc.statistics().model_depths == (2, 3)
    assert deep.features.shape == base.features.shape == (60,)
    assert len(deep.level_summary) == 2
    with pytest.raises(
        InvalidRequest, match="membrane_depth must be an integer between 1 and 8"
    ) as info:
        await proc.process("abc", membrane_depth=9)
    assert info.value.field == "membrane_depth"
    small = DTESNProcessor(DTESNConfig(membrane_depth=1, reservoir_size=3))
    with pytest.raises(InvalidRequest, match="reservoir_size must be >= 4"):
        await small.process("abc", membrane_depth=3)


async def test_bad_input_fails_and_is_counted() -> None:
    proc = DTESNProcessor(SMALL)
    with pytest.raises(InvalidRequest) as info:
        await proc.process_batch(["ok", ""])
    assert info.value.field == "inputs[1]"
    with pytest.raises(InvalidRequest):
        await proc.process([[1.0, 2.0]])
    st = proc.statistics()
    assert (st.total_requests, st.failed_requests, st.concurrent_requests) == (3, 3, 0)
    check_books(proc)


async def test_cancel_while_waiting_for_a_slot() -> None:
    model = GatedModel(SMALL)
    proc = DTESNProcessor(model, ProcessorConfig(max_concurrent_processes=1))
    first: list[DTESNResult] = []

    async def run_first() -> None:
        first.append(await proc.process("first"))

    async def run_second(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            await proc.process("second")
            raise AssertionError("the second call should have been cancelled")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_first)
            await wait_entered(model)
            second = await nursery.start(run_second)
            await trio.testing.wait_all_tasks_blocked()
            st = proc.statistics()
            assert (st.concurrent_requests, st.available_processing_slots) == (2, 0)
            second.cancel()
            await trio.testing.wait_all_tasks_blocked()
            st = proc.statistics()
            assert (st.concurrent_requests, st.cancelled_requests, st.failed_requests) == (1, 1, 0)
            assert st.available_processing_slots == 0  # still held by the first call
            model.gate.set()
    assert len(first) == 1
    st = proc.statistics()
    assert (st.total_requests, st.completed_requests, st.cancelled_requests) == (2, 1, 1)
    assert (st.failed_requests, st.concurrent_requests, st.available_processing_slots) == (0, 0, 1)
    assert st.throughput > 0
    check_books(proc)


async def test_cancel_while_the_thread_runs_finishes_the_work() -> None:
    model = GatedModel(SMALL)
    proc = DTESNProcessor(model, ProcessorConfig(max_concurrent_processes=1))
    seen: list[object] = []

    async def caller(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
        with trio.CancelScope() as scope:
            task_status.started(scope)
            seen.append(await proc.process("abc"))
            await trio.lowlevel.checkpoint()  # the cancellation lands here
            seen.append("not cancelled")

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            scope = await nursery.start(caller)
            await wait_entered(model)
            scope.cancel()
            await trio.testing.wait_all_tasks_blocked()
            st = proc.statistics()  # NumPy cannot be interrupted: the work goes on
            assert (st.concurrent_requests, st.available_processing_slots) == (1, 0)
            model.gate.set()
    assert len(seen) == 1
    assert isinstance(seen[0], DTESNResult)
    st = proc.statistics()
    assert (st.completed_requests, st.cancelled_requests, st.failed_requests) == (1, 0, 0)
    assert (st.concurrent_requests, st.available_processing_slots) == (0, 1)
    check_books(proc)


async def test_cancel_while_a_depth_variant_builds() -> None:
    proc = DTESNProcessor(SMALL)
    with trio.fail_after(30):
        with trio.CancelScope() as scope:
            scope.cancel()
            await proc.process("abc", membrane_depth=2)
        st = proc.statistics()
        assert (st.cancelled_requests, st.concurrent_requests, st.failed_requests) == (1, 0, 0)
        await proc.process("abc", membrane_depth=2)
    assert proc.statistics().model_depths == (2,)
    check_books(proc)


async def test_throughput_counts_completions_in_the_window() -> None:
    now = [100.0]
    proc = DTESNProcessor(SMALL, ProcessorConfig(throughput_window=10.0), clock=lambda: now[0])
    with trio.fail_after(30):
        await proc.process_batch(["a", "b", "c", "d"])
        now[0] = 105.0
        await proc.process("e")
    assert proc.statistics().throughput == pytest.approx(0.5)
    now[0] = 110.0
    assert proc.statistics().throughput == pytest.approx(0.1)
    now[0] = 115.0
    assert proc.statistics().throughput == 0.0
    assert proc.get_processing_stats()["total_requests"] == 5


def test_rate_window() -> None:
    w = RateWindow(2.0)
    w.record(0.0, 3)
    w.record(1.0)
    assert w.rate(1.5) == 2.0
    assert w.rate(2.0) == 0.5
    assert w.rate(3.0) == 0.0
