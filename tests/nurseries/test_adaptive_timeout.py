"""What the adaptive queue timeout does to requests: 1.5 x the p95 of recent response
times (2 x below 90 % success), clamped; a request that would wait longer is refused at
once or expires queued.  All on virtual time, with exact times."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
import trio.testing

from dtesn_trio.errors import DeadlineExceeded, Overloaded
from dtesn_trio.nurseries import BatchQueueConfig, open_batch_queue

CONFIG = BatchQueueConfig(
    workers=1,
    max_batch_size=1,
    max_wait=0.0,
    adaptive_initial=30.0,
    adaptive_min=1.0,
    adaptive_max=120.0,
)


class Engine:
    """Takes ``seconds`` of virtual time per batch; returns its items."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ran: list[str] = []

    async def __call__(self, items: Sequence[str]) -> list[str]:
        await trio.sleep(self.seconds)
        self.ran.extend(items)
        return list(items)


async def test_short_recent_times_refuse_and_expire_long_waits_then_widen(
    autojump_clock: trio.testing.MockClock,
) -> None:
    engine = Engine(0.5)
    async with open_batch_queue(engine, CONFIG) as queue:
        assert queue.statistics().adaptive_timeout == 30.0  # no samples: the initial
        for i in range(4):
            assert await queue.submit(f"fast {i}") == f"fast {i}"
        now = trio.current_time()
        assert now == 2.0
        # p95 0.5 s x 1.5 = 0.75, clamped up to adaptive_min
        assert queue.statistics().adaptive_timeout == 1.0

        engine.seconds = 3.0
        outcomes: dict[str, object] = {}

        async def submit(name: str) -> None:
            try:
                outcomes[name] = await queue.submit(name)
            except (DeadlineExceeded, Overloaded) as exc:
                outcomes[name] = (type(exc).__name__, trio.current_time())

        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, "slow")
            await trio.testing.wait_all_tasks_blocked()  # "slow" runs until t = 5
            for name in ("b", "c", "d"):
                nursery.start_soon(submit, name)
                await trio.testing.wait_all_tasks_blocked()
        # "b" and "c" fit the estimate (half a batch, then 1.5 batches of 0.5 s) but
        # wait longer than the 1 s timeout: they expire queued at t = 3, never run.
        # "d" (2.5 batches, 1.25 s) is refused at once, at t = 2.
        assert outcomes == {
            "slow": "slow",
            "b": ("DeadlineExceeded", 3.0),
            "c": ("DeadlineExceeded", 3.0),
            "d": ("Overloaded", 2.0),
        }
        assert engine.ran[4:] == ["slow"]
        assert trio.current_time() == 5.0

        # Now p95 is the slow batch's 3 s, and the two expired requests count as
        # failures (5 of 7 succeeded; the refusal is not an outcome of the window): below
        # 90 % success, the timeout is 2 x 3 s = 6 s.  The same wait is now admitted.
        stats = queue.statistics()
        assert stats.p95_response_time == 3.0
        assert stats.success_rate == 5 / 7
        assert stats.adaptive_timeout == 6.0
        async with trio.open_nursery() as nursery:
            nursery.start_soon(submit, "slow 2")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(submit, "e")
        assert (outcomes["slow 2"], outcomes["e"]) == ("slow 2", "e")
        assert engine.ran[5:] == ["slow 2", "e"]
        assert trio.current_time() == 11.0  # "e" waited 3 s of its 6 s, then ran 3 s
        stats = queue.statistics()
    assert (stats.expired, stats.rejected_deadline) == (2, 1)


@pytest.mark.parametrize("queue_timeout", [None, 0.5])
async def test_a_configured_timeout_replaces_the_adaptive_one(
    autojump_clock: trio.testing.MockClock, queue_timeout: float | None
) -> None:
    config = BatchQueueConfig(
        workers=1, max_batch_size=1, max_wait=0.0, default_timeout=queue_timeout, adaptive_min=1.0
    )
    engine = Engine(2.0)
    async with open_batch_queue(engine, config) as queue, trio.open_nursery() as nursery:
        nursery.start_soon(queue.submit, "first")
        await trio.testing.wait_all_tasks_blocked()
        if queue_timeout is None:  # the adaptive timeout: 30 s before any sample
            assert await queue.submit("second") == "second"
            assert trio.current_time() == 4.0
        else:
            with pytest.raises(DeadlineExceeded):
                await queue.submit("second")
            assert trio.current_time() == 0.5
