"""Each limit algorithm on recorded sample sequences: up when fast, down when queueing or
dropping, always within its bounds."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from dtesn_trio.limits import (
    AIMDLimit,
    FixedLimit,
    Gradient2Limit,
    Sample,
    SeedScaleLimit,
    VegasLimit,
)


def run(algorithm: object, samples: list[Sample]) -> list[int]:
    return [algorithm.update(s) for s in samples]  # type: ignore[attr-defined]


def busy(rtt: float, limit: int = 1000, dropped: bool = False) -> Sample:
    return Sample(rtt=rtt, inflight=limit, dropped=dropped, success_rate=0.5 if dropped else 1.0)


def test_fixed_never_moves() -> None:
    fixed = FixedLimit(7)
    assert run(fixed, [busy(0.001), busy(9.0, dropped=True)]) == [7, 7]


def test_aimd_adds_one_per_busy_window_and_backs_off_on_drops() -> None:
    aimd = AIMDLimit(20, min_limit=5, max_limit=25)
    assert run(aimd, [busy(0.01)] * 7) == [21, 22, 23, 24, 25, 25, 25]
    # 25 * 0.9 = 22.5 -> 22; 19.8 -> 19; ... floored at min_limit.
    assert run(aimd, [busy(0.01, dropped=True)] * 3) == [22, 19, 17]
    # An RTT above the timeout (5 s) is a drop too.
    assert run(aimd, [busy(6.0)]) == [15]
    assert run(aimd, [busy(0.01, dropped=True)] * 20)[-1] == 5


def test_aimd_does_not_grow_while_app_limited() -> None:
    aimd = AIMDLimit(20, min_limit=1)
    assert run(aimd, [Sample(rtt=0.01, inflight=9)] * 3) == [20, 20, 20]
    assert run(aimd, [Sample(rtt=0.01, inflight=10)]) == [21]


def test_aimd_defaults_are_netflix() -> None:
    aimd = AIMDLimit()
    assert (aimd.limit, aimd.min_limit, aimd.max_limit, aimd.backoff_ratio, aimd.timeout) == (
        20,
        20,
        200,
        0.9,
        5.0,
    )


def vegas(**kw: object) -> VegasLimit:
    # A huge probe multiplier keeps the no-load RTT probe out of these short sequences.
    return VegasLimit(20, probe_multiplier=10_000, rng=random.Random(1), **kw)  # type: ignore[arg-type]


def test_vegas_grows_fast_when_there_is_no_queue() -> None:
    v = vegas()
    limits = run(v, [busy(0.010)] * 10)
    assert limits[0] == 20  # the first sample only learns rtt_noload
    assert all(b > a for a, b in pairwise(limits[1:]))
    assert v.rtt_noload == 0.010


def test_vegas_shrinks_when_rtt_shows_a_queue() -> None:
    v = vegas()
    run(v, [busy(0.010)] * 10)
    high = v.limit
    # Twice the no-load RTT: half the limit is queue, far above beta = 6·log10(limit).
    limits = run(v, [busy(0.020)] * 10)
    assert all(b < a for a, b in pairwise([high, *limits]))


def test_vegas_shrinks_on_drops_and_stays_in_bounds() -> None:
    v = vegas(min_limit=10, max_limit=60)
    limits = run(v, [busy(0.010)] * 50)
    assert max(limits) == 60
    limits = run(v, [busy(0.010, dropped=True)] * 50)
    assert limits[0] < 60
    assert min(limits) == 10


def test_vegas_reprobes_rtt_noload() -> None:
    v = VegasLimit(20, probe_multiplier=1, rng=random.Random(3))
    run(v, [busy(0.010)] * 5)
    run(v, [busy(0.050)] * 40)
    # After a probe the minimum is re-learnt from the slower service.
    assert v.rtt_noload == 0.050


def test_gradient2_grows_by_smoothed_queue_size_at_steady_rtt() -> None:
    g = Gradient2Limit()
    # gradient 1: new = 20·1 + 4, smoothed by 0.2 -> +0.8 per window.
    assert run(g, [busy(0.010)] * 6) == [20, 21, 22, 23, 24, 24]


def test_gradient2_shrinks_when_rtt_jumps_and_recovers() -> None:
    g = Gradient2Limit(100, min_limit=20, max_limit=200)
    run(g, [busy(0.010)] * 50)
    before = g.limit
    # Short RTT far above tolerance x long RTT: gradient 0.5, every window goes down.
    limits = run(g, [busy(0.050)] * 5)
    assert all(b < a for a, b in pairwise([before, *limits]))
    # Under the steady overload the limit does not creep up again (Netflix #134).
    after = run(g, [busy(0.050)] * 30)
    assert max(after) <= limits[-1]


def test_gradient2_shrinks_on_drops_and_stays_in_bounds() -> None:
    g = Gradient2Limit(100, min_limit=20, max_limit=120)
    assert max(run(g, [busy(0.010)] * 200)) == 120
    limits = run(g, [busy(0.010, dropped=True)] * 100)
    assert limits[0] < 120
    assert min(limits) == 20


def test_gradient2_ignores_app_limited_windows() -> None:
    g = Gradient2Limit(100)
    assert run(g, [Sample(rtt=0.010, inflight=10)] * 5) == [100] * 5


def test_seed_rule_scales_by_its_factor_and_is_clamped() -> None:
    s = SeedScaleLimit(100, min_limit=50, max_limit=200, scale_factor=1.2)
    assert run(s, [busy(0.05)] * 5) == [120, 144, 172, 200, 200]
    assert run(s, [busy(2.0)]) == [166]
    # Healthy RTT but failing calls scale down too.
    assert run(s, [Sample(rtt=0.05, inflight=1000, dropped=True, success_rate=0.5)]) == [138]
    assert run(s, [busy(0.5)]) == [138]  # neither fast nor slow: unchanged
    assert run(s, [busy(2.0)] * 10)[-1] == 50
    # Fast but idle (less than half the limit in flight): no growth.
    assert run(s, [Sample(rtt=0.05, inflight=24)]) == [50]


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: AIMDLimit(backoff_ratio=0.3), "aimd.backoff_ratio"),
        (lambda: AIMDLimit(min_limit=50, max_limit=10), "aimd.max_limit must be >= aimd.min_limit"),
        (lambda: VegasLimit(smoothing=0.0), "vegas.smoothing"),
        (lambda: Gradient2Limit(rtt_tolerance=0.5), "gradient2.rtt_tolerance"),
        (lambda: SeedScaleLimit(scale_factor=1.0), "seed.scale_factor"),
        (lambda: FixedLimit(0), "fixed.limit"),
    ],
)
def test_bad_parameters_name_the_field(factory: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        factory()  # type: ignore[operator]
