"""The load generator on virtual time: exact arrival times, exact latencies, counts that
add up, timeouts, ramps and cancellation."""

from __future__ import annotations

import itertools
import random
from collections import Counter
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from dtesn_trio.soak.loadgen import (
    InputGenerator,
    InputSizes,
    LoadConfig,
    PriorityMix,
    RequestSpec,
    arrival_times,
    run_load,
)
from dtesn_trio.soak.recorder import Outcome, Recorder


@dataclass
class SleepTarget:
    """A target in virtual time: answers after ``service`` s; refuses priority 4 with 429;
    never answers the calls numbered in ``hang`` (1-based)."""

    service: float = 0.01
    hang: frozenset[int] = frozenset()
    calls: list[tuple[float, RequestSpec]] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0

    async def call(self, request: RequestSpec) -> Outcome:
        self.calls.append((trio.current_time(), request))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if request.priority == 4:
                await trio.lowlevel.checkpoint()
                return Outcome(429, "rate_limited")
            n = len(self.calls)
            await trio.sleep(self.service)
            if n in self.hang:
                await trio.sleep_forever()
            return Outcome.OK
        finally:
            self.in_flight -= 1


def _offsets(config: LoadConfig, n: int) -> list[float]:
    nxt = arrival_times(config)
    return [nxt() for _ in range(n)]


def test_constant_arrivals_are_evenly_spaced() -> None:
    offsets = _offsets(LoadConfig(duration=1, rate=4), 5)
    assert offsets == [0.0, 0.25, 0.5, 0.75, 1.0]


def test_ramped_constant_arrivals_follow_the_linear_ramp() -> None:
    # rate 100/s ramped over 2 s: 100 arrivals during the ramp, then 100/s.
    offsets = _offsets(LoadConfig(duration=5, rate=100, ramp=2), 400)
    assert sum(t < 2.0 for t in offsets) == 100
    assert sum(2.0 <= t < 3.0 for t in offsets) == 100
    assert offsets[1] == pytest.approx((2 * 1 * 2 / 100) ** 0.5)


def test_poisson_arrivals_have_the_rate_and_exponential_gaps() -> None:
    offsets = _offsets(LoadConfig(duration=100, rate=200, arrivals="poisson", seed=7), 20000)
    assert offsets == sorted(offsets)
    assert 20000 / offsets[-1] == pytest.approx(200, rel=0.03)
    gaps = [b - a for a, b in itertools.pairwise(offsets)]
    # Exponential gaps: their standard deviation equals their mean.
    mean = sum(gaps) / len(gaps)
    sd = (sum((g - mean) ** 2 for g in gaps) / len(gaps)) ** 0.5
    assert sd == pytest.approx(mean, rel=0.05)
    # Same seed, same arrivals.
    assert (
        _offsets(LoadConfig(duration=100, rate=200, arrivals="poisson", seed=7), 50) == offsets[:50]
    )


async def test_open_loop_sends_at_the_intended_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SleepTarget(service=0.05)
    recorder = Recorder(keep_records=True)
    start = trio.current_time()
    await run_load(LoadConfig(duration=2.0, rate=10), target, recorder)
    assert [round(t - start, 9) for t, _ in target.calls] == [i / 10 for i in range(20)]
    assert recorder.records is not None
    assert all(round(end - intended, 9) == 0.05 for intended, end, _, _ in recorder.records)
    assert (recorder.sent, recorder.answered, recorder.ok, recorder.failed) == (20, 20, 20, 0)
    assert trio.current_time() - start == pytest.approx(1.95)
    # Every request left on time (lag is clamped to the histogram's 1 µs floor).
    assert recorder.send_lag.get_total_count() == 20
    assert recorder.send_lag.get_max_value() == 1


