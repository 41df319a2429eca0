"""Sessions: steps per second when many live sessions step together vs one at a time.

The default model (depth 4, 1024 units) served by the embedded runtime (admission,
queue, worker threads: everything but HTTP).  For 1, 100 and 1,000 concurrent sessions,
each session's client sends 16-byte chunks back to back (the next once the previous is
answered): the queue batches the chunks of different sessions that wait together
(their states stacked into one matrix).  "One at a time": the same sessions stepped by
one client, one chunk in flight, so every batch holds one chunk.  A step is one chunk
(16 reservoir time steps).  Rounds alternate the modes; the best round counts.

    python benchmarks/sessions.py [--quick] [--json]

Keys, per session count N: ``sessions_N_batched_steps_per_s``,
``sessions_N_single_steps_per_s``, ``sessions_N_batch_speedup``,
``sessions_N_p99_ms`` (step latency, batched mode), ``sessions_N_mean_batch``; and the
headline ``session_batch_speedup`` and ``session_p99_ms`` at 1,000 sessions.  The queue
is the runtime's default (adaptive LIFO once a queue stands); ``sessions_1000_fifo_*``
are the 1,000 sessions again with a FIFO queue (``queue.lifo_delay = None``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import numpy as np  # noqa: E402
import trio  # noqa: E402

from dtesn_trio.cache import CacheConfig  # noqa: E402
from dtesn_trio.config import RuntimeConfig  # noqa: E402
from dtesn_trio.jobs import JobsConfig  # noqa: E402
from dtesn_trio.limits import AdmissionConfig  # noqa: E402
from dtesn_trio.nurseries import BatchQueueConfig  # noqa: E402
from dtesn_trio.runtime import Runtime, open_runtime  # noqa: E402
from dtesn_trio.sessions import SessionManager, SessionsConfig  # noqa: E402

CHUNK = 16
COUNTS = (1, 100, 1000)
MAX_BATCH = 256


def chunks(n: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [bytes(rng.integers(32, 127, size=CHUNK, dtype=np.uint8)) for _ in range(n)]


async def batched(manager: SessionManager, ids: list[str], rounds: int) -> dict[str, float]:
    """Every session's client steps ``rounds`` chunks back to back, all at once."""
    latencies: list[float] = []
    sizes: list[int] = []
    data = chunks(rounds, 1)

    async def client(sid: str) -> None:
        for chunk in data:
            t0 = time.perf_counter()
            result = await manager.step(sid, chunk)
            latencies.append(time.perf_counter() - t0)
            sizes.append(result.batch_size)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for sid in ids:
            nursery.start_soon(client, sid)
    elapsed = time.perf_counter() - started
    return {
        "steps_per_s": len(latencies) / elapsed,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
        "p50_ms": float(np.percentile(latencies, 50)) * 1000,
        "mean_batch": float(np.mean(sizes)),
    }


async def one_at_a_time(manager: SessionManager, ids: list[str], steps: int) -> dict[str, float]:
    """One client steps the sessions in turn, one chunk in flight."""
    data = chunks(steps, 2)
    latencies: list[float] = []
    started = time.perf_counter()
    for i in range(steps):
        t0 = time.perf_counter()
        await manager.step(ids[i % len(ids)], data[i])
        latencies.append(time.perf_counter() - t0)
    elapsed = time.perf_counter() - started
    return {
        "steps_per_s": steps / elapsed,
        "p99_ms": float(np.percentile(latencies, 99)) * 1000,
    }


def runtime_config(tmp: str, lifo_delay: float | None = 0.1) -> RuntimeConfig:
    return RuntimeConfig(
        jobs=JobsConfig(enabled=False, sqlite_path=str(Path(tmp) / "jobs.db")),
        cache=CacheConfig(enabled=False),
        admission=AdmissionConfig(
            max_requests_per_second=1e9, burst_limit=1_000_000, max_concurrent_requests=100_000
        ),
        queue=BatchQueueConfig(
            max_batch_size=MAX_BATCH,
            max_queue_size=100_000,
            adaptive_timeout=False,
            lifo_delay=lifo_delay,
        ),
        sessions=SessionsConfig(max_sessions=100_000),
    )


