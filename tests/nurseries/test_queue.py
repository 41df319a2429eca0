"""Priority batch queue: batching times, deadlines, priority, cancellation, close."""

from __future__ import annotations

import gc
import itertools
import weakref
from collections.abc import Sequence
from functools import partial
from typing import Any

import pytest
import trio
import trio.testing

from dtesn_trio.errors import DeadlineExceeded, InvalidRequest, Overloaded, ShuttingDown
from dtesn_trio.nurseries import (
    AdaptiveTimeout,
    AsyncRequestQueue,
    BatchQueueConfig,
    open_batch_queue,
)


class Engine:
    """A real ``process_batch`` that records each call and can be held or made to fail."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, list[Any]]] = []
        self.gate: trio.Event | None = None
        self.fail_with: BaseException | None = None
        self.poison: set[Any] = set()
        self.duration = 0.0

    def hold(self) -> None:
        self.gate = trio.Event()

    def release(self) -> None:
        assert self.gate is not None
        self.gate.set()
        self.gate = None

    async def __call__(self, items: list[Any]) -> Sequence[Any]:
        self.calls.append((trio.current_time(), list(items)))
        if self.gate is not None:
            await self.gate.wait()
        if self.duration:
            await trio.sleep(self.duration)
        if self.fail_with is not None:
            raise self.fail_with
        if self.poison & set(items):
            raise ValueError(f"poisoned batch {items}")
        return [x * 10 if not isinstance(x, str) else ValueError(x) for x in items]

    @property
    def processed(self) -> list[Any]:
        return [x for _, items in self.calls for x in items]


def cfg(**kw: Any) -> BatchQueueConfig:
    kw.setdefault("default_timeout", 60.0)
    return BatchQueueConfig(**kw)


async def test_three_items_then_silence_one_batch_at_exactly_100ms(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    results: dict[int, int] = {}
    async with open_batch_queue(engine, cfg(max_batch_size=10, max_wait=0.1)) as queue:
        t0 = trio.current_time()

        async def one(i: int) -> None:
            results[i] = await queue.submit(i)

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
        assert trio.current_time() == t0 + 0.1
    assert [(t, sorted(items)) for t, items in engine.calls] == [(t0 + 0.1, [0, 1, 2])]
    assert results == {0: 0, 1: 10, 2: 20}


async def test_timer_starts_at_the_first_item(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=10, max_wait=0.1)) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 1)
            await trio.sleep(0.06)
            nursery.start_soon(queue.submit, 2)
    assert engine.calls == [(t0 + 0.1, [1, 2])]


async def test_full_batch_leaves_at_once(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=3, max_wait=0.1)) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for i in range(4):
                nursery.start_soon(queue.submit, i)
                await trio.testing.wait_all_tasks_blocked()
    assert engine.calls == [(t0, [0, 1, 2]), (t0 + 0.1, [3])]


async def test_preferred_batch_size_leaves_without_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(max_batch_size=8, max_wait=0.1, preferred_batch_sizes=(2,))
    async with open_batch_queue(engine, config) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 1)
            await trio.testing.wait_all_tasks_blocked()
            await trio.sleep(0.01)
            nursery.start_soon(queue.submit, 2)
    assert engine.calls == [(t0 + 0.01, [1, 2])]


async def test_size_function_bounds_the_batch(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    config = cfg(max_batch_size=10, max_wait=0.1, workers=1)
    async with open_batch_queue(engine, config, size_fn=lambda x: x) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for x in (6, 3, 4, 5):
                nursery.start_soon(queue.submit, x)
                await trio.testing.wait_all_tasks_blocked()
    # 4 does not fit beside 6 + 3: that batch leaves at once, 4 waits first in line
    assert engine.calls == [(t0, [6, 3]), (t0 + 0.1, [4, 5])]


async def test_deadline_expires_at_the_exact_time_and_is_never_processed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=1, workers=1)) as queue:
        engine.hold()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 1)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(DeadlineExceeded):
                await queue.submit(2, deadline=t0 + 0.5)
            assert trio.current_time() == t0 + 0.5
            assert queue.statistics().queued == (0, 0, 0, 0, 0)
            engine.release()
        stats = queue.statistics()
    assert engine.processed == [1]
    assert stats.expired == 1
    assert stats.completed == 1


async def test_an_expired_request_keeps_no_frames_alive(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """An expired request stays in its level's channel until a worker pulls it; the
    DeadlineExceeded it was answered with must not stay with it: raised, its traceback
    holds the frames of the caller's whole stack (a server request: its body, its
    Starlette request, ...).  A burst of expiries pinned ~100 requests' stacks."""
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=1, workers=1)) as queue:
        engine.hold()
        t0 = trio.current_time()

        class Body:
            pass

        async def caller(body_ref: list[weakref.ref[Body]]) -> None:
            body = Body()  # a local of the caller's frame
            body_ref.append(weakref.ref(body))
            with pytest.raises(DeadlineExceeded):
                await queue.submit(2, deadline=t0 + 0.5)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 1)
            await trio.testing.wait_all_tasks_blocked()
            refs: list[weakref.ref[Body]] = []
            await caller(refs)
            gc.collect()
            assert queue.statistics().expired == 1  # and still in the channel: the
            assert refs[0]() is None  # worker is busy, yet the caller's frame is gone
            engine.release()


