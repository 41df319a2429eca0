"""The circuit breaker: transitions at exact virtual times, neutral cancellation, states."""

from __future__ import annotations

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
    BreakerState,
    CircuitBreaker,
    CircuitBreakerConfig,
    default_ignore,
)
from tests.limits.cancel import cancel_at_step

CLOSED, OPEN, HALF_OPEN = BreakerState.CLOSED, BreakerState.OPEN, BreakerState.HALF_OPEN


class Boom(Exception):
    pass


def small(**kw: object) -> CircuitBreakerConfig:
    settings: dict[str, object] = {
        "sliding_window_size": 4,
        "minimum_calls": 4,
        "wait_in_open": 10.0,
        "permitted_calls_in_half_open": 2,
    }
    settings.update(kw)
    return CircuitBreakerConfig(**settings)  # type: ignore[arg-type]


def recorded(breaker: CircuitBreaker) -> list[tuple[float, BreakerState, BreakerState]]:
    log: list[tuple[float, BreakerState, BreakerState]] = []
    breaker.add_listener(lambda old, new: log.append((trio.current_time(), old, new)))
    return log


async def ok(seconds: float = 0.0) -> str:
    await trio.sleep(seconds)
    return "ok"


async def fail(seconds: float = 0.0) -> None:
    await trio.sleep(seconds)
    raise Boom


async def failing_call(breaker: CircuitBreaker, seconds: float = 0.0) -> None:
    with pytest.raises(Boom):
        await breaker.call(fail, seconds)


async def test_opens_waits_half_opens_and_closes_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(small())
    log = recorded(breaker)
    assert await breaker.call(ok) == "ok"
    await breaker.call(ok)
    await failing_call(breaker)
    await failing_call(breaker, 1.0)  # 2 of 4 failed at t=1: 50 % -> open
    assert log == [(1.0, CLOSED, OPEN)]
    await trio.sleep(3.0)
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire_permission()
    assert info.value.retry_after == 7.0
    assert breaker.statistics().retry_after == 7.0
    await trio.sleep_until(11.0)
    # The first call after the wait is a trial; two are allowed, the third is refused.
    async with trio.open_nursery() as nursery:
        nursery.start_soon(breaker.call, ok, 2.0)
        nursery.start_soon(breaker.call, ok, 3.0)
        await trio.testing.wait_all_tasks_blocked()
        assert breaker.state is HALF_OPEN
        with pytest.raises(CircuitOpen) as info:
            breaker.acquire_permission()
        assert info.value.retry_after == 1.0
        stats = breaker.statistics()
        assert (stats.half_open_in_flight, stats.half_open_permits_left) == (2, 0)
    assert log == [(1.0, CLOSED, OPEN), (11.0, OPEN, HALF_OPEN), (14.0, HALF_OPEN, CLOSED)]
    stats = breaker.statistics()
    assert (stats.buffered_calls, stats.not_permitted_calls_total, stats.transitions) == (0, 2, 3)


async def test_a_failed_trial_reopens_for_another_full_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(small(permitted_calls_in_half_open=1))
    log = recorded(breaker)
    breaker.transition_to_open()
    await trio.sleep(10.0)
    await failing_call(breaker, 0.5)
    assert log[1:] == [(10.0, OPEN, HALF_OPEN), (10.5, HALF_OPEN, OPEN)]
    await trio.sleep_until(20.4)
    with pytest.raises(CircuitOpen):
        await breaker.call(ok)
    await trio.sleep_until(20.5)
    await breaker.call(ok)
    assert breaker.state is CLOSED


