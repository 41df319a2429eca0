"""Batching: inputs per second through ``process_batch`` in batches of 32 vs one at a time.

Default model (depth 4, 1024 units), 64-byte text inputs, one BLAS thread (as the
processor runs it), same run. "One at a time" is the engine's fastest single-input path
(``process_one``: a sparse product per level on a state vector), not a padded batch of
one. Rounds alternate between the modes and the best round of each counts, so a busy
neighbour on a shared machine hurts both alike.

    python benchmarks/dtesn_batching.py [--quick] [--json]

Keys: ``batch32_per_s``, ``single_per_s``, ``speedup`` (target >= 3),
``build_seconds``; ``cpu_*`` are the same rates per CPU-second
of the computing thread (``time.thread_time``), a cross-check that a busy neighbour
does not distort.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
from threadpoolctl import threadpool_limits  # noqa: E402

from dtesn_trio.dtesn import DTESNConfig, DTESNModel  # noqa: E402


def rate(fn: Callable[[], object], count: int) -> tuple[float, float]:
    """Inputs per second of wall-clock time and per second of this thread's CPU time."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return count / (time.perf_counter() - wall), count / (time.thread_time() - cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description="DTESN batching speedup")
    parser.add_argument("--quick", action="store_true", help="fewer inputs and rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    n_inputs, rounds = (128, 5) if args.quick else (512, 7)
    rng = np.random.default_rng(0)
    inputs = [bytes(rng.integers(32, 127, size=64, dtype=np.uint8)) for _ in range(n_inputs)]
    batches = [inputs[i : i + 32] for i in range(0, n_inputs, 32)]

    with threadpool_limits(1):
        started = time.perf_counter()
        model = DTESNModel(DTESNConfig())
        build = time.perf_counter() - started
        # same numbers either way (the batch path is checked against the single path)
        for a, b in zip(model.process_batch(batches[0]), batches[0], strict=True):
            assert np.abs(a.features - model.process_one(b).features).max() <= 1e-12
        model.process_batch(batches[0])  # warm caches and allocator
        single: list[tuple[float, float]] = []
        batch: list[tuple[float, float]] = []
        for _ in range(rounds):
            single.append(rate(lambda: [model.process_one(x) for x in inputs], n_inputs))
            batch.append(rate(lambda: [model.process_batch(b) for b in batches], n_inputs))

    def best(rows: list[tuple[float, float]], i: int) -> float:
        return max(r[i] for r in rows)

    out = {
        "batch32_per_s": round(best(batch, 0), 1),
        "single_per_s": round(best(single, 0), 1),
        "speedup": round(best(batch, 0) / best(single, 0), 3),
        "target_speedup_min": 3.0,
        # per CPU-second of the computing thread: immune to a busy neighbour
        "cpu_batch32_per_s": round(best(batch, 1), 1),
        "cpu_single_per_s": round(best(single, 1), 1),
        "cpu_speedup": round(best(batch, 1) / best(single, 1), 3),
        "build_seconds": round(build, 3),
        "inputs": n_inputs,
        "input_bytes": 64,
        "rounds": rounds,
        "reservoir_size": model.config.reservoir_size,
        "membrane_depth": model.config.membrane_depth,
    }
    if args.json:
        print(json.dumps(out))
        return
    print(f"default model ({len(model.membranes)} membranes, 1024 units), built in {build:.3f} s")
    print(f"{n_inputs} inputs of 64 bytes, best of {rounds} alternating rounds, 1 BLAS thread")
    print(f"{'path':<36}{'inputs/s':>12}")
    print(f"{'process_one (sparse, fastest single)':<36}{out['single_per_s']:>12.1f}")
    print(f"{'process_batch × 32 (sparse)':<36}{out['batch32_per_s']:>12.1f}")
    print(f"speedup {out['speedup']:.2f}× (target >= 3)")
    print(
        f"per CPU-second of the computing thread: single {out['cpu_single_per_s']:.1f}, "
        f"batch × 32 {out['cpu_batch32_per_s']:.1f}, speedup {out['cpu_speedup']:.2f}×"
    )


if __name__ == "__main__":
    main()