async def test_level_timeout_rejects_at_its_time(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    config = cfg(max_batch_size=1, workers=1, default_timeout=(1.0, 2.0, 3.0, 4.0, 5.0))
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 0)
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(DeadlineExceeded):
                await queue.submit(1, priority=3)
            assert trio.current_time() == t0 + 4.0
            # a later deadline does not lengthen the level's timeout
            with pytest.raises(DeadlineExceeded):
                await queue.submit(2, priority=0, deadline=trio.current_time() + 50)
            assert trio.current_time() == t0 + 5.0
            engine.release()
    assert engine.processed == [0]


async def test_delay_action_serves_timed_out_requests_last(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(max_batch_size=1, workers=1, default_timeout=1.0, timeout_action="delay")
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 0)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queue.submit, 1)  # will time out: delayed, not rejected
            await trio.sleep(2.0)
            nursery.start_soon(queue.submit, 2)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queue.submit, 3)
            await trio.testing.wait_all_tasks_blocked()
            engine.release()
    assert engine.processed == [0, 2, 3, 1]


async def test_unmeetable_deadline_is_refused_at_submit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.duration = 1.0
    async with open_batch_queue(engine, cfg(max_batch_size=1, workers=1)) as queue:
        await queue.submit(0)  # one batch of 1 s teaches the estimate
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(queue.submit, i)
            await trio.testing.wait_all_tasks_blocked()
            assert queue.estimated_wait(2) == pytest.approx(2.5)
            t = trio.current_time()
            with pytest.raises(Overloaded) as info:
                await queue.submit(9, deadline=t + 1.0)
            assert trio.current_time() == t
            assert info.value.retry_after == pytest.approx(2.5)
            # a higher level has nobody ahead of it
            assert queue.estimated_wait(0) == pytest.approx(0.5)
        assert queue.statistics().rejected_deadline == 1
    assert 9 not in engine.processed


async def test_strict_priority_order(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    config = cfg(max_batch_size=1, workers=1, max_skips=None)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, -1)
            await trio.testing.wait_all_tasks_blocked()
            for level in (4, 3, 2, 1, 0, 4, 0):
                nursery.start_soon(
                    lambda lv=level: queue.submit(lv * 100 + len(engine.calls), priority=lv)
                )
                await trio.testing.wait_all_tasks_blocked()
            engine.release()
    order = [x // 100 for x in engine.processed[1:]]
    assert order == [0, 0, 1, 2, 3, 4, 4]


async def test_fifo_within_a_level(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=2, workers=1)) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            for i in range(7):
                nursery.start_soon(queue.submit, i)
                await trio.testing.wait_all_tasks_blocked()
            engine.release()
    assert engine.processed == list(range(7))