async def test_open_loop_overlaps_requests_instead_of_waiting(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SleepTarget(service=1.0)
    recorder = Recorder()
    await run_load(LoadConfig(duration=1.0, rate=20), target, recorder)
    # A closed loop would have sent 1 request; the open loop keeps the schedule.
    assert recorder.sent == 20
    assert target.max_in_flight == 20


async def test_closed_loop_keeps_concurrency_busy(autojump_clock: trio.testing.MockClock) -> None:
    target = SleepTarget(service=0.125)  # binary-exact, so no float drift at the end
    recorder = Recorder()
    start = trio.current_time()
    await run_load(LoadConfig(duration=1.0, concurrency=4), target, recorder)
    assert recorder.sent == recorder.ok == 32
    assert target.max_in_flight == 4
    assert trio.current_time() - start == pytest.approx(1.0)


async def test_closed_loop_ramp_starts_workers_one_by_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SleepTarget(service=0.1)
    start = trio.current_time()
    await run_load(LoadConfig(duration=2.0, concurrency=4, ramp=1.0), target, Recorder())
    firsts = sorted(
        {round(t - start, 9) for t, _ in target.calls if round(t - start, 9) < 0.25 * 4}
    )
    assert firsts[:4] == [0.0, 0.1, 0.2, 0.25]


async def test_timeouts_are_failures_timed_from_the_intended_send(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SleepTarget(service=0.01, hang=frozenset({3}))
    recorder = Recorder(keep_records=True)
    start = trio.current_time()
    await run_load(LoadConfig(duration=1.0, rate=5, timeout=2.0), target, recorder)
    # The run lasts until the hung request's timeout: 0.4 s (its send) + 2 s.
    assert trio.current_time() - start == pytest.approx(2.4)
    assert recorder.records is not None
    timeouts = [(i, e) for i, e, _, k in recorder.records if k == "timeout"]
    assert len(timeouts) == 1
    intended, end = timeouts[0]
    assert end - intended == pytest.approx(2.0)
    assert (recorder.sent, recorder.answered, recorder.failed) == (5, 4, 1)
    assert recorder.by_outcome == {"200": 4, "timeout": 1}


async def test_priority_mix_and_refusals_are_counted_per_outcome(
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    config = LoadConfig(duration=10.0, rate=100, priority_mix=PriorityMix.parse("0:10,2:80,4:10"))
    await run_load(config, SleepTarget(), recorder)
    result = recorder.result()
    assert result.sent == 1000 == result.answered + result.failed
    counts = {p: result.merged(priority=p).get_total_count() for p in result.priorities}
    assert set(counts) == {0, 2, 4}
    assert counts[2] == pytest.approx(800, abs=60)
    assert recorder.by_outcome["429 rate_limited"] == counts[4]
    assert result.ok == counts[0] + counts[2]


async def test_cancelled_run_counts_abandoned_requests_as_unfinished(
    autojump_clock: trio.testing.MockClock,
) -> None:
    target = SleepTarget(service=10.0)
    recorder = Recorder()
    with trio.move_on_after(1.05):
        await run_load(LoadConfig(duration=5.0, rate=10), target, recorder)
    assert recorder.sent == 11
    assert recorder.unfinished == 11
    assert recorder.in_flight == 0
    assert recorder.sent == recorder.answered + recorder.failed + recorder.unfinished
    assert target.in_flight == 0


def test_priority_mix_parsing() -> None:
    mix = PriorityMix.parse("0:10, 2:80,4:10")
    assert mix.weights == ((0, 10.0), (2, 80.0), (4, 10.0))
    assert str(mix) == "0:10,2:80,4:10"
    draw = mix.sampler(random.Random(1))
    counts = Counter(draw() for _ in range(10000))
    assert counts[2] == pytest.approx(8000, rel=0.05)
    assert PriorityMix.parse("3").weights == ((3, 1.0),)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("9:1", "0-4"),
        ("a:b", "PRIORITY:WEIGHT"),
        ("1:-1", ">= 0"),
        ("1:0", "all be 0"),
        ("", "at least"),
    ],
)
def test_bad_priority_mix_is_refused(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PriorityMix.parse(spec)


def test_input_sizes() -> None:
    rng = random.Random(0)
    assert InputSizes.parse("64") == InputSizes("fixed", (64,))
    uniform = InputSizes.parse("uniform:16-256")
    sizes = [uniform.sampler(rng)() for _ in range(2000)]
    assert min(sizes) == 16
    assert max(sizes) == 256
    assert set(InputSizes.parse("choice:1,5").sampler(rng)() for _ in range(100)) == {1, 5}
    exp = [InputSizes.parse("exp:100").sampler(rng)() for _ in range(5000)]
    assert sum(exp) / len(exp) == pytest.approx(100, rel=0.1)
    assert str(uniform) == "uniform:16-256"


@pytest.mark.parametrize("spec", ["x", "uniform:9-3", "uniform:5", "0", "gauss:3", "choice:"])
def test_bad_input_sizes_are_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="input_size"):
        InputSizes.parse(spec)


def test_inputs_are_unique_and_sized() -> None:
    gen = InputGenerator(InputSizes.parse("uniform:1-300"), random.Random(3))
    inputs = [gen() for _ in range(3000)]
    assert (
        len(set(inputs)) == len(inputs) - sum(len(i) < 4 for i in inputs) or len(set(inputs)) > 2900
    )
    assert all(1 <= len(i) <= 300 for i in inputs)
    gen64 = InputGenerator(InputSizes.parse("64"), random.Random(3))
    batch = [gen64() for _ in range(1000)]
    assert len(set(batch)) == 1000
    assert {len(i) for i in batch} == {64}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"duration": 0, "rate": 1}, "load.duration"),
        ({"duration": 1}, "rate"),
        ({"duration": 1, "rate": -1}, "load.rate"),
        ({"duration": 1, "concurrency": 0}, "load.concurrency"),
        ({"duration": 1, "rate": 1, "ramp": 2}, "load.ramp"),
        ({"duration": 1, "rate": 1, "deadline_ms": 0}, "load.deadline_ms"),
        ({"duration": 1, "rate": 1, "arrivals": "bursty"}, "load.arrivals"),
    ],
)
def test_bad_load_config_is_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LoadConfig(**kwargs)  # type: ignore[arg-type]


def test_split_load_adds_up() -> None:
    from dtesn_trio.soak.workers import load_from_spec, load_to_spec, split_load

    load = LoadConfig(
        duration=5, rate=300, concurrency=10, priority_mix=PriorityMix.parse("0:1,4:3")
    )
    parts = split_load(load, 3)
    assert [p.rate for p, _ in parts] == [100, 100, 100]
    assert [p.concurrency for p, _ in parts] == [4, 3, 3]
    assert [p.seed for p, _ in parts] == [0, 1, 2]
    assert [round(o, 9) for _, o in parts] == [0, round(1 / 300, 9), round(2 / 300, 9)]
    assert load_from_spec(load_to_spec(load)) == load
    with pytest.raises(ValueError, match="workers must be <= concurrency"):
        split_load(LoadConfig(duration=1, concurrency=2), 3)
