"""Engines: what the runtime costs over the bare queue, and what batching buys a user's model.

- ``runtime_vs_queue``: requests per second through the whole runtime (admission ->
  queue -> executor thread -> encode) over a trivial identity engine, divided by the bare
  priority batch queue (``open_batch_queue``) whose batch function runs the same engine
  in a worker thread, each caller decoding its input and encoding its output -- what a
  user would write with the queue alone.  Same callers,
  same engine, same queue configuration (batch size, window, two workers), both with
  at most two batches computing at once; the runtime with its default admission (the
  breaker and the concurrency limit on every request).  Both sides run under the same
  interpreter GIL switch interval, the one ``open_runtime`` sets
  (``processor.switch_interval``, ``switch_interval`` in the JSON): it is a
  process-wide setting, not work of the runtime's, and it moves the bare queue's rate
  as much as the runtime's.
  Alternating rounds in one run (the machine is shared).
- ``sklearn_batch_speedup``: the scikit-learn digits engine (``examples/sklearn_digits.py``,
  logistic regression, ``predict_proba``) through the same runtime with batches of up
  to 32 against batches of one.

    python benchmarks/engines.py [--quick] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import trio  # noqa: E402

from dtesn_trio import (  # noqa: E402
    AdmissionConfig,
    BatchQueueConfig,
    JobsConfig,
    RuntimeConfig,
    open_batch_queue,
    open_runtime,
)

CALLERS = 256
BATCH = 32


class Identity:
    """The trivial engine: every cost measured is the runtime's."""

    def decode(self, payload: Any) -> Any:
        return payload

    def process_batch(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def encode(self, output: Any) -> Any:
        return output


def config(batch: int) -> RuntimeConfig:
    return RuntimeConfig(
        # admission as a user gets it (no rate limit, a fixed limit of 10,000 in
        # flight): a rate limit of 1e9/s set only to keep it from refusing is not
        # something a user would configure, and it cost the runtime a check per request
        admission=AdmissionConfig(),
        queue=BatchQueueConfig(max_batch_size=batch, max_wait=0.005, workers=2),
        jobs=JobsConfig(enabled=False),
    )


async def callers(n: int, call: Any, inputs: Sequence[Any]) -> float:
    """``n`` inputs through ``call`` from CALLERS concurrent callers; inputs per second."""
    per_caller = n // CALLERS

    async def caller(k: int) -> None:
        for i in range(per_caller):
            await call(inputs[(k * per_caller + i) % len(inputs)])

    start = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for k in range(CALLERS):
            nursery.start_soon(caller, k)
    return per_caller * CALLERS / (time.perf_counter() - start)


async def through_runtime(engine: Any, n: int, inputs: Sequence[Any], batch: int) -> float:
    async with open_runtime(config(batch), engine=engine) as rt:
        await rt.process(inputs[0], use_cache=False)  # warm-up: threads

        async def call(x: Any) -> None:
            await rt.process(x, use_cache=False)

        return await callers(n, call, inputs)


async def through_queue(engine: Identity, n: int, inputs: Sequence[Any]) -> float:
    async def run(items: list[Any]) -> list[Any]:
        return await trio.to_thread.run_sync(engine.process_batch, items)

    queue_config = config(BATCH).queue
    with switch_interval(config(BATCH).processor.switch_interval):
        async with open_batch_queue(run, queue_config) as queue:
            await queue.submit(inputs[0], priority=2)

            async def call(x: Any) -> None:
                # the same engine's whole path: decode, the batch, encode
                engine.encode(await queue.submit(engine.decode(x), priority=2))

            return await callers(n, call, inputs)


@contextmanager
def switch_interval(interval: float | None) -> Iterator[None]:
    """The GIL switch interval ``open_runtime`` runs under, for the bare queue's side
    (``None``: the interpreter's, as the runtime leaves it)."""
    before = sys.getswitchinterval()
    if interval is not None:
        sys.setswitchinterval(interval)
    try:
        yield
    finally:
        sys.setswitchinterval(before)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="finish in well under 60 s")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    rounds, n, n_sklearn = (3, 8192, 4096) if args.quick else (5, 32768, 16384)
    # the identity rounds take a fraction of a second each: more of them, for a median
    # that the other processes on a shared machine move less
    identity_rounds = 2 * rounds + 1
    identity = Identity()
    numbers = list(range(1000))
    runtime_rates, queue_rates = [], []
    for r in range(identity_rounds):
        if r % 2:
            queue_rates.append(trio.run(through_queue, identity, n, numbers))
        runtime_rates.append(trio.run(through_runtime, identity, n, numbers, BATCH))
        if not r % 2:
            queue_rates.append(trio.run(through_queue, identity, n, numbers))
    ratios = [a / b for a, b in zip(runtime_rates, queue_rates, strict=True)]

    from examples.sklearn_digits import factory, samples

    digits = factory()
    images, _ = samples(512)
    batched, single = [], []
    for r in range(rounds):
        if r % 2:
            single.append(trio.run(through_runtime, digits, n_sklearn // 4, images, 1))
        batched.append(trio.run(through_runtime, digits, n_sklearn, images, BATCH))
        if not r % 2:
            single.append(trio.run(through_runtime, digits, n_sklearn // 4, images, 1))
    speedups = [a / b for a, b in zip(batched, single, strict=True)]
    result = {
        "runtime_identity_per_s": round(statistics.median(runtime_rates), 1),
        "queue_identity_per_s": round(statistics.median(queue_rates), 1),
        "runtime_vs_queue": round(statistics.median(ratios), 3),
        "sklearn_batched_per_s": round(statistics.median(batched), 1),
        "sklearn_single_per_s": round(statistics.median(single), 1),
        "sklearn_batch_speedup": round(statistics.median(speedups), 2),
        "rounds": rounds,
        "identity_rounds": identity_rounds,
        "switch_interval": config(BATCH).processor.switch_interval,
        "callers": CALLERS,
        "batch": BATCH,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"engines ({rounds} rounds, {CALLERS} callers, batches of up to {BATCH})")
    rows = [
        ("runtime, identity engine", result["runtime_identity_per_s"], "/s"),
        ("bare queue, same engine", result["queue_identity_per_s"], "/s"),
        ("runtime_vs_queue (>= 0.8)", result["runtime_vs_queue"], ""),
        ("sklearn, batches of 32", result["sklearn_batched_per_s"], "/s"),
        ("sklearn, one at a time", result["sklearn_single_per_s"], "/s"),
        ("sklearn_batch_speedup", result["sklearn_batch_speedup"], "x"),
    ]
    for label, value, unit in rows:
        print(f"  {label:<30}{value:>12}{unit}")


if __name__ == "__main__":
    main()
