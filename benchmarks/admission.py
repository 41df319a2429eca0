"""Cost of admission: enter+exit of ``throttle_request()`` next to a bare ``trio.CapacityLimiter``.

Two scenarios, each measured for admission and for the bare limiter in the same run,
back to back in alternating order (the machine is shared); the ratio is the median of
the per-round ratios:

* uncontended: one task, ``async with x: pass`` in a loop;
* contended: 1000 tasks looping ``async with x: await checkpoint()`` at once, so 1000
  calls are in flight and every enter competes with 999 other tasks for the scheduler.
  Both primitives are sized to admit all of them (admission refuses instead of waiting,
  so a smaller limit would compare refusals with waits); priorities cycle 0..4.

Throughput is per CPU-second of this process (``time.process_time``): on a shared machine
wall time also counts the time other processes held the CPU, which made the two sides of
a pair differ by more than the thing measured.

Admission runs with its defaults (adaptive Gradient2 limit, adaptive GCRA rate, breaker)
except for a rate and limit high enough never to refuse.

    python benchmarks/admission.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import trio  # noqa: E402

from dtesn_trio.limits import Admission, AdmissionConfig  # noqa: E402

TASKS = 1000


def make_admission(limit: int) -> Admission:
    return Admission(
        AdmissionConfig(
            max_concurrent_requests=limit,
            max_requests_per_second=1e9,
            burst_limit=1_000_000,
        )
    )


Factory = Callable[[int], AbstractAsyncContextManager[object]]


def bare_factory(limiter: trio.CapacityLimiter) -> Factory:
    return lambda priority: limiter


async def uncontended(enter: Factory, seconds: float) -> float:
    ops = 0
    start = time.process_time()
    deadline = start + seconds
    while True:
        for _ in range(1000):
            async with enter(0):
                pass
        ops += 1000
        now = time.process_time()
        if now >= deadline:
            return ops / (now - start)


async def contended(enter: Factory, seconds: float) -> float:
    ops = 0
    stop = False

    async def worker(priority: int) -> None:
        nonlocal ops
        while not stop:
            async with enter(priority):
                await trio.lowlevel.checkpoint()
            ops += 1

    start = time.process_time()
    async with trio.open_nursery() as nursery:
        for i in range(TASKS):
            nursery.start_soon(worker, i % 5)
        await trio.sleep(seconds)
        stop = True
        elapsed = time.process_time() - start
        counted = ops
    return counted / elapsed


async def measure(rounds: int, seconds: float) -> dict[str, float]:
    results: dict[str, list[float]] = {k: [] for k in ("adm", "bare", "c_adm", "c_bare")}
    for i in range(rounds):
        # Pairs measured back to back, in alternating order, so drift in the machine's
        # load (it is shared) hits both sides alike; ratios are taken per round.
        bare = trio.CapacityLimiter(TASKS)
        admission = make_admission(TASKS)
        pair = [
            ("bare", uncontended, bare_factory(bare)),
            ("adm", uncontended, admission.throttle_request),
        ]
        bare = trio.CapacityLimiter(TASKS)
        c_admission = make_admission(2 * TASKS)
        c_pair = [
            ("c_bare", contended, bare_factory(bare)),
            ("c_adm", contended, c_admission.throttle_request),
        ]
        for key, scenario, factory in pair[:: 1 if i % 2 else -1] + c_pair[:: 1 if i % 2 else -1]:
            results[key].append(await scenario(factory, seconds))
        assert c_admission.statistics().refused_overloaded == 0
    med = {k: statistics.median(v) for k, v in results.items()}
    ratio = statistics.median(a / b for a, b in zip(results["adm"], results["bare"], strict=True))
    c_ratio = statistics.median(
        a / b for a, b in zip(results["c_adm"], results["c_bare"], strict=True)
    )
    return {
        "admission_ops_per_s": round(med["adm"]),
        "bare_limiter_ops_per_s": round(med["bare"]),
        "ratio": round(ratio, 3),
        "contended_admission_ops_per_s": round(med["c_adm"]),
        "contended_bare_ops_per_s": round(med["c_bare"]),
        "contended_ratio": round(c_ratio, 3),
        "rounds": rounds,
        "seconds_per_round": seconds,
        "tasks": TASKS,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (< 45 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rounds, seconds = (5, 1.0) if args.quick else (7, 3.0)
    result = trio.run(measure, rounds, seconds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"admission benchmark: {rounds} rounds x {seconds:g} s each; medians (ratio: of rounds)")
    print(f"{'scenario':<28}{'admission ops/s':>17}{'bare ops/s':>13}{'ratio':>8}")
    print(
        f"{'uncontended (1 task)':<28}{result['admission_ops_per_s']:>17,}"
        f"{result['bare_limiter_ops_per_s']:>13,}{result['ratio']:>8.2f}"
    )
    print(
        f"{f'contended ({TASKS} tasks)':<28}{result['contended_admission_ops_per_s']:>17,}"
        f"{result['contended_bare_ops_per_s']:>13,}{result['contended_ratio']:>8.2f}"
    )
    print("target: ratio and contended_ratio >= 0.7")


if __name__ == "__main__":
    main()
