"""Admission: the three primitives composed behind ``throttle_request``."""

from __future__ import annotations

import dataclasses

import pytest
import trio
import trio.testing

from dtesn_trio.errors import (
    CircuitOpen,
    DeadlineExceeded,
    InvalidRequest,
    Overloaded,
    RateLimited,
)
from dtesn_trio.limits import (
    Admission,
    AdmissionConfig,
    BreakerState,
    CircuitBreakerConfig,
    ConcurrencyManager,
    FixedLimit,
    Gradient2Limit,
)
from tests.limits.cancel import cancel_at_step

SEED_LOAD_KEYS = {
    "concurrent_requests",
    "recent_requests_per_second",
    "rate_limit_utilization",
    "concurrency_utilization",
    "available_slots",
    "burst_capacity_remaining",
    "adaptive_scaling_enabled",
    "system_load",
    "avg_response_time",
    "success_rate",
    "effective_capacity",
    "base_capacity",
}


def fixed(**kw: object) -> Admission:
    settings: dict[str, object] = {
        "adaptive_scaling": False,
        "priority_levels": 1,
        "max_requests_per_second": 1000.0,
    }
    settings.update(kw)
    return Admission(AdmissionConfig(**settings))  # type: ignore[arg-type]


async def hold(admission: Admission, seconds: float, priority: int = 0) -> None:
    async with admission.throttle_request(priority=priority):
        await trio.sleep(seconds)


async def test_the_seeds_constructor_and_load_keys(
    autojump_clock: trio.testing.MockClock,
) -> None:
    manager = ConcurrencyManager(
        max_concurrent_requests=500,
        max_requests_per_second=1000,
        adaptive_scaling=True,
        scale_factor=1.2,
    )
    assert ConcurrencyManager is Admission
    assert manager.config == AdmissionConfig.seed()
    assert isinstance(manager.limiter.algorithm, Gradient2Limit)
    async with manager.throttle_request():
        load = manager.get_current_load()
        assert (load["concurrent_requests"], load["available_slots"]) == (1, 499)
        assert load["effective_capacity"] == load["base_capacity"] == 500
    load = manager.get_current_load()
    assert set(load) >= SEED_LOAD_KEYS
    assert load["burst_capacity_remaining"] == 99.0  # one token out of 100, no time passed
    await trio.sleep(0.0005)  # half a token at 1000/s
    assert manager.get_current_load()["burst_capacity_remaining"] == pytest.approx(99.5)
    await trio.sleep(1.0)
    assert manager.get_current_load()["burst_capacity_remaining"] == 100.0  # full, capped
    assert load["success_rate"] == 1.0
    assert load["adaptive_scaling_enabled"] is True


async def test_rate_limit_refuses_with_retry_after(autojump_clock: trio.testing.MockClock) -> None:
    admission = fixed(max_requests_per_second=4, burst_limit=2)
    for _ in range(2):
        async with admission.throttle_request():
            pass
    with pytest.raises(RateLimited) as info:
        async with admission.throttle_request():
            pytest.fail("admitted over the rate")
    assert info.value.retry_after == 0.25
    await trio.sleep(0.25)
    async with admission.throttle_request():
        pass
    assert admission.statistics().refused_rate_limited == 1


async def test_open_breaker_refuses_and_frees_nothing_else() -> None:
    admission = fixed()
    admission.breaker.transition_to_forced_open()
    with pytest.raises(CircuitOpen):
        async with admission.throttle_request():
            pass
    stats = admission.statistics()
    assert (stats.refused_circuit_open, stats.limiter.in_flight, stats.admitted) == (1, 0, 0)


async def test_full_limit_refuses_at_once_with_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = fixed(max_concurrent_requests=2, min_limit=1, overloaded_retry_after=0.5)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, admission, 1.0)
        nursery.start_soon(hold, admission, 1.0)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(Overloaded) as info:
            async with admission.throttle_request():
                pass
        assert info.value.retry_after == 0.5
        assert trio.current_time() == 0.0  # refused, never waited
    stats = admission.statistics()
    assert (stats.admitted, stats.refused_overloaded, stats.limiter.in_flight) == (2, 1, 0)
    # The refused request gave its breaker permit back as ignored, not failed.
    assert stats.breaker.failed_calls_total == 0