async def test_starvation_bound_serves_a_starving_level(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(max_batch_size=1, workers=1, max_skips=2)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(-1, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            for i in range(6):
                nursery.start_soon(lambda i=i: queue.submit(i, priority=0))
            for i in range(2):
                nursery.start_soon(lambda i=i: queue.submit(400 + i, priority=4))
            await trio.testing.wait_all_tasks_blocked()
            engine.release()
    levels = [4 if x >= 400 else 0 for x in engine.processed[1:]]
    assert levels == [0, 0, 4, 0, 0, 4, 0, 0]


async def test_full_level_is_refused_at_once_or_waits_when_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(priority_levels=2, capacity_per_level=(2, 2), max_batch_size=1, workers=1)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(0, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: queue.submit(1, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: queue.submit(2, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            t = trio.current_time()
            with pytest.raises(Overloaded) as info:
                await queue.submit(3, priority=0)
            assert trio.current_time() == t
            assert info.value.retry_after is not None
            assert info.value.retry_after > 0
            # the other level has room of its own
            nursery.start_soon(lambda: queue.submit(4, priority=1))
            await trio.testing.wait_all_tasks_blocked()
            assert queue.statistics().queued == (2, 1)
            engine.release()
    assert engine.processed == [0, 1, 2, 4]


async def test_wait_true_waits_for_space(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    config = cfg(priority_levels=2, capacity_per_level=(1, 1), max_batch_size=1, workers=1)
    results: list[int] = []
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(0, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: queue.submit(1, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(Overloaded):
                await queue.submit(2, priority=0)

            async def waiter() -> None:
                results.append(await queue.submit(3, priority=0, wait=True))

            nursery.start_soon(waiter)
            await trio.testing.wait_all_tasks_blocked()
            engine.release()
        assert results == [30]
        assert queue.statistics().rejected_full == 1
    assert engine.processed == [0, 1, 3]


async def test_cancelled_while_queued_is_never_processed_and_frees_its_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(priority_levels=1, capacity_per_level=(1,), max_batch_size=1, workers=1)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(0, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1.0):
                await queue.submit(1, priority=0)
            assert queue.statistics().queued == (0,)
            # the cancelled request's slot is free again: the level takes a new one
            nursery.start_soon(lambda: queue.submit(2, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            assert queue.statistics().queued == (1,)
            engine.release()
        stats = queue.statistics()
    assert engine.processed == [0, 2]
    assert stats.cancelled == 1
    assert stats.cancelled_running == 0


async def test_cancelled_in_a_forming_batch_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    async with (
        open_batch_queue(engine, cfg(max_batch_size=10, max_wait=0.1)) as queue,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(queue.submit, 1)
        with trio.move_on_after(0.05):
            await queue.submit(2)
        nursery.start_soon(queue.submit, 3)
    assert [items for _, items in engine.calls] == [[1, 3]]


async def test_cancelled_while_running_leaves_the_batch_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    results: dict[int, int] = {}
    async with open_batch_queue(engine, cfg(max_batch_size=3, max_wait=0.1)) as queue:
        engine.hold()

        async def one(i: int) -> None:
            results[i] = await queue.submit(i)

        async with trio.open_nursery() as nursery:
            for i in range(2):
                nursery.start_soon(one, i)
            with trio.move_on_after(1.0):
                await queue.submit(2)
            assert sorted(engine.processed) == [0, 1, 2]  # it was running when cancelled
            engine.release()
        stats = queue.statistics()
    assert results == {0: 0, 1: 10}
    assert stats.cancelled == 1
    assert stats.cancelled_running == 1


async def test_engine_failure_reaches_every_member_and_the_callback(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.fail_with = RuntimeError("engine down")
    heard: list[tuple[int, float, BaseException | None]] = []
    errors: list[BaseException] = []

    async def one(i: int) -> None:
        try:
            await queue.submit(i)
        except RuntimeError as exc:
            errors.append(exc)

    async with open_batch_queue(
        engine, cfg(max_batch_size=3, max_wait=0.1), on_batch_done=lambda *a: heard.append(a)
    ) as queue:
        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
        stats = queue.get_queue_stats()
    assert len(errors) == 3
    assert all(str(e) == "engine down" for e in errors)
    assert all(e.__cause__ is engine.fail_with for e in errors)
    assert len({id(e) for e in errors}) == 3
    assert [(size, err) for size, _, err in heard] == [(3, engine.fail_with)]
    assert stats["circuit_breaker_failures"] == 1


async def test_retry_individually_isolates_a_poisoned_input(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.poison = {2}
    outcomes: dict[int, object] = {}
    async with open_batch_queue(
        engine, cfg(max_batch_size=3, max_wait=0.1, retry_individually=True)
    ) as queue:

        async def one(i: int) -> None:
            try:
                outcomes[i] = await queue.submit(i)
            except ValueError as exc:
                outcomes[i] = exc

        async with trio.open_nursery() as nursery:
            for i in range(3):
                nursery.start_soon(one, i)
    assert outcomes[0] == 0
    assert outcomes[1] == 10
    assert isinstance(outcomes[2], ValueError)
    first, *retries = [items for _, items in engine.calls]
    assert sorted(first) == [0, 1, 2]
    assert retries == [[x] for x in first]


async def test_per_item_errors_go_to_their_own_item(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    async with open_batch_queue(engine, cfg(max_batch_size=2, max_wait=0.1)) as queue:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 1)
            with pytest.raises(ValueError, match="bad"):
                await queue.submit("bad")
        stats = queue.statistics()
    assert stats.completed == 1
    assert stats.failed == 1
    assert stats.batches == 1


async def test_close_answers_queued_requests_and_finishes_in_flight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.duration = 2.0
    outcomes: dict[int, object] = {}

    async def one(i: int) -> None:
        try:
            outcomes[i] = await queue.submit(i)
        except ShuttingDown as exc:
            outcomes[i] = exc

    async with trio.open_nursery() as outer:
        async with open_batch_queue(engine, cfg(max_batch_size=1, workers=1)) as queue:
            t0 = trio.current_time()
            for i in range(3):
                outer.start_soon(one, i)
                await trio.testing.wait_all_tasks_blocked()
            queue.close()
            await trio.testing.wait_all_tasks_blocked()
            assert isinstance(outcomes[1], ShuttingDown)
            assert isinstance(outcomes[2], ShuttingDown)
            with pytest.raises(ShuttingDown):
                await queue.submit(9)
        assert trio.current_time() == t0 + 2.0  # the in-flight batch finished
    assert outcomes[0] == 0
    assert engine.processed == [0]


async def test_close_grace_cancels_long_batches(autojump_clock: trio.testing.MockClock) -> None:
    engine = Engine()
    engine.hold()
    outcomes: list[object] = []

    async def one() -> None:
        try:
            outcomes.append(await queue.submit(1))
        except ShuttingDown as exc:
            outcomes.append(exc)

    heard: list[object] = []
    async with trio.open_nursery() as outer:
        async with open_batch_queue(
            engine, cfg(max_batch_size=1, close_grace=3.0), on_batch_done=lambda *a: heard.append(a)
        ) as queue:
            outer.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
        assert trio.current_time() == t0 + 3.0
        await trio.testing.wait_all_tasks_blocked()
        stats = queue.statistics()
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], ShuttingDown)
    assert stats.running_batches == 0
    assert stats.shut_down == 1
    assert heard == []  # a cancelled batch is no verdict for the breaker


async def test_bad_priority_and_deadline_are_named(autojump_clock: trio.testing.MockClock) -> None:
    async with open_batch_queue(Engine(), cfg()) as queue:
        with pytest.raises(InvalidRequest) as info:
            await queue.submit(1, priority=5)
        assert info.value.field == "priority"
        with pytest.raises(InvalidRequest):
            await queue.submit(1, priority=True)
        with pytest.raises(InvalidRequest) as info:
            await queue.submit(1, deadline=float("nan"))
        assert info.value.field == "deadline"
        with pytest.raises(DeadlineExceeded):
            await queue.submit(1, deadline=trio.current_time())


def test_config_validation_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"queue\.max_batch_size"):
        BatchQueueConfig(max_batch_size=0)
    with pytest.raises(ValueError, match=r"queue\.capacity_per_level"):
        BatchQueueConfig(capacity_per_level=(1, 2))
    with pytest.raises(ValueError, match=r"queue\.timeout_action"):
        BatchQueueConfig(timeout_action="drop")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"queue\.default_timeout\[1\]"):
        BatchQueueConfig(priority_levels=2, default_timeout=(1.0, -1.0))
    with pytest.raises(ValueError, match=r"queue\.preferred_batch_sizes"):
        BatchQueueConfig(max_batch_size=4, preferred_batch_sizes=(8,))
    with pytest.raises(ValueError, match=r"queue\.workers"):
        BatchQueueConfig(workers=0)
    config = BatchQueueConfig(max_queue_size=12, priority_levels=5)
    assert config.capacities == (3, 3, 2, 2, 2)
    assert config.timeouts == (None,) * 5
    assert config.actions == ("reject",) * 5


async def test_seed_constructor_and_stats_keys(autojump_clock: trio.testing.MockClock) -> None:
    seed = AsyncRequestQueue(max_queue_size=100, priority_levels=5, batch_processing=False)
    assert seed.config.max_batch_size == 1
    assert AsyncRequestQueue().config.max_batch_size == 10
    assert AsyncRequestQueue().config.max_queue_size == 10000
    async with seed.open(Engine(), breaker_status=lambda: (True, 7)) as queue:
        assert await queue.submit(4) == 40
        stats = queue.get_queue_stats()
    assert set(stats) == {
        "total_queued_requests",
        "priority_queue_sizes",
        "queue_utilization",
        "circuit_breaker_open",
        "circuit_breaker_failures",
        "success_rate",
        "avg_response_time",
        "adaptive_timeout",
        "batch_processing_enabled",
        "batch_sizes",
    }
    assert stats["circuit_breaker_open"] is True
    assert stats["circuit_breaker_failures"] == 7
    assert stats["batch_processing_enabled"] is False
    assert stats["batch_sizes"] == {1: 1}
    assert stats["priority_queue_sizes"] == {0: 0, 1: 0, 2: 0, 3: 0, 4: 0}


def test_adaptive_timeout_formula() -> None:
    adaptive = AdaptiveTimeout(initial=30.0, minimum=5.0, maximum=120.0, refresh=1.0)
    assert adaptive.value(0.0) == 30.0
    adaptive.record([float(i) for i in range(1, 101)], True)  # p95 = 95
    assert adaptive.value(1.0) == pytest.approx(120.0)  # 142.5 clamped
    fast = AdaptiveTimeout(refresh=0.0)
    fast.record([0.1] * 100, True)
    assert fast.value(0.0) == 5.0  # clamped up
    mid = AdaptiveTimeout(refresh=0.0)
    mid.record([10.0] * 95, True)
    assert mid.value(0.0) == pytest.approx(15.0)  # × 1.5
    mid.record([10.0] * 20, False)  # success rate 95/115 < 0.9
    assert mid.value(0.0) == pytest.approx(20.0)  # × 2.0


async def test_a_busy_worker_still_checkpoints(autojump_clock: trio.testing.MockClock) -> None:
    # a no-op engine never yields; the worker must, at least every 32 items
    engine = Engine()
    ticks: list[int] = []
    config = cfg(max_batch_size=1, workers=1, max_queue_size=1000)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, -1)
            await trio.testing.wait_all_tasks_blocked()
            for i in range(200):
                nursery.start_soon(queue.submit, i)
            await trio.testing.wait_all_tasks_blocked()

            async def probe() -> None:
                while len(engine.calls) < 201:
                    ticks.append(len(engine.calls))
                    await trio.lowlevel.checkpoint()

            nursery.start_soon(probe)
            engine.release()
    gaps = [b - a for a, b in itertools.pairwise(ticks)]
    # the worker yields every 32 items; between two probe ticks it can run twice (once
    # late in one scheduler pass, once early in the next)
    assert max(gaps) <= 64
    assert len(gaps) >= 200 // 64
    assert len(engine.calls) == 201


async def test_close_while_forming_answers_the_partial_batch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    outcomes: list[object] = []

    async def one() -> None:
        try:
            outcomes.append(await queue.submit(1))
        except ShuttingDown as exc:
            outcomes.append(exc)

    async with trio.open_nursery() as outer:
        async with open_batch_queue(engine, cfg(max_batch_size=10, max_wait=1.0)) as queue:
            outer.start_soon(one)
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
        assert trio.current_time() == t0  # nothing was running: no grace needed
    assert len(outcomes) == 1
    assert isinstance(outcomes[0], ShuttingDown)
    assert engine.calls == []


async def test_waiting_for_space_respects_the_deadline(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(priority_levels=1, capacity_per_level=(1,), max_batch_size=1, workers=1)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(0, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: queue.submit(1, priority=0))
            await trio.testing.wait_all_tasks_blocked()
            t0 = trio.current_time()
            with pytest.raises(DeadlineExceeded):
                await queue.submit(2, priority=0, wait=True, deadline=t0 + 0.25)
            assert trio.current_time() == t0 + 0.25
            engine.release()
        stats = queue.statistics()
    assert engine.processed == [0, 1]
    assert stats.expired == 1
    assert stats.queued == (0,)


# ---------------------------------------------------------------- scheduling under load


async def test_a_lone_request_starts_at_once_on_an_idle_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    async with open_batch_queue(engine, BatchQueueConfig()) as queue:  # the defaults
        t0 = trio.current_time()
        assert await queue.submit(4) == 40
        assert trio.current_time() == t0
    assert engine.calls == [(t0, [4])]


async def test_a_batch_forms_only_while_every_worker_is_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.duration = 1.0
    async with open_batch_queue(engine, cfg(workers=2, max_batch_size=10)) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            for item in (100, 200):  # one worker each, at once
                nursery.start_soon(queue.submit, item)
                await trio.testing.wait_all_tasks_blocked()
            for i in range(1, 6):  # t0 + 0.1 .. 0.5, both workers busy
                await trio.sleep_until(t0 + i / 10)
                nursery.start_soon(queue.submit, i)
    assert engine.calls == [(t0, [100]), (t0, [200]), (t0 + 1.0, [1, 2, 3, 4, 5])]


@pytest.mark.parametrize("lifo_delay", [0.1, None])
async def test_under_a_standing_queue_the_fresh_request_runs_and_the_stale_one_expires(
    autojump_clock: trio.testing.MockClock, lifo_delay: float | None
) -> None:
    engine = Engine()
    engine.duration = 1.0
    config = cfg(workers=1, max_batch_size=1, lifo_delay=lifo_delay)
    outcomes: dict[str, object] = {}

    async def one(name: str, item: int, deadline: float) -> None:
        try:
            outcomes[name] = (await queue.submit(item, deadline=deadline), trio.current_time())
        except (DeadlineExceeded, Overloaded) as exc:
            outcomes[name] = (type(exc).__name__, trio.current_time())

    async with open_batch_queue(engine, config) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 0)  # runs t0 .. t0 + 1
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queue.submit, 1)  # runs t0 + 1 .. t0 + 2
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(one, "stale", 2, t0 + 2.5)
            await trio.sleep_until(t0 + 1.5)
            nursery.start_soon(one, "fresh", 3, t0 + 2.5)
    if lifo_delay is not None:
        # at t0 + 2 the stale request has waited 2 s (> lifo_delay + one batch): the
        # level is served newest first; the stale one expires at its deadline
        assert engine.calls[2] == (t0 + 2.0, [3])
        assert outcomes == {"fresh": (30, t0 + 3.0), "stale": ("DeadlineExceeded", t0 + 2.5)}
        assert 2 not in engine.processed
    else:
        # FIFO: the stale one runs, and the fresh one cannot start by its deadline
        assert engine.calls[2] == (t0 + 2.0, [2])
        assert outcomes == {"fresh": ("Overloaded", t0 + 1.5), "stale": (20, t0 + 3.0)}


async def test_the_start_by_estimate_refuses_only_what_cannot_be_met(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.duration = 1.0
    config = cfg(workers=1, max_batch_size=2, lifo_delay=None)
    async with open_batch_queue(engine, config) as queue:
        await queue.submit(0)  # one batch of one item in 1 s: 1 item/s
        await queue.submit(0)
        assert queue.throughput == pytest.approx(1.0)
        async with trio.open_nursery() as nursery:
            for i in (1, 2, 3, 4, 5):  # 1 runs; 2 .. 5 wait (two batches of two)
                nursery.start_soon(queue.submit, i)
                await trio.testing.wait_all_tasks_blocked()
            t = trio.current_time()
            # four ahead at 1 item/s, plus half a batch: 4.5 s
            assert queue.estimated_wait(2) == pytest.approx(4.5)
            with pytest.raises(Overloaded):
                await queue.submit(9, deadline=t + 4.4)
            assert trio.current_time() == t
            # batches of two are faster than the estimate: admitted, starts in time
            assert await queue.submit(6, deadline=t + 4.5) == 60
        stats = queue.statistics()
    assert stats.rejected_deadline == 1
    assert 9 not in engine.processed
    assert engine.calls[-1] == (t + 3.0, [6])


async def test_cancelled_while_waiting_for_space_counts_once_and_leaves_no_trace(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    config = cfg(priority_levels=1, capacity_per_level=(1,), max_batch_size=1, workers=1)
    async with open_batch_queue(engine, config) as queue:
        engine.hold()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(lambda: queue.submit(0, priority=0))  # running
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(lambda: queue.submit(1, priority=0))  # queued: level full
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(1.0):
                await queue.submit(2, priority=0, wait=True)
            stats = queue.statistics()
            assert stats.waiting_for_space == (0,)
            assert stats.queued == (1,)
            engine.release()
        stats = queue.statistics()
    assert engine.processed == [0, 1]
    assert (stats.cancelled, stats.completed, stats.submitted) == (1, 2, 3)


async def test_close_answers_queued_held_and_space_waiting_requests(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine()
    engine.hold()
    outcomes: dict[int, str] = {}
    config = cfg(priority_levels=2, capacity_per_level=(1, 1), max_batch_size=1, workers=1)

    async def one(item: int, priority: int, wait: bool = False) -> None:
        try:
            await queue.submit(item, priority=priority, wait=wait)
            outcomes[item] = "done"
        except ShuttingDown as exc:
            outcomes[item] = str(exc)

    async with trio.open_nursery() as outer, open_batch_queue(engine, config) as queue:
        for item, priority, wait in ((0, 1, False), (1, 1, False), (2, 1, True), (3, 0, False)):
            outer.start_soon(one, item, priority, wait)
            await trio.testing.wait_all_tasks_blocked()
        assert queue.statistics().waiting_for_space == (0, 1)
        queue.close()
        await trio.testing.wait_all_tasks_blocked()
        assert outcomes == {
            1: "the queue is shutting down",
            2: "the queue is shutting down",
            3: "the queue is shutting down",
        }
        engine.release()
    assert outcomes[0] == "done"
    stats = queue.statistics()
    assert (stats.shut_down, stats.completed) == (3, 1)
    assert stats.queued == (0, 0)
    assert stats.waiting_for_space == (0, 0)


async def test_a_standing_queue_well_inside_its_deadlines_stays_in_arrival_order(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The oldest request has waited 2 s of a 10 s budget when the worker frees: more
    # than lifo_delay plus a batch (a standing queue), less than half its deadline, so
    # newest-first would only make the oldest wait longer; they run in arrival order.
    engine = Engine()
    engine.duration = 1.0
    config = cfg(workers=1, max_batch_size=1, lifo_delay=0.1)
    async with open_batch_queue(engine, config) as queue:
        t0 = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(queue.submit, 0)  # runs t0 .. t0 + 1
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(queue.submit, 1)  # runs t0 + 1 .. t0 + 2
            await trio.testing.wait_all_tasks_blocked()
            for item in (2, 3, 4):
                nursery.start_soon(partial(queue.submit, item, deadline=t0 + 10.0))
                await trio.testing.wait_all_tasks_blocked()
    assert engine.calls == [
        (t0, [0]),
        (t0 + 1.0, [1]),
        (t0 + 2.0, [2]),
        (t0 + 3.0, [3]),
        (t0 + 4.0, [4]),
    ]
