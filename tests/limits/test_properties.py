"""Random interleavings of admissions, outcomes and clock jumps keep the books balanced."""

from __future__ import annotations

import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from dtesn_trio.errors import CircuitOpen, Overloaded, RateLimited
from dtesn_trio.limits import Admission, AdmissionConfig, BreakerState, CircuitBreakerConfig

# (what, argument): admit at a priority, end the oldest held request with an outcome,
# or let virtual time pass.
actions = st.lists(
    st.one_of(
        st.tuples(st.just("admit"), st.integers(0, 2)),
        st.tuples(st.just("end"), st.sampled_from(["ok", "error", "overloaded", "cancel"])),
        st.tuples(st.just("sleep"), st.sampled_from([0.1, 1.0, 5.0])),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(actions)
def test_admission_books_stay_balanced(script: list[tuple[str, object]]) -> None:
    async def main() -> None:
        admission = Admission(
            AdmissionConfig(
                max_concurrent_requests=4,
                min_limit=1,
                max_requests_per_second=8.0,
                burst_limit=6,
                priority_levels=3,
                partitions=(0.25, 0.25, 0.0),
                algorithm="aimd",
                window_size=2,
                breaker=CircuitBreakerConfig(
                    sliding_window_size=4,
                    minimum_calls=2,
                    wait_in_open=2.0,
                    permitted_calls_in_half_open=2,
                ),
            )
        )
        held: list[tuple[trio.CancelScope, trio.Event]] = []
        outcome_box: dict[int, str] = {}

        async def request(
            priority: int,
            scope: trio.CancelScope,
            done: trio.Event,
            *,
            task_status: trio.TaskStatus[None],
        ) -> None:
            with scope:
                admitted = False
                try:
                    async with admission.throttle_request(priority=priority):
                        admitted = True
                        task_status.started()
                        await done.wait()
                        outcome = outcome_box[id(done)]
                        if outcome == "error":
                            raise RuntimeError("engine failed")
                        if outcome == "overloaded":
                            raise Overloaded("downstream full")
                except (RuntimeError, Overloaded):
                    if not admitted:
                        raise

        refused = 0
        async with trio.open_nursery() as nursery:
            for what, arg in script:
                if what == "admit":
                    scope, done = trio.CancelScope(), trio.Event()
                    try:
                        await nursery.start(request, arg, scope, done)
                    except (RateLimited, CircuitOpen, Overloaded):
                        refused += 1
                        continue
                    held.append((scope, done))
                elif what == "end" and held:
                    scope, done = held.pop(0)
                    if arg == "cancel":
                        scope.cancel()
                    else:
                        outcome_box[id(done)] = str(arg)
                        done.set()
                    await trio.testing.wait_all_tasks_blocked()
                elif what == "sleep":
                    await trio.sleep(float(arg))  # type: ignore[arg-type]
                stats = admission.statistics()
                assert stats.limiter.in_flight == len(held)
                assert sum(stats.limiter.in_flight_by_priority) == len(held)
                assert admission.limiter.capacity_limiter.borrowed_tokens == len(held)
                breaker = stats.breaker
                assert 0 <= breaker.half_open_in_flight <= 2
                assert 0 <= breaker.half_open_permits_left <= 2
                if breaker.state is BreakerState.HALF_OPEN:
                    assert breaker.half_open_in_flight <= len(held)
            for scope, _ in held:
                scope.cancel()
        stats = admission.statistics()
        assert stats.limiter.in_flight == 0
        assert stats.breaker.half_open_in_flight == 0
        lim = stats.limiter
        assert lim.succeeded + lim.dropped + lim.ignored == stats.admitted
        assert (
            stats.refused_rate_limited + stats.refused_circuit_open + stats.refused_overloaded
            == refused
        )
        b = stats.breaker
        assert b.successful_calls_total + b.failed_calls_total + b.ignored_calls_total == (
            stats.admitted + stats.refused_overloaded
        )

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