async def test_slow_calls_open_the_breaker(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(small(sliding_window_size=2, minimum_calls=2, slow_call_duration=1.0))
    await breaker.call(ok, 0.999)
    await breaker.call(ok, 1.0)
    assert breaker.state is CLOSED  # one slow call of two: 50 % < 100 %
    await breaker.call(ok, 1.5)
    assert breaker.state is OPEN
    assert trio.current_time() == 3.499
    assert breaker.statistics().slow_calls == 0  # a fresh window once open


async def test_time_window_forgets_old_failures(autojump_clock: trio.testing.MockClock) -> None:
    breaker = CircuitBreaker(
        small(sliding_window_type="time", sliding_window_size=2, minimum_calls=2)
    )
    await trio.sleep(0.5)
    await failing_call(breaker)
    await trio.sleep_until(3.0)
    await failing_call(breaker)  # the failure at t=0.5 has left the 2-second window
    assert breaker.state is CLOSED
    assert breaker.statistics().buffered_calls == 1
    await trio.sleep_until(3.5)
    await failing_call(breaker)
    assert breaker.state is OPEN


async def test_minimum_calls_come_before_any_verdict() -> None:
    breaker = CircuitBreaker(small(sliding_window_size=10, minimum_calls=5))
    for _ in range(4):
        await failing_call(breaker)
    stats = breaker.statistics()
    assert (stats.state, stats.failure_rate, stats.failed_calls) == (CLOSED, -1.0, 4)
    await failing_call(breaker)
    assert breaker.state is OPEN


async def test_cancellation_is_neither_success_nor_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(small(minimum_calls=1, sliding_window_size=1))
    for _ in range(20):
        with trio.move_on_after(0.5):
            await breaker.call(fail, 1.0)
    stats = breaker.statistics()
    assert stats.state is CLOSED
    assert (stats.buffered_calls, stats.ignored_calls_total, stats.failed_calls_total) == (
        0,
        20,
        0,
    )


async def test_a_cancelled_trial_gives_its_slot_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(small(permitted_calls_in_half_open=1))
    breaker.transition_to_open()
    await trio.sleep(10.0)
    with trio.move_on_after(1.0):
        await breaker.call(ok, 5.0)
    stats = breaker.statistics()
    assert (stats.state, stats.half_open_in_flight, stats.half_open_permits_left) == (
        HALF_OPEN,
        0,
        1,
    )
    await breaker.call(ok)
    assert breaker.state is CLOSED


async def test_half_open_trial_cancelled_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    step, cancelled = 1, True
    while cancelled:
        breaker = CircuitBreaker(small(permitted_calls_in_half_open=1))
        breaker.transition_to_open()
        await trio.sleep(10.0)

        async def trial(b: CircuitBreaker = breaker) -> None:
            async with b:
                await trio.sleep(1.0)
                await trio.lowlevel.checkpoint()

        cancelled = await cancel_at_step(step, trial)
        stats = breaker.statistics()
        if cancelled:
            assert stats.state in (OPEN, HALF_OPEN)  # cancelled before or after the permit
            assert stats.half_open_in_flight == 0
            assert stats.failed_calls_total == stats.successful_calls_total == 0
            await breaker.call(ok)  # the slot is free
        else:
            assert stats.successful_calls_total == 1
        assert breaker.state is CLOSED
        step += 1
    assert step > 3


async def test_refusals_and_client_errors_do_not_count_by_default() -> None:
    breaker = CircuitBreaker(small(minimum_calls=1, sliding_window_size=1))
    # A passed deadline is load (the limiter's signal), not the service failing: issue 8.
    refusals = (
        InvalidRequest("x"),
        RateLimited("x"),
        Overloaded("x"),
        CircuitOpen("x"),
        DeadlineExceeded("x"),
    )
    for exc in refusals:
        with pytest.raises(type(exc)):
            async with breaker:
                raise exc
    assert breaker.state is CLOSED
    assert breaker.statistics().ignored_calls_total == 5
    assert default_ignore(BaseExceptionGroup("g", [InvalidRequest("a"), RateLimited("b")]))
    assert not default_ignore(BaseExceptionGroup("g", [InvalidRequest("a"), Boom()]))


async def test_record_predicate_chooses_what_fails() -> None:
    breaker = CircuitBreaker(
        small(
            minimum_calls=1,
            sliding_window_size=1,
            record_exception=lambda e: isinstance(e, OSError),
        )
    )
    with pytest.raises(ValueError):
        async with breaker:
            raise ValueError
    assert breaker.state is CLOSED  # not recorded: counts as a success
    with pytest.raises(OSError):
        async with breaker:
            raise OSError
    assert breaker.state is OPEN


async def test_forced_open_disabled_metrics_only_and_reset() -> None:
    breaker = CircuitBreaker(small(minimum_calls=1, sliding_window_size=1))
    log = recorded(breaker)
    breaker.transition_to_forced_open()
    with pytest.raises(CircuitOpen):
        breaker.acquire_permission()
    breaker.disable()
    await failing_call(breaker)
    assert breaker.state is BreakerState.DISABLED
    assert breaker.statistics().buffered_calls == 0
    breaker.transition_to_metrics_only()
    await failing_call(breaker)
    assert breaker.state is BreakerState.METRICS_ONLY
    assert breaker.statistics().failure_rate == 100.0
    breaker.reset()
    assert [new for _, _, new in log] == [
        BreakerState.FORCED_OPEN,
        BreakerState.DISABLED,
        BreakerState.METRICS_ONLY,
        CLOSED,
    ]
    assert breaker.statistics().buffered_calls == 0


async def test_permits_end_once_and_stale_permits_touch_only_totals() -> None:
    breaker = CircuitBreaker(small(minimum_calls=1, sliding_window_size=1))
    permit = breaker.acquire_permission()
    breaker.reset()  # a new epoch: the permit belongs to the old window
    permit.on_error(Boom(), 0.1)
    with pytest.raises(RuntimeError, match="already ended"):
        permit.on_success()
    stats = breaker.statistics()
    assert (stats.state, stats.buffered_calls, stats.failed_calls_total) == (CLOSED, 0, 1)


async def test_unfinished_trials_reopen_after_max_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = CircuitBreaker(small(permitted_calls_in_half_open=1, max_wait_in_half_open=5.0))
    breaker.transition_to_open()
    await trio.sleep(10.0)
    stuck = breaker.acquire_permission()
    await trio.sleep(5.0)
    with pytest.raises(CircuitOpen) as info:
        breaker.acquire_permission()
    assert info.value.retry_after == 10.0
    assert breaker.state is OPEN
    stuck.on_success()  # late: no effect on the new state
    assert breaker.state is OPEN


async def test_a_failing_listener_does_not_break_the_breaker(
    caplog: pytest.LogCaptureFixture,
) -> None:
    breaker = CircuitBreaker(small())

    def bad(old: BreakerState, new: BreakerState) -> None:
        raise RuntimeError("listener bug")

    breaker.add_listener(bad)
    breaker.transition_to_open()
    assert breaker.state is OPEN
    assert "listener failed" in caplog.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sliding_window_type": "ring"}, "breaker.sliding_window_type must be one of"),
        ({"failure_rate_threshold": 0}, r"breaker.failure_rate_threshold must be in \(0, 100\]"),
        ({"slow_call_rate_threshold": 150.0}, "breaker.slow_call_rate_threshold"),
        ({"permitted_calls_in_half_open": 0}, "breaker.permitted_calls_in_half_open"),
        ({"wait_in_open": -1.0}, "breaker.wait_in_open must be >= 0"),
        ({"record_exception": 3}, "breaker.record_exception must be callable"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CircuitBreakerConfig(**kwargs)  # type: ignore[arg-type]


def test_defaults_are_resilience4j_with_the_seeds_wait() -> None:
    cfg = CircuitBreakerConfig()
    assert (
        cfg.sliding_window_size,
        cfg.minimum_calls,
        cfg.failure_rate_threshold,
        cfg.slow_call_rate_threshold,
        cfg.slow_call_duration,
        cfg.permitted_calls_in_half_open,
        cfg.wait_in_open,
    ) == (100, 100, 50.0, 100.0, 60.0, 10, 30.0)
