"""run_soak and the sampler on virtual time: samples at exact times, a slow stats endpoint
cannot stall the sampler, an interrupt keeps a consistent partial run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import trio
import trio.testing

from dtesn_trio.soak.loadgen import LoadConfig, RequestSpec
from dtesn_trio.soak.recorder import Outcome
from dtesn_trio.soak.runner import run_soak
from dtesn_trio.soak.sampler import Sampler


@dataclass
class VirtualTarget:
    kind: str = "virtual"
    service: float = 0.1
    stats_delay: float = 0.0
    sampled_at: list[float] = field(default_factory=list)
    served: int = 0

    async def call(self, request: RequestSpec) -> Outcome:
        await trio.sleep(self.service)
        self.served += 1
        return Outcome.OK

    async def sample(self) -> dict[str, Any]:
        self.sampled_at.append(trio.current_time())
        await trio.sleep(self.stats_delay)
        return {"stats": {"load.current_limit": float(self.served)}, "metrics": {}}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


async def test_samples_at_every_interval_and_at_the_end(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = VirtualTarget()
    run = await run_soak(target, LoadConfig(duration=3.0, rate=10), sample_interval=1.0)
    # Sampled at 0, 1, 2 during the load; the load ended at 3.0 (last send 2.9 + 0.1), when
    # the final sample was taken.
    assert [s["t"] for s in run.samples] == [0.0, 1.0, 2.0, 3.0]
    assert run.samples[-1]["headlines"]["limiter_limit"] == 30.0
    assert run.result.sent == run.result.ok == 30
    assert not run.interrupted
    report = run.report()
    assert report["counts"]["sent"] == 30
    assert report["client"]["cpu_ms_per_request"] is not None


async def test_a_slow_stats_endpoint_is_recorded_not_waited_for(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = VirtualTarget(stats_delay=10.0)
    sampler = Sampler(target, interval=0.5)
    start = trio.current_time()
    with trio.move_on_after(2.01):
        await sampler.run(start)
    # Each sample gave up after one interval; the sample due at 2.0 was cut off unrecorded.
    assert [s["t"] for s in sampler.samples] == [0.0, 0.5, 1.0, 1.5]
    assert all(s["error"] == "timed out" for s in sampler.samples)


async def test_interrupt_stops_at_once_with_consistent_counts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = VirtualTarget(service=5.0)
    interrupt = trio.Event()
    start = trio.current_time()
    async with trio.open_nursery() as nursery:

        async def press_ctrl_c() -> None:
            await trio.sleep(2.05)
            interrupt.set()

        nursery.start_soon(press_ctrl_c)
        run = await run_soak(
            target, LoadConfig(duration=60.0, rate=10), interrupt=interrupt, sample_interval=1.0
        )
    assert run.interrupted
    assert trio.current_time() - start < 3.5
    r = run.result
    assert r.sent == 21
    assert (r.answered, r.unfinished) == (0, 21)
    report = run.report()
    assert report["interrupted"] is True
    assert (
        report["counts"]["sent"]
        == report["counts"]["answered"]
        + report["counts"]["failed"]
        + report["counts"]["unfinished"]
    )


async def test_soak_url_returns_the_report() -> None:
    from dtesn_trio.soak import soak_url
    from tests.soak.app import EchoApp, serve_app

    app = EchoApp(fail_every=4)
    with trio.fail_after(30):
        async with serve_app(app) as url:
            report = await soak_url(
                url, LoadConfig(duration=0.5, rate=40, deadline_ms=1000), sample_interval=None
            )
    assert report["counts"]["sent"] == 20 == app.requests
    assert report["by_status"]["503 overloaded"]["count"] == 5
    assert report["latency_ms"]["refused"]["count"] == 5
    assert report["target_samples"] == []