async def run(quick: bool) -> dict[str, object]:
    rounds = 2 if quick else 3
    out: dict[str, object] = {}
    with tempfile.TemporaryDirectory() as tmp:
        async with open_runtime(runtime_config(tmp)) as rt:
            manager = rt.sessions
            assert manager is not None
            await warm_up(rt, manager)
            for n in COUNTS:
                ids = [(await manager.open()).session_id for _ in range(n)]
                per_client = (4 if quick else 12) if n >= 100 else (100 if quick else 400)
                singles = min(n * per_client, 300 if quick else 1000)
                best_b: dict[str, float] | None = None
                best_s: dict[str, float] | None = None
                for _ in range(rounds):
                    b = await batched(manager, ids, per_client)
                    s = await one_at_a_time(manager, ids, singles)
                    if best_b is None or b["steps_per_s"] > best_b["steps_per_s"]:
                        best_b = b
                    if best_s is None or s["steps_per_s"] > best_s["steps_per_s"]:
                        best_s = s
                assert best_b is not None
                assert best_s is not None
                out[f"sessions_{n}_batched_steps_per_s"] = round(best_b["steps_per_s"], 1)
                out[f"sessions_{n}_single_steps_per_s"] = round(best_s["steps_per_s"], 1)
                out[f"sessions_{n}_batch_speedup"] = round(
                    best_b["steps_per_s"] / best_s["steps_per_s"], 3
                )
                out[f"sessions_{n}_p99_ms"] = round(best_b["p99_ms"], 2)
                out[f"sessions_{n}_p50_ms"] = round(best_b["p50_ms"], 2)
                out[f"sessions_{n}_single_p99_ms"] = round(best_s["p99_ms"], 2)
                out[f"sessions_{n}_mean_batch"] = round(best_b["mean_batch"], 1)
                out[f"sessions_{n}_steps_per_client"] = per_client
                for sid in ids:
                    await manager.end(sid)
        # the same 1,000 sessions with a FIFO queue (no adaptive LIFO): the tail of a
        # closed loop where every session always has a chunk waiting
        async with open_runtime(runtime_config(tmp, lifo_delay=None)) as rt:
            manager = rt.sessions
            assert manager is not None
            await warm_up(rt, manager)
            ids = [(await manager.open()).session_id for _ in range(COUNTS[-1])]
            fifo = await batched(manager, ids, 4 if quick else 12)
            out["sessions_1000_fifo_steps_per_s"] = round(fifo["steps_per_s"], 1)
            out["sessions_1000_fifo_p50_ms"] = round(fifo["p50_ms"], 2)
            out["sessions_1000_fifo_p99_ms"] = round(fifo["p99_ms"], 2)
    out["session_batch_speedup"] = out["sessions_1000_batch_speedup"]
    out["session_p99_ms"] = out["sessions_1000_p99_ms"]
    out.update(chunk_bytes=CHUNK, max_batch_size=MAX_BATCH, rounds=rounds)
    return out


async def warm_up(rt: Runtime, manager: SessionManager) -> None:
    sid = (await manager.open()).session_id
    for chunk in chunks(8, 0):
        await manager.step(sid, chunk)
    await manager.end(sid)


def main() -> None:
    parser = argparse.ArgumentParser(description="session steps: batched vs one at a time")
    parser.add_argument("--quick", action="store_true", help="fewer steps and rounds (< 60 s)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()
    started = time.perf_counter()
    out = trio.run(run, args.quick)
    out["seconds"] = round(time.perf_counter() - started, 1)
    if args.json:
        print(json.dumps(out))
        return
    print(
        f"default model (1024 units, depth 4), {CHUNK}-byte chunks, embedded runtime,"
        f" batches of up to {MAX_BATCH}; best of {out['rounds']} alternating rounds"
    )
    print(
        f"{'sessions':>9}{'batched steps/s':>17}{'one at a time/s':>17}{'speedup':>9}"
        f"{'mean batch':>12}{'p50 ms':>9}{'p99 ms':>9}"
    )
    for n in COUNTS:
        print(
            f"{n:>9}{out[f'sessions_{n}_batched_steps_per_s']:>17.1f}"
            f"{out[f'sessions_{n}_single_steps_per_s']:>17.1f}"
            f"{out[f'sessions_{n}_batch_speedup']:>9.2f}"
            f"{out[f'sessions_{n}_mean_batch']:>12.1f}"
            f"{out[f'sessions_{n}_p50_ms']:>9.2f}{out[f'sessions_{n}_p99_ms']:>9.2f}"
        )
    print(
        f"1000 sessions, FIFO queue (lifo_delay=None): {out['sessions_1000_fifo_steps_per_s']}"
        f" steps/s, p50 {out['sessions_1000_fifo_p50_ms']} ms,"
        f" p99 {out['sessions_1000_fifo_p99_ms']} ms"
    )
    print(f"({out['seconds']} s)")


if __name__ == "__main__":
    main()
