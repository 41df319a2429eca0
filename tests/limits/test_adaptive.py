"""The adaptive limiter: windows on a virtual clock, outcomes, partitions, cancellation."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from dtesn_trio.errors import InvalidRequest, Overloaded
from dtesn_trio.limits import (
    AdaptiveLimiter,
    AdaptiveLimiterConfig,
    AIMDLimit,
    FixedLimit,
    Sample,
    Ticket,
)
from tests.limits.cancel import cancel_at_step


def window(**kw: object) -> AdaptiveLimiterConfig:
    return AdaptiveLimiterConfig(
        min_window_time=1.0,
        max_window_time=1.0,
        window_size=3,
        **kw,  # type: ignore[arg-type]
    )


async def burst_of_calls(
    limiter: AdaptiveLimiter, n: int, hold: float, dropped: int = 0, priority: int = 0
) -> None:
    """``n`` calls admitted together, held ``hold`` s; the first ``dropped`` of them drop."""
    tickets = [limiter.acquire_nowait(priority) for _ in range(n)]
    await trio.sleep(hold)
    for i, ticket in enumerate(tickets):
        if i < dropped:
            ticket.on_dropped()
        else:
            ticket.on_success()


async def test_the_limit_is_the_capacity_limiters_total_tokens(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1), window())
    assert isinstance(limiter.capacity_limiter, trio.CapacityLimiter)
    assert limiter.capacity_limiter.total_tokens == 10
    # t=0.5: the first sample opens a window that closes at the first sample after t=1.5.
    await burst_of_calls(limiter, 6, 0.5)
    assert limiter.statistics().windows == 0
    await trio.sleep_until(1.0)
    await burst_of_calls(limiter, 6, 0.5)
    # Closed at t=1.5 by the 7th sample: busy (6 >= 10/2) and fast, so AIMD adds one.
    stats = limiter.statistics()
    assert stats.windows == 1
    assert stats.last_sample == Sample(rtt=0.5, inflight=6, dropped=False, success_rate=1.0)
    assert limiter.capacity_limiter.total_tokens == limiter.limit == 11
    assert (stats.succeeded, stats.in_flight, stats.avg_rtt) == (12, 0, 0.5)


async def test_drops_lower_the_limit(autojump_clock: trio.testing.MockClock) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1), window())
    await burst_of_calls(limiter, 6, 0.5, dropped=3)
    await trio.sleep_until(1.5)
    await burst_of_calls(limiter, 1, 0.0)  # zero RTT: not a sample, but it closes nothing
    assert limiter.limit == 10
    await burst_of_calls(limiter, 1, 0.5)
    stats = limiter.statistics()
    assert stats.last_sample == Sample(rtt=0.5, inflight=6, dropped=True, success_rate=4 / 7)
    assert limiter.limit == 9
    assert (stats.dropped, stats.succeeded) == (3, 5)


async def test_lowering_the_limit_lets_current_holders_finish(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1, backoff_ratio=0.5), window())
    await burst_of_calls(limiter, 3, 0.5, dropped=3)
    held = [limiter.acquire_nowait() for _ in range(8)]
    await trio.sleep_until(1.5)
    await burst_of_calls(limiter, 1, 0.5, dropped=1)
    assert limiter.limit == 5
    assert limiter.in_flight == 8
    with pytest.raises(Overloaded):
        limiter.acquire_nowait()
    for ticket in held[:4]:
        ticket.on_ignore()
    limiter.acquire_nowait().on_ignore()  # 4 in flight < 5


class AlwaysGrow:
    """An algorithm without an app-limited guard of its own: +5 per window."""

    def __init__(self, limit: int) -> None:
        self.limit = limit

    def update(self, sample: Sample) -> int:
        self.limit += 5
        return self.limit


async def test_no_growth_while_less_than_half_the_limit_is_used(
    autojump_clock: trio.testing.MockClock,
) -> None:
    algorithm = AlwaysGrow(10)
    limiter = AdaptiveLimiter(algorithm, window())
    for _ in range(50):
        await burst_of_calls(limiter, 4, 0.05)  # 4 < 10 / 2
    stats = limiter.statistics()
    assert stats.windows >= 2
    assert stats.growth_blocked == stats.windows
    assert limiter.limit == 10
    for _ in range(25):
        await burst_of_calls(limiter, 5, 0.05)
    assert limiter.limit == algorithm.limit > 10


async def test_calls_under_the_rtt_threshold_are_not_samples(
    autojump_clock: trio.testing.MockClock,
) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1), window(min_rtt_threshold=0.01))
    for _ in range(100):
        await burst_of_calls(limiter, 6, 0.005)
    stats = limiter.statistics()
    assert (stats.windows, stats.succeeded, stats.avg_rtt) == (0, 600, 0.0)


async def test_too_few_samples_discard_the_window(autojump_clock: trio.testing.MockClock) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1), window())
    for _ in range(4):
        await burst_of_calls(limiter, 1, 1.0)  # 2 samples per window of 1 s < 3
    assert limiter.statistics().windows == 0


async def test_limit_bounds_of_the_config_apply(autojump_clock: trio.testing.MockClock) -> None:
    limiter = AdaptiveLimiter(AIMDLimit(10, min_limit=1), window(max_limit=10))
    for _ in range(5):
        await burst_of_calls(limiter, 10, 1.0)
    assert limiter.limit == 10
    assert limiter.statistics().windows >= 3


async def test_lower_priorities_are_refused_first() -> None:
    limiter = AdaptiveLimiter(
        FixedLimit(10), AdaptiveLimiterConfig(priority_levels=3, partitions=(0.2, 0.2, 0.0))
    )
    low = [limiter.acquire_nowait(2) for _ in range(6)]
    with pytest.raises(Overloaded) as info:
        limiter.acquire_nowait(2)  # the last 4 are kept for priorities 0 and 1
    assert info.value.retry_after == 1.0
    mid = [limiter.acquire_nowait(1) for _ in range(2)]
    with pytest.raises(Overloaded):
        limiter.acquire_nowait(1)
    top = [limiter.acquire_nowait(0) for _ in range(2)]
    with pytest.raises(Overloaded):
        limiter.acquire_nowait(0)
    stats = limiter.statistics()
    assert (stats.in_flight, stats.in_flight_by_priority, stats.refused) == (10, (2, 2, 6), 3)
    for ticket in [*low, *mid, *top]:
        ticket.on_success()
    assert limiter.statistics().in_flight_by_priority == (0, 0, 0)


async def test_spare_capacity_is_shared() -> None:
    limiter = AdaptiveLimiter(
        FixedLimit(10), AdaptiveLimiterConfig(priority_levels=3, partitions=(0.2, 0.2, 0.0))
    )
    # Priority 0 may use everything, including the share kept for priority 1.
    tickets = [limiter.acquire_nowait(0) for _ in range(10)]
    with pytest.raises(Overloaded):
        limiter.acquire_nowait(0)
    # Once priority 0 holds its share, the rest is open to lower levels again.
    for ticket in tickets[:6]:
        ticket.on_ignore()
    tickets = [limiter.acquire_nowait(2) for _ in range(4)]
    with pytest.raises(Overloaded):
        limiter.acquire_nowait(2)


async def test_a_ticket_ends_once() -> None:
    limiter = AdaptiveLimiter(FixedLimit(1))
    ticket = limiter.acquire_nowait()
    ticket.on_success()
    with pytest.raises(RuntimeError, match="already ended"):
        ticket.on_dropped()
    assert limiter.in_flight == 0


async def test_calls_admitted_at_once_and_waiting_acquires_share_trios_tokens() -> None:
    limiter = AdaptiveLimiter(FixedLimit(2))
    cl = limiter.capacity_limiter
    # while no task waits, admitting edits trio's own records (not a copy of them)
    assert limiter._borrowers is not None, "this trio keeps its borrowers elsewhere"
    first, second = limiter.acquire_nowait(), limiter.acquire_nowait()
    assert (cl.borrowed_tokens, cl.available_tokens) == (2, 0)
    with pytest.raises(Overloaded):
        limiter.acquire_nowait()
    got: list[Ticket] = []

    async def take() -> None:
        got.append(await limiter.acquire())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(take)
        await trio.testing.wait_all_tasks_blocked()
        assert cl.statistics().tasks_waiting == 1
        first.on_success()  # a task waits: the token goes to it
        await trio.testing.wait_all_tasks_blocked()
    assert len(got) == 1
    assert (cl.borrowed_tokens, cl.statistics().tasks_waiting) == (2, 0)
    with pytest.raises(Overloaded):  # nobody waits now, and no token is free
        limiter.acquire_nowait()
    second.on_success()
    got[0].on_success()
    assert (cl.borrowed_tokens, limiter.in_flight) == (0, 0)
    # a token taken from the trio limiter directly is one the limiter does not give out
    outsider = object()
    cl.acquire_on_behalf_of_nowait(outsider)
    only = limiter.acquire_nowait()
    with pytest.raises(Overloaded):
        limiter.acquire_nowait()
    only.on_ignore()
    cl.release_on_behalf_of(outsider)
    assert cl.borrowed_tokens == 0


async def test_waiting_acquire_cancelled_at_every_checkpoint(
    autojump_clock: trio.testing.MockClock,
) -> None:
    step, cancelled = 1, True
    while cancelled:
        limiter = AdaptiveLimiter(FixedLimit(1), AdaptiveLimiterConfig(priority_levels=2))
        holder = limiter.acquire_nowait(0)
        got: list[Ticket] = []

        async def take(lim: AdaptiveLimiter = limiter, got: list[Ticket] = got) -> None:
            got.append(await lim.acquire(1))

        async with trio.open_nursery() as nursery:

            async def release(ticket: Ticket = holder) -> None:
                await trio.sleep(1.0)
                ticket.on_success()

            nursery.start_soon(release)
            cancelled = await cancel_at_step(step, take)
        stats = limiter.statistics()
        if cancelled:
            assert not got
            assert (stats.in_flight, stats.in_flight_by_priority, stats.waiting) == (0, (0, 0), 0)
        else:
            assert trio.current_time() >= 1.0
            assert stats.in_flight_by_priority == (0, 1)
            got[0].on_ignore()
            assert limiter.statistics().in_flight == 0
        step += 1
    assert step > 2


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_limit": 0}, "limiter.min_limit must be >= 1"),
        ({"min_limit": 5, "max_limit": 4}, "limiter.max_limit must be >= limiter.min_limit"),
        ({"window_size": 0}, "limiter.window_size"),
        ({"priority_levels": 2, "partitions": (0.5,)}, "one share per priority level"),
        ({"priority_levels": 2, "partitions": (0.6, 0.6)}, "sum to at most 1"),
        ({"min_window_time": 2.0, "max_window_time": 1.0}, "limiter.max_window_time"),
    ],
)
def test_config_errors_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AdaptiveLimiterConfig(**kwargs)  # type: ignore[arg-type]


async def test_bad_priority_is_refused() -> None:
    limiter = AdaptiveLimiter(FixedLimit(1), AdaptiveLimiterConfig(priority_levels=2))
    message = r"priority must be an integer >= 0 and <= 1 \(got 2\)"
    with pytest.raises(InvalidRequest, match=message) as info:
        limiter.acquire_nowait(2)
    assert info.value.field == "priority"
    with pytest.raises(InvalidRequest, match=r"\(got True\)"):
        await limiter.acquire(True)
