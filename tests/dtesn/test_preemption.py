"""Cooperative preemption: lower-priority computations pause for higher ones, nothing lost."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import numpy as np
import trio

from dtesn_trio.dtesn import DTESNConfig, DTESNModel, DTESNProcessor, ProcessorConfig
from dtesn_trio.dtesn.preemption import PriorityGate
from tests.polling import wait_until

SMALL = DTESNConfig(membrane_depth=3, reservoir_size=60, seed=7)


def poll(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition another thread will make true (bounded; fails the test if not)."""
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "condition not reached"
        time.sleep(0.001)


class Stepper:
    """A computation in a thread: counts its steps, checkpointing between them."""

    def __init__(self, gate: PriorityGate, priority: int) -> None:
        self.gate = gate
        self.priority = priority
        self.steps = 0
        self.stop = threading.Event()
        self.started = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        with self.gate.running(self.priority) as checkpoint:
            self.started.set()
            while not self.stop.is_set():
                checkpoint()
                self.steps += 1


def test_a_lower_computation_pauses_while_a_higher_one_runs_and_then_resumes() -> None:
    gate = PriorityGate()
    low = Stepper(gate, 3)
    low.thread.start()
    low.started.wait(5)
    poll(lambda: low.steps > 100)
    with gate.running(0):
        poll(lambda: gate.statistics().paused_now == 1)
        paused_at = low.steps
        assert gate.statistics().running == ((0, 1), (3, 1))
        time.sleep(0.05)  # it stays paused (nothing to order here: we check it did not move)
        assert low.steps == paused_at
    poll(lambda: low.steps > paused_at + 100)  # resumed where it stopped
    low.stop.set()
    low.thread.join(5)
    st = gate.statistics()
    assert (st.pauses, st.paused_now, st.running) == (1, 0, ())
    assert st.paused_seconds >= 0.05


def test_equal_and_higher_priorities_never_pause() -> None:
    gate = PriorityGate()
    a, b = Stepper(gate, 1), Stepper(gate, 1)
    for s in (a, b):
        s.thread.start()
        s.started.wait(5)
    with gate.running(2):  # a lower one arriving does not stop them
        before = (a.steps, b.steps)
        poll(lambda: a.steps > before[0] + 100 and b.steps > before[1] + 100)
    for s in (a, b):
        s.stop.set()
        s.thread.join(5)
    assert gate.statistics().pauses == 0


def test_nested_levels_resume_in_priority_order() -> None:
    gate = PriorityGate()
    low, mid = Stepper(gate, 4), Stepper(gate, 2)
    low.thread.start()
    low.started.wait(5)
    with gate.running(0):
        poll(lambda: gate.statistics().paused_now == 1)
        mid.thread.start()
        mid.started.wait(5)
        poll(lambda: gate.statistics().paused_now == 2)
    # 0 is done: 2 runs, 4 still waits for it
    at = mid.steps
    poll(lambda: mid.steps > at + 100)
    assert gate.statistics().paused_now == 1
    mid.stop.set()
    mid.thread.join(5)
    poll(lambda: gate.statistics().paused_now == 0)
    low.stop.set()
    low.thread.join(5)
    assert gate.statistics().pauses == 2  # low once (through 0, then 2), mid once


async def test_priority_0_overtakes_a_running_batch_and_both_results_are_exact() -> None:
    model = DTESNModel(SMALL)
    processor = DTESNProcessor(model, ProcessorConfig(worker_threads=1, express_threads=1))
    long_inputs = [bytes([65 + i]) * 20_000 for i in range(4)]
    urgent = [b"urgent" * 1000, b"URGENT" * 1000]  # long enough to span GIL switches
    expected_long = model.process_batch(long_inputs)
    expected_urgent = model.process_batch(urgent)
    order: list[str] = []

    async def bulk() -> None:
        results = await processor.process_batch(long_inputs, priority=4)
        order.append("bulk")
        for got, want in zip(results, expected_long, strict=True):
            np.testing.assert_array_equal(got.features, want.features)

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bulk)
            # the bulk batch computes on the only worker thread
            await wait_until(lambda: processor.statistics().computing == ((4, 1),))
            results = await processor.process_batch(urgent, priority=0, express=True)
            order.append("urgent")
    for got, want in zip(results, expected_urgent, strict=True):
        np.testing.assert_array_equal(got.features, want.features)
    assert order == ["urgent", "bulk"]
    st = processor.statistics()
    assert st.express_calls == 1
    assert st.preemptions >= 1
    assert processor.get_processing_stats()["preemptions"] == st.preemptions


async def test_without_express_threads_priority_0_waits_for_the_worker() -> None:
    model = DTESNModel(SMALL)
    processor = DTESNProcessor(model, ProcessorConfig(worker_threads=1, express_threads=0))
    order: list[str] = []

    async def bulk() -> None:
        await processor.process_batch([b"x" * 20_000, b"y" * 20_000], priority=4)
        order.append("bulk")

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(bulk)
            await wait_until(lambda: processor.statistics().busy_threads >= 1)
            await processor.process_batch([b"urgent"], priority=0, express=True)
            order.append("urgent")
    assert order == ["bulk", "urgent"]
    assert processor.statistics().express_calls == 0