async def test_lower_priorities_are_refused_first() -> None:
    admission = fixed(
        max_concurrent_requests=10, min_limit=1, priority_levels=3, partitions=(0.2, 0.2, 0.0)
    )
    admitted = {0: 0, 1: 0, 2: 0}
    async with trio.open_nursery() as nursery:
        for priority in (2, 1, 0):
            while True:
                try:
                    await nursery.start(hold_started, admission, priority)
                except Overloaded:
                    break
                admitted[priority] += 1
        assert admitted == {2: 6, 1: 2, 0: 2}
        nursery.cancel_scope.cancel()
    assert admission.statistics().limiter.in_flight == 0


async def hold_started(
    admission: Admission, priority: int, *, task_status: trio.TaskStatus[None]
) -> None:
    async with admission.throttle_request(priority=priority):
        task_status.started()
        await trio.sleep_forever()


async def test_outcomes_reach_the_breaker_and_the_limiter() -> None:
    admission = fixed()
    with pytest.raises(RuntimeError):
        async with admission.throttle_request():
            raise RuntimeError("engine bug")
    with pytest.raises(Overloaded):
        async with admission.throttle_request():
            raise Overloaded("queue full")
    with pytest.raises(DeadlineExceeded):
        async with admission.throttle_request():
            raise DeadlineExceeded("too late")
    with trio.CancelScope() as scope:
        async with admission.throttle_request():
            scope.cancel()
            await trio.lowlevel.checkpoint()
    async with admission.throttle_request():
        pass
    stats = admission.statistics()
    # Breaker: the engine error failed; Overloaded, the deadline (a load signal, not an
    # engine failure: issue 8) and Cancelled are ignored.
    assert (
        stats.breaker.failed_calls_total,
        stats.breaker.ignored_calls_total,
        stats.breaker.successful_calls_total,
    ) == (1, 3, 1)
    # Limiter: Overloaded and DeadlineExceeded are drops; the bug and Cancelled say nothing.
    assert (stats.limiter.dropped, stats.limiter.ignored, stats.limiter.succeeded) == (2, 2, 1)
    assert stats.admitted == 5


async def test_disabled_admission_is_a_pass_through() -> None:
    admission = fixed(enabled=False, max_concurrent_requests=1, burst_limit=1)
    admission.breaker.transition_to_forced_open()

    async def many() -> None:
        async with admission.throttle_request():
            await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        for _ in range(10):
            nursery.start_soon(many)
    stats = admission.statistics()
    assert (stats.enabled, stats.admitted, stats.rate.acquired) == (False, 0, 0)


async def test_bad_priority_is_an_invalid_request() -> None:
    admission = Admission()
    for bad in (5, -1, "high", True):
        with pytest.raises(InvalidRequest) as info:
            admission.throttle_request(priority=bad)  # type: ignore[arg-type]
        assert info.value.field == "priority"


async def test_a_throttle_context_is_entered_once() -> None:
    admission = fixed()
    ctx = admission.throttle_request()
    async with ctx:
        pass
    with pytest.raises(RuntimeError, match="only once"):
        async with ctx:
            pass


async def test_cancelled_at_every_checkpoint_leaves_nothing_behind(
    autojump_clock: trio.testing.MockClock,
) -> None:
    step, cancelled = 1, True
    while cancelled:
        admission = Admission(
            AdmissionConfig(
                max_concurrent_requests=1,
                min_limit=1,
                breaker=CircuitBreakerConfig(minimum_calls=1, sliding_window_size=1),
            )
        )

        async def request(a: Admission = admission) -> None:
            async with a.throttle_request(priority=4):
                await trio.sleep(1.0)
                await trio.lowlevel.checkpoint()

        cancelled = await cancel_at_step(step, request)
        stats = admission.statistics()
        assert stats.limiter.in_flight == 0
        assert stats.limiter.in_flight_by_priority == (0, 0, 0, 0, 0)
        assert admission.limiter.capacity_limiter.borrowed_tokens == 0
        assert stats.breaker.state is BreakerState.CLOSED
        assert stats.breaker.failed_calls_total == 0
        assert stats.limiter.succeeded + stats.limiter.ignored == stats.admitted
        if cancelled:
            assert stats.limiter.succeeded == 0
        # Whatever happened, the next request gets in.
        async with admission.throttle_request():
            pass
        step += 1
    assert step > 3


