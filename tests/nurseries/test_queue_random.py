"""Random schedules of submits, cancellations, engine failures and a close (hypothesis).

Whatever happens, every submit ends exactly one way, nothing that expired or was refused
is ever processed, and the queue's statistics add up to what the submitters saw.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dtesn_trio.errors import DeadlineExceeded, Overloaded, ShuttingDown
from dtesn_trio.nurseries import BatchQueueConfig, BatchQueueStatistics, open_batch_queue


@dataclass(frozen=True)
class Op:
    start: float
    priority: int
    deadline: float | None  # relative to its start
    cancel_after: float | None
    kind: str  # "ok", "bad" (per-item error), "poison" (the whole batch raises)
    wait: bool


ops_strategy = st.lists(
    st.builds(
        Op,
        start=st.integers(0, 30).map(lambda n: n / 100),
        priority=st.integers(0, 2),
        deadline=st.none() | st.integers(1, 40).map(lambda n: n / 100),
        cancel_after=st.none() | st.integers(0, 30).map(lambda n: n / 100),
        kind=st.sampled_from(["ok", "ok", "ok", "bad", "poison"]),
        wait=st.booleans(),
    ),
    min_size=1,
    max_size=25,
)

config_strategy = st.builds(
    BatchQueueConfig,
    priority_levels=st.just(3),
    capacity_per_level=st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
    max_batch_size=st.integers(1, 4),
    max_wait=st.sampled_from([0.0, 0.02, 0.1]),
    workers=st.integers(1, 3),
    lifo_delay=st.sampled_from([None, 0.0, 0.05]),
    default_timeout=st.sampled_from([None, 0.15, (0.1, None, 0.2)]),
    timeout_action=st.sampled_from(["reject", ("reject", "delay", "delay")]),
    max_skips=st.sampled_from([None, 1, 3]),
    adaptive_timeout=st.booleans(),
    adaptive_min=st.just(0.05),
    adaptive_initial=st.just(0.2),
    retry_individually=st.booleans(),
    close_grace=st.sampled_from([0.0, 0.05, 1.0]),
)


def run_schedule(
    ops: list[Op], config: BatchQueueConfig, close_at: float, duration: float
) -> tuple[dict[int, list[object]], list[list[int]], BatchQueueStatistics]:
    outcomes: dict[int, list[object]] = {i: [] for i in range(len(ops))}
    calls: list[list[int]] = []
    poison = {i for i, op in enumerate(ops) if op.kind == "poison"}
    bad = {i for i, op in enumerate(ops) if op.kind == "bad"}

    async def engine(items: list[int]) -> list[int | BaseException]:
        calls.append(list(items))
        await trio.sleep(duration)
        if poison & set(items):
            raise ValueError("poisoned batch")
        return [ValueError("bad item") if i in bad else i * 10 for i in items]

    async def main() -> BatchQueueStatistics:
        async def one(i: int, op: Op) -> None:
            await trio.sleep(op.start)
            deadline = None if op.deadline is None else trio.current_time() + op.deadline
            with trio.CancelScope() as scope:
                if op.cancel_after is not None:
                    scope.deadline = trio.current_time() + op.cancel_after
                try:
                    value = await q.submit(i, priority=op.priority, deadline=deadline, wait=op.wait)
                except (ValueError, DeadlineExceeded, Overloaded, ShuttingDown) as exc:
                    outcomes[i].append(exc)
                else:
                    outcomes[i].append(value)
            if scope.cancelled_caught:
                outcomes[i].append("cancelled")

        async with trio.open_nursery() as outer, open_batch_queue(engine, config) as q:
            for i, op in enumerate(ops):
                outer.start_soon(one, i, op)
            await trio.sleep(close_at)
            q.close()
        return q.statistics()

    stats = trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    return outcomes, calls, stats


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=ops_strategy,
    config=config_strategy,
    close_at=st.integers(0, 50).map(lambda n: n / 100),
    duration=st.sampled_from([0.0, 0.01, 0.05]),
)
def test_every_submit_gets_exactly_one_outcome_and_stats_add_up(
    ops: list[Op], config: BatchQueueConfig, close_at: float, duration: float
) -> None:
    outcomes, calls, stats = run_schedule(ops, config, close_at, duration)

    # exactly one outcome per submit
    for i, seen in outcomes.items():
        assert len(seen) == 1, (i, seen)
    final = {i: seen[0] for i, seen in outcomes.items()}

    # results belong to their own item
    for i, outcome in final.items():
        if isinstance(outcome, int):
            assert outcome == i * 10
            assert ops[i].kind == "ok"

    # what expired or was refused was never processed
    processed = Counter(x for call in calls for x in call)
    for i, outcome in final.items():
        if isinstance(outcome, DeadlineExceeded | Overloaded):
            assert processed[i] == 0, (i, outcome)
        limit = 2 if config.retry_individually else 1
        assert processed[i] <= limit
    assert sum(len(c) for c in calls) >= stats.processed

    # the statistics add up to what the submitters saw
    kinds = Counter(
        "completed" if isinstance(o, int) else "cancelled" if o == "cancelled" else type(o).__name__
        for o in final.values()
    )
    assert stats.submitted == len(ops)
    assert stats.completed == kinds["completed"]
    assert stats.failed == kinds["ValueError"]
    assert stats.expired == kinds["DeadlineExceeded"]
    assert stats.shut_down == kinds["ShuttingDown"]
    assert stats.rejected_full + stats.rejected_deadline == kinds["Overloaded"]
    assert stats.cancelled == kinds["cancelled"]
    assert stats.invalid == 0
    assert (
        stats.completed
        + stats.failed
        + stats.expired
        + stats.cancelled
        + stats.shut_down
        + stats.rejected_full
        + stats.rejected_deadline
        == stats.submitted
    )
    # nothing left behind
    assert stats.total_queued == 0
    assert stats.queued == (0, 0, 0)
    assert stats.running_batches == 0
    assert stats.running_items == 0
