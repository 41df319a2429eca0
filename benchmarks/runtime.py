"""Requests per second through the whole embedded runtime vs the engine called directly.

The runtime path is admission -> cache (off) -> priority queue -> batch worker ->
engine in a worker thread -> result, with 1,000 concurrent callers; the baseline calls
``model.process_batch`` directly, in the same batch size, on the same inputs, in the same
run (alternating rounds; the machine is shared).  ``max_step_ms`` is the longest event
loop step the runtime's loop monitor saw while the callers ran.

Model: reservoir_size 256, depth 3, 64-byte text inputs; the queue forms batches of up
to 32 with a 5 ms max wait.  The runtime is measured with the engine in worker threads
(the default: ``ratio``, against the direct call in this one thread) and in worker
processes (``processor.executor="process"``: ``process_runtime_per_s``,
``process_ratio``): this model holds the GIL while it computes, so in threads every
microsecond the event loop spends on a request is taken from the engine, while a
process computes beside the loop.  The process figure is compared at equal parallelism:
the runtime with ``PROCESSES`` (2) worker processes against
``model.process_batch`` called directly in 2 processes of a ``ProcessPoolExecutor``
(each one BLAS thread, each its own model built from the same config; the inputs go
out and the results come back pickled, as the runtime's do): ``direct_processes_per_s``.

    python benchmarks/runtime.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import trio  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dtesn_trio import (  # noqa: E402
    AdmissionConfig,
    BatchQueueConfig,
    CacheConfig,
    DTESNConfig,
    DTESNModel,
    JobsConfig,
    ProcessorConfig,
    RuntimeConfig,
    open_runtime,
)

CALLERS = 1000
BATCH = 32
PROCESSES = 2
MODEL = DTESNConfig(reservoir_size=256, membrane_depth=3)


def make_inputs(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"abcdefghijklmnopqrstuvwxyz ", dtype=np.uint8)
    return [bytes(rng.choice(letters, 64)).decode() for _ in range(n)]


def direct(model: DTESNModel, inputs: list[str]) -> float:
    start = time.perf_counter()
    for i in range(0, len(inputs), BATCH):
        model.process_batch(inputs[i : i + BATCH])
    return len(inputs) / (time.perf_counter() - start)


_worker_model: DTESNModel | None = None


def _init_worker() -> None:
    global _worker_model
    threadpool_limits(1)
    _worker_model = DTESNModel(MODEL)
    _worker_model.process_batch(make_inputs(BATCH, seed=2))  # warm-up


def _worker_batch(batch: list[str]) -> list[Any]:
    assert _worker_model is not None
    return _worker_model.process_batch(batch)


def direct_processes(pool: ProcessPoolExecutor, inputs: list[str]) -> float:
    """``process_batch`` in the pool's processes, batches handed out as each finishes."""
    start = time.perf_counter()
    batches = [inputs[i : i + BATCH] for i in range(0, len(inputs), BATCH)]
    for _ in pool.map(_worker_batch, batches):
        pass
    return len(inputs) / (time.perf_counter() - start)


async def through_runtime(inputs: list[str], executor: str = "thread") -> tuple[float, float]:
    config = RuntimeConfig(
        model=MODEL,
        admission=AdmissionConfig(
            max_concurrent_requests=CALLERS * 2,
            max_requests_per_second=1e9,
            burst_limit=1_000_000,
            adaptive_scaling=False,
        ),
        queue=BatchQueueConfig(max_batch_size=BATCH, max_wait=0.005, workers=2),
        processor=(
            ProcessorConfig(executor="process", worker_threads=PROCESSES)
            if executor == "process"
            else ProcessorConfig()
        ),
        cache=CacheConfig(enabled=False),
        jobs=JobsConfig(enabled=False),
    )
    async with open_runtime(config) as rt:
        await rt.process(inputs[0])  # warm-up: threads, BLAS
        rt.loop_monitor.reset()
        per_caller = len(inputs) // CALLERS

        async def caller(k: int) -> None:
            for x in inputs[k * per_caller : (k + 1) * per_caller]:
                await rt.process(x, priority=k % 5)

        start = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for k in range(CALLERS):
                nursery.start_soon(caller, k)
        rate = per_caller * CALLERS / (time.perf_counter() - start)
        return rate, rt.loop_monitor.statistics().max_step * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="finish in well under 45 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rounds, n = (3, 3000) if args.quick else (5, 10_000)
    model = DTESNModel(MODEL)
    inputs = make_inputs(n, seed=1)
    direct(model, inputs[:BATCH])  # warm-up
    runtime_rates, process_rates, direct_rates, steps = [], [], [], []
    direct_proc_rates: list[float] = []
    spawn = multiprocessing.get_context("spawn")  # no fork of a process that ran trio
    with ProcessPoolExecutor(PROCESSES, spawn, initializer=_init_worker) as pool:
        direct_processes(pool, inputs[: BATCH * PROCESSES])  # start and warm both
        for r in range(rounds):
            if r % 2:
                direct_rates.append(direct(model, inputs))
                direct_proc_rates.append(direct_processes(pool, inputs))
            rate, step = trio.run(through_runtime, inputs)
            runtime_rates.append(rate)
            steps.append(step)
            process_rates.append(trio.run(through_runtime, inputs, "process")[0])
            if not r % 2:
                direct_rates.append(direct(model, inputs))
                direct_proc_rates.append(direct_processes(pool, inputs))
    ratios = [a / b for a, b in zip(runtime_rates, direct_rates, strict=True)]
    process_ratios = [a / b for a, b in zip(process_rates, direct_proc_rates, strict=True)]
    result = {
        "runtime_per_s": round(statistics.median(runtime_rates), 1),
        "direct_per_s": round(statistics.median(direct_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        "process_runtime_per_s": round(statistics.median(process_rates), 1),
        "direct_processes_per_s": round(statistics.median(direct_proc_rates), 1),
        "processes": PROCESSES,
        "process_ratio": round(statistics.median(process_ratios), 3),
        "max_step_ms": round(statistics.median(steps), 2),
        "max_step_ms_worst": round(max(steps), 2),
        "rounds": rounds,
        "inputs_per_round": n,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"runtime vs direct process_batch ({rounds} rounds of {n} inputs, batch {BATCH})")
    print(f"  {'runtime (1000 callers)':<28}{result['runtime_per_s']:>10.1f} /s")
    print(f"  {'direct process_batch':<28}{result['direct_per_s']:>10.1f} /s")
    print(f"  {'ratio (target >= 0.8)':<28}{result['ratio']:>10.3f}")
    print(f"  {'runtime, engine processes':<28}{result['process_runtime_per_s']:>10.1f} /s")
    print(f"  {'direct, 2 processes':<28}{result['direct_processes_per_s']:>10.1f} /s")
    print(f"  {'process ratio (>= 0.8)':<28}{result['process_ratio']:>10.3f}")
    print(f"  {'max loop step (<= 20 ms)':<28}{result['max_step_ms']:>10.2f} ms")


if __name__ == "__main__":
    main()