async def test_adaptive_scaling_moves_the_limit_and_the_rate(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = Admission(
        max_concurrent_requests=20,
        max_requests_per_second=100.0,
        burst_limit=100,
        adaptive_scaling=True,
        algorithm="aimd",
        min_limit=1,
        window_size=3,
        priority_levels=1,
    )
    # Idle: 2 of 20 in flight. AIMD does not grow; the rate rises towards 1.5 x base.
    for _ in range(4):
        async with trio.open_nursery() as nursery:
            for _ in range(2):
                nursery.start_soon(hold, admission, 0.5)
    load = admission.get_current_load()
    assert load["system_load"] == 0.1
    assert load["current_rate_limit"] == pytest.approx(140.0)
    assert load["effective_capacity"] == 20
    # Busy: 15 of 20 in flight, fast: the limit grows and the rate drops below the base.
    for _ in range(4):
        async with trio.open_nursery() as nursery:
            for _ in range(15):
                nursery.start_soon(hold, admission, 0.5)
    load = admission.get_current_load()
    assert load["effective_capacity"] > 20
    assert load["current_rate_limit"] < 100.0
    assert load["avg_response_time"] == 0.5


def test_algorithms_by_name() -> None:
    assert isinstance(AdmissionConfig().make_algorithm(), FixedLimit)
    assert isinstance(AdmissionConfig.seed(adaptive_scaling=False).make_algorithm(), FixedLimit)
    for name in ("fixed", "aimd", "vegas", "gradient2", "seed"):
        algorithm = AdmissionConfig.seed(algorithm=name).make_algorithm()
        assert algorithm.limit == 500


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_concurrent_requests": 0}, "admission.max_concurrent_requests must be >= 1"),
        ({"max_requests_per_second": -1}, "admission.max_requests_per_second must be > 0"),
        ({"algorithm": "magic"}, "admission.algorithm must be one of"),
        ({"scale_factor": 0.9}, "admission.scale_factor must be > 1.0"),
        ({"max_limit": 100}, "admission.max_limit must be >= admission.max_concurrent_requests"),
        ({"priority_levels": 3, "partitions": (0.5,)}, "one share per priority level"),
        ({"default_priority": 5}, "admission.default_priority must be < admission.priority_levels"),
        (
            {"max_requests_per_second": 1000.0, "max_rate": 10.0},
            "admission.max_rate must be >= admission.rate",
        ),
        ({"max_rate": 10.0}, "admission.max_rate needs admission.max_requests_per_second"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdmissionConfig(**kwargs)  # type: ignore[arg-type]


def test_unknown_settings_are_refused() -> None:
    with pytest.raises(TypeError, match="unknown admission setting"):
        Admission(max_concurent_requests=5)


async def test_statistics_are_frozen() -> None:
    stats = Admission().statistics()
    with pytest.raises(dataclasses.FrozenInstanceError):
        stats.admitted = 3  # type: ignore[misc]


async def test_a_request_refused_by_the_limiter_frees_its_half_open_slot(
    autojump_clock: trio.testing.MockClock,
) -> None:
    admission = fixed(
        max_concurrent_requests=1,
        min_limit=1,
        breaker=CircuitBreakerConfig(permitted_calls_in_half_open=2, wait_in_open=1.0),
    )
    admission.breaker.transition_to_open()
    await trio.sleep(1.0)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(hold, admission, 1.0)  # trial 1 of 2, holds the only token
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            with pytest.raises(Overloaded):
                async with admission.throttle_request():
                    pass
        # The refusals took no trial slot for good: one is still free.
        assert admission.breaker.statistics().half_open_permits_left == 1
    async with admission.throttle_request():
        pass
    assert admission.breaker.state is BreakerState.CLOSED


class _StepCounter(trio.abc.Instrument):
    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        if task is self.task:
            self.steps += 1


async def yields_during(body: object) -> int:
    """How many times the current task is scheduled again while ``await body()`` runs."""
    counter = _StepCounter(trio.lowlevel.current_task())
    trio.lowlevel.add_instrument(counter)
    try:
        await body()  # type: ignore[operator]
    finally:
        trio.lowlevel.remove_instrument(counter)
    return counter.steps


async def test_one_checkpoint_to_get_in_none_to_get_out_none_to_be_refused() -> None:
    admission = fixed(max_concurrent_requests=1, min_limit=1)

    async def admitted() -> None:
        async with admission.throttle_request():
            pass

    assert await yields_during(admitted) == 1

    async def refused() -> None:
        async with admission.throttle_request():
            with pytest.raises(Overloaded):
                async with admission.throttle_request():
                    pass

    assert await yields_during(refused) == 1  # only the outer request's checkpoint
