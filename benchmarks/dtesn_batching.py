"""Batching: inputs per second through ``process_batch`` in batches of 32 vs one at a time.

Default model (depth 4, 1024 units), one BLAS thread (as the processor runs it), same
run. "One at a time" is the engine's fastest single-input path (``process_one``: a
sparse product per level on a state vector), not a padded batch of one. Rounds
alternate between the modes and the best round of each counts, so a busy neighbour on a
shared machine hurts both alike.

Two input sets: all exactly 64 bytes (batching's best case: every column of the batch
runs every step), and mixed lengths drawn from a lognormal distribution with median 64
bytes and sigma 0.8 (seed 0; rounded, clipped to [4, 1024] bytes: about a fifth under
32 bytes, a twentieth over 240), batched in the order drawn, as a queue would batch
them: a batch runs as many steps as its longest input, dropping finished columns when
half are done.

The limit, for the record beside the speedup: ``flops_per_input_step`` (2 x the sparse
products' non-zeros: the recurrent and parent weights of every level), the rate each
path reaches (``batch_gflops``, ``single_gflops``), and one core's peak from a 1024 x
1024 dense matmul (``peak_gflops``, one BLAS thread).

    python benchmarks/dtesn_batching.py [--quick] [--json]

Keys: ``batch32_per_s``, ``single_per_s``, ``speedup`` (target >= 3); ``mixed_batch32_per_s``,
``mixed_single_per_s``, ``mixed_speedup``, ``mixed_mean_bytes``; ``cpu_*``: the same rates
per CPU-second of the computing thread (``time.thread_time``), a cross-check that a busy
neighbour does not distort; ``build_seconds``.
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

BATCH = 32


def rate(fn: Callable[[], object], count: int) -> tuple[float, float]:
    """Inputs per second of wall-clock time and per second of this thread's CPU time."""
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return count / (time.perf_counter() - wall), count / (time.thread_time() - cpu)


def mixed_lengths(n: int, seed: int = 0) -> list[int]:
    """``n`` lengths, lognormal: median 64 bytes, sigma 0.8, clipped to [4, 1024]."""
    rng = np.random.default_rng(seed)
    raw = rng.lognormal(mean=np.log(64), sigma=0.8, size=n)
    return [int(v) for v in np.clip(np.rint(raw), 4, 1024)]


def texts(lengths: list[int], seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(32, 127, size=k, dtype=np.uint8)) for k in lengths]


def peak_gflops() -> float:
    """One core's dense double-precision rate: a 1024 x 1024 matmul, best of 5."""
    a = np.random.default_rng(0).random((1024, 1024))
    a @ a
    best = min(rate(lambda: a @ a, 1)[0] for _ in range(5))
    return 2 * 1024**3 * best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description="DTESN batching speedup")
    parser.add_argument("--quick", action="store_true", help="fewer inputs and rounds")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    n_inputs, rounds = (128, 5) if args.quick else (512, 7)
    sets = {
        "fixed": texts([64] * n_inputs, seed=0),
        "mixed": texts(mixed_lengths(n_inputs), seed=1),
    }

    with threadpool_limits(1):
        started = time.perf_counter()
        model = DTESNModel(DTESNConfig())
        build = time.perf_counter() - started
        for inputs in sets.values():
            # same numbers either way (the batch path is checked against the single path)
            first = inputs[:BATCH]
            for a, b in zip(model.process_batch(first), first, strict=True):
                assert np.abs(a.features - model.process_one(b).features).max() <= 1e-12
        rows: dict[str, dict[str, list[tuple[float, float]]]] = {
            name: {"single": [], "batch": []} for name in sets
        }
        for _ in range(rounds):
            for name, inputs in sets.items():
                batches = [inputs[i : i + BATCH] for i in range(0, len(inputs), BATCH)]
                rows[name]["single"].append(
                    rate(lambda inputs=inputs: [model.process_one(x) for x in inputs], n_inputs)
                )
                rows[name]["batch"].append(
                    rate(lambda b=batches: [model.process_batch(x) for x in b], n_inputs)
                )
        peak = peak_gflops()

    def best(name: str, path: str, i: int) -> float:
        return max(r[i] for r in rows[name][path])

    nnz = sum(m.W.nnz + (m.W_parent.nnz if m.W_parent is not None else 0) for m in model.membranes)
    flops = 2 * nnz  # per input and time step
    fixed_steps = 64
    out = {
        "batch32_per_s": round(best("fixed", "batch", 0), 1),
        "single_per_s": round(best("fixed", "single", 0), 1),
        "speedup": round(best("fixed", "batch", 0) / best("fixed", "single", 0), 3),
        "target_speedup_min": 3.0,
        "mixed_batch32_per_s": round(best("mixed", "batch", 0), 1),
        "mixed_single_per_s": round(best("mixed", "single", 0), 1),
        "mixed_speedup": round(best("mixed", "batch", 0) / best("mixed", "single", 0), 3),
        "mixed_mean_bytes": round(float(np.mean([len(x) for x in sets["mixed"]])), 1),
        "mixed_median_bytes": float(np.median([len(x) for x in sets["mixed"]])),
        "mixed_max_bytes": max(len(x) for x in sets["mixed"]),
        # per CPU-second of the computing thread: immune to a busy neighbour
        "cpu_batch32_per_s": round(best("fixed", "batch", 1), 1),
        "cpu_single_per_s": round(best("fixed", "single", 1), 1),
        "cpu_speedup": round(best("fixed", "batch", 1) / best("fixed", "single", 1), 3),
        "cpu_mixed_speedup": round(best("mixed", "batch", 1) / best("mixed", "single", 1), 3),
        "flops_per_input_step": flops,
        "batch_gflops": round(flops * fixed_steps * best("fixed", "batch", 1) / 1e9, 2),
        "single_gflops": round(flops * fixed_steps * best("fixed", "single", 1) / 1e9, 2),
        "peak_gflops": round(peak, 1),
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
    print(f"{n_inputs} inputs a set, best of {rounds} alternating rounds, 1 BLAS thread")
    print(f"{'inputs':<34}{'one at a time/s':>16}{'batch x 32/s':>14}{'speedup':>9}")
    print(
        f"{'64 bytes each':<34}{out['single_per_s']:>16.1f}{out['batch32_per_s']:>14.1f}"
        f"{out['speedup']:>9.2f}  (target >= 3)"
    )
    mixed = f"mixed, median 64, mean {out['mixed_mean_bytes']}"
    print(
        f"{mixed:<34}{out['mixed_single_per_s']:>16.1f}{out['mixed_batch32_per_s']:>14.1f}"
        f"{out['mixed_speedup']:>9.2f}"
    )
    print(
        f"sparse products: {flops} flops per input-step; batch {out['batch_gflops']} GFLOP/s,"
        f" single {out['single_gflops']}, one core's dense peak {out['peak_gflops']}"
    )


if __name__ == "__main__":
    main()
