"""The process executor: same results as threads, a dead worker fails only its call,
and nothing outlives the block."""

from __future__ import annotations

import functools
import os
import signal
from pathlib import Path

import numpy as np
import pytest
import trio

from dtesn_trio.dtesn import (
    DTESNConfig,
    DTESNModel,
    DTESNProcessor,
    DTESNResult,
    ProcessorConfig,
)
from dtesn_trio.errors import EngineError, InvalidRequest
from tests.polling import wait_until

SMALL = DTESNConfig(membrane_depth=3, reservoir_size=60, seed=7)


def child_pids() -> set[int]:
    """Live worker processes spawned by this one (the engine's, here)."""
    me = os.getpid()
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) != me or fields[0] == "Z":
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:  # not multiprocessing's resource tracker
            pids.add(int(entry.name))
    return pids


def cpu_ticks(pid: int) -> int:
    """User + system CPU time of a process, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def processor(model: DTESNModel, **kw: object) -> DTESNProcessor:
    config = ProcessorConfig(worker_threads=2, executor="process")
    return DTESNProcessor(model, config, **kw)  # type: ignore[arg-type]


async def test_results_equal_the_thread_executors_and_workers_end_with_the_block() -> None:
    model = DTESNModel(SMALL)
    inputs = ["hello world", [[0.1], [0.5], [-0.2]], "x" * 500]
    model.fit_readout(["abc", "abd", "xyz", "hello"], [[1.0], [2.0], [3.0], [4.0]])
    before = child_pids()
    proc = processor(model)
    with trio.fail_after(60):
        async with proc.open():
            workers = child_pids() - before
            assert len(workers) == 2  # one per worker thread
            batch = await proc.process_batch(inputs)
            one = await proc.process("hello world")
    want = model.process_batch(inputs)
    for got, exp in zip(batch, want, strict=True):
        np.testing.assert_array_equal(got.features, exp.features)
        assert got.prediction is not None
        assert exp.prediction is not None
        np.testing.assert_array_equal(got.prediction, exp.prediction)
        assert got.level_summary == exp.level_summary
    np.testing.assert_array_equal(one.features, model.process_one("hello world").features)
    assert not (child_pids() & workers)  # ended with the block
    st = proc.statistics()
    assert (st.executor, st.completed_requests, st.worker_deaths) == ("process", 4, 0)


async def test_a_killed_worker_fails_its_call_only_and_is_replaced() -> None:
    model = DTESNModel(SMALL)
    before = child_pids()
    proc = DTESNProcessor(model, ProcessorConfig(worker_threads=1, executor="process"))
    with trio.fail_after(60):
        async with proc.open():
            (worker,) = child_pids() - before

            busy_from = cpu_ticks(worker)

            async def kill_when_computing() -> None:
                # the job is in the worker once the worker burns CPU (not merely sent)
                await wait_until(lambda: cpu_ticks(worker) > busy_from + 5)
                os.kill(worker, signal.SIGKILL)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(kill_when_computing)
                with pytest.raises(EngineError, match="worker process died"):
                    await proc.process_batch([b"a" * 200_000, b"b" * 200_000])
            # the next call runs on a fresh worker
            result = await proc.process("after")
            np.testing.assert_array_equal(result.features, model.process_one("after").features)
            # invalid input is refused before any worker sees it
            with pytest.raises(InvalidRequest):
                await proc.process("")
    st = proc.statistics()
    assert (st.worker_deaths, st.failed_requests, st.completed_requests) == (1, 3, 1)
    assert proc.statistics().busy_threads == 0


async def test_a_cancelled_call_is_not_abandoned_mid_batch() -> None:
    # As with threads: a worker cannot be interrupted, so the call waits for it and the
    # caller gets its result (no worker is left computing for nobody, none is killed).
    model = DTESNModel(SMALL)
    proc = processor(model)
    inputs = [b"c" * 50_000, b"d" * 50_000]
    results: list[DTESNResult] = []

    async def call() -> None:
        results.extend(await proc.process_batch(inputs))

    with trio.fail_after(60):
        async with proc.open():
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call)
                    await wait_until(lambda: proc.statistics().busy_threads > 0)
                    scope.cancel()  # while the batch is in its worker
            assert scope.cancel_called
            after = await proc.process("next")  # the same worker, free and sane
    for got, exp in zip(results, model.process_batch(inputs), strict=True):
        np.testing.assert_array_equal(got.features, exp.features)
    np.testing.assert_array_equal(after.features, model.process_one("next").features)
    st = proc.statistics()
    assert (st.completed_requests, st.worker_deaths, st.busy_threads) == (3, 0, 0)


async def test_cancelling_the_block_mid_call_ends_every_worker() -> None:
    model = DTESNModel(SMALL)
    before = child_pids()
    proc = processor(model)
    with trio.fail_after(60), trio.CancelScope() as outer:
        async with proc.open(), trio.open_nursery() as nursery:
            nursery.start_soon(
                functools.partial(proc.process_batch, [b"e" * 60_000, b"f" * 60_000])
            )
            await wait_until(lambda: proc.statistics().busy_threads > 0)
            outer.cancel()  # the whole block, with a batch in a worker
    # (the batch itself is not abandoned: its worker finishes it, then the block ends)
    assert outer.cancel_called
    assert not (child_pids() - before)  # every worker ended with the block
    st = proc.statistics()
    assert st.busy_threads == 0
    assert st.concurrent_requests == 0


async def test_computing_outside_open_is_a_clear_error() -> None:
    proc = processor(DTESNModel(SMALL))
    with pytest.raises(RuntimeError, match=r"inside `async with processor.open\(\):`"):
        await proc.process("x")


def test_executor_is_validated() -> None:
    with pytest.raises(ValueError, match=r"processor\.executor"):
        ProcessorConfig(executor="fork")  # type: ignore[arg-type]
