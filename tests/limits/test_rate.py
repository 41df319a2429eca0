"""The GCRA rate limiter: exact times on a virtual clock, FIFO, cancellation, adaptive rate."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dtesn_trio.errors import RateLimited
from dtesn_trio.limits import RateLimiter, RateLimiterConfig
from tests.limits.cancel import cancel_at_step


def limiter(rate: float = 4.0, burst: int = 3, **kw: object) -> RateLimiter:
    return RateLimiter(RateLimiterConfig(rate=rate, burst=burst, **kw))  # type: ignore[arg-type]


async def finish_times(rl: RateLimiter, costs: list[int]) -> list[float]:
    """Start one acquire per cost, in order, and return when each got through."""
    times: list[float] = [-1.0] * len(costs)

    async def one(i: int, cost: int) -> None:
        await rl.acquire(cost)
        times[i] = trio.current_time()

    async with trio.open_nursery() as nursery:
        for i, cost in enumerate(costs):
            nursery.start_soon(one, i, cost)
            await trio.testing.wait_all_tasks_blocked()
    return times


@pytest.mark.parametrize(("rate", "burst", "n"), [(4.0, 3, 10), (8.0, 1, 9), (2.0, 5, 8)])
async def test_n_calls_finish_at_the_times_gcra_implies(
    autojump_clock: trio.testing.MockClock, rate: float, burst: int, n: int
) -> None:
    rl = limiter(rate, burst)
    times = await finish_times(rl, [1] * n)
    # The bucket starts full: `burst` calls at once, then one every 1/rate seconds.
    assert times == [max(0.0, (k - burst + 1) / rate) for k in range(n)]
    stats = rl.statistics()
    assert (stats.acquired, stats.acquired_cost, stats.waiting) == (n, n, 0)


async def test_200_calls_at_100_per_second_take_2_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The seed slept while holding its lock: 200 calls at 100 rps took 100 s instead of 2.
    rl = limiter(128.0, 1)
    times = await finish_times(rl, [1] * 200)
    assert times[-1] == 199 / 128


async def test_nowait_refuses_with_exact_retry_after(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rl = limiter(4.0, 2)
    rl.acquire_nowait()
    rl.acquire_nowait()
    with pytest.raises(RateLimited) as info:
        rl.acquire_nowait()
    assert info.value.retry_after == 0.25
    await trio.sleep(0.125)
    with pytest.raises(RateLimited) as info:
        rl.acquire_nowait(2)
    assert info.value.retry_after == 0.375
    await trio.sleep(0.125)
    rl.acquire_nowait()
    stats = rl.statistics()
    assert (stats.acquired, stats.refused, stats.tokens_available) == (3, 2, 0.0)


async def test_waiters_are_served_fifo_and_never_overtaken(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rl = limiter(1.0, 3)
    # A big call queued first is not overtaken by later small ones (aiolimiter's heap does).
    times = await finish_times(rl, [3, 3, 1, 1])
    assert times == [0.0, 3.0, 4.0, 5.0]


async def test_nowait_does_not_jump_the_queue(autojump_clock: trio.testing.MockClock) -> None:
    rl = limiter(2.0, 2)
    rl.acquire_nowait(2)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rl.acquire, 2)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)  # one token back, but the waiter needs two
        with pytest.raises(RateLimited) as info:
            rl.acquire_nowait()
        # The waiter's two tokens come at t=1.0, ours at 1.5.
        assert info.value.retry_after == 1.0
    assert trio.current_time() == 1.0


async def test_cancelled_head_waiter_hands_its_turn_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rl = limiter(1.0, 1)
    rl.acquire_nowait()
    done: list[float] = []

    async def second() -> None:
        await rl.acquire()
        done.append(trio.current_time())

    first_scope = trio.CancelScope()

    async def first() -> None:
        with first_scope:
            await rl.acquire()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(first)
        await trio.testing.wait_all_tasks_blocked()
        nursery.start_soon(second)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
        assert rl.statistics().waiting == 2
        first_scope.cancel()
    # Cancelling a waiter gives back nothing it never took: `second` goes at t=1.0.
    assert done == [1.0]
    stats = rl.statistics()
    assert (stats.acquired, stats.waiting) == (2, 0)


async def test_cancel_at_every_checkpoint_keeps_tokens_and_queue(
    autojump_clock: trio.testing.MockClock,
) -> None:
    step = 1
    outcomes: set[bool] = set()
    while True:
        rl = limiter(4.0, 2)
        rl.acquire_nowait(2)
        start = trio.current_time()
        cancelled = await cancel_at_step(step, lambda: rl.acquire(2))  # noqa: B023
        stats = rl.statistics()
        assert stats.waiting == 0
        outcomes.add(cancelled)
        if cancelled:
            # Nothing was taken: the next two tokens are there 0.5 s after the start.
            assert stats.acquired == 1
            await trio.sleep_until(start + 0.5)
            rl.acquire_nowait(2)
        else:
            assert stats.acquired == 2
            assert trio.current_time() == start + 0.5
            break
        step += 1
    assert outcomes == {True, False}


async def test_set_rate_applies_to_a_sleeping_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rl = limiter(1.0, 1)
    rl.acquire_nowait()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(rl.acquire)
        await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(0.5)
        # Half a token is still owed; at 4/s that takes 0.125 s, not 0.5 s.
        rl.set_rate(4.0)
    assert trio.current_time() == 0.625
    assert rl.statistics().rate == 4.0


async def test_set_burst_at_run_time(autojump_clock: trio.testing.MockClock) -> None:
    rl = limiter(1.0, 1)
    rl.acquire_nowait()
    rl.set_rate(1.0, burst=3)
    rl.acquire_nowait()
    rl.acquire_nowait()
    with pytest.raises(RateLimited):
        rl.acquire_nowait()


async def test_load_adaptive_rate_rises_when_idle_and_falls_under_load() -> None:
    rl = limiter(100.0, 10, adaptive=True, max_rate=200.0, min_rate=40.0)
    rl.observe_load(0.0)
    assert rl.rate == 200.0  # the seed's formula could never go above the base
    rl.observe_load(0.25)
    assert rl.rate == 150.0
    rl.observe_load(0.5)
    assert rl.rate == 100.0
    rl.observe_load(0.75)
    assert rl.rate == 70.0
    rl.observe_load(3.0)
    assert rl.rate == 40.0
    assert rl.statistics().load == 3.0


async def test_load_is_only_recorded_when_not_adaptive() -> None:
    rl = limiter(100.0, 10)
    rl.observe_load(0.0)
    assert rl.rate == 100.0


async def test_rate_change_keeps_spent_tokens(autojump_clock: trio.testing.MockClock) -> None:
    rl = limiter(2.0, 4)
    rl.acquire_nowait(3)
    rl.set_rate(8.0)
    assert rl.statistics().tokens_available == 1.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"rate": 0.0, "burst": 1}, "rate.rate must be > 0"),
        ({"rate": 1.0, "burst": 0}, "rate.burst must be >= 1"),
        ({"rate": 1.0, "burst": 1.5}, "rate.burst must be an integer"),
        ({"rate": 10.0, "burst": 1, "max_rate": 5.0}, "rate.max_rate must be >= rate.rate"),
        ({"rate": 10.0, "burst": 1, "min_rate": 20.0}, "rate.rate must be >= rate.min_rate"),
        ({"rate": 10.0, "burst": 1, "load_target": 1.0}, "rate.load_target"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RateLimiterConfig(**kwargs)  # type: ignore[arg-type]


async def test_bad_costs_are_refused() -> None:
    rl = limiter(1.0, 2)
    with pytest.raises(ValueError, match="never fit"):
        rl.acquire_nowait(3)
    with pytest.raises(ValueError, match="cost must be an integer"):
        await rl.acquire(0)
    with pytest.raises(ValueError, match="load must be"):
        rl.observe_load(-1.0)
