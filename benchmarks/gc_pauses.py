"""The server's GC settings on the ordinary path: the interpreter's vs ``serve``'s defaults.

``serve`` freezes start-up and sets ``gc.set_threshold(2000, 10, 250)`` by default
(``server.gc_freeze`` / ``server.gc_threshold``) because a server holding 10,000
connections spent seconds per full collection with the interpreter's (700, 10, 10)
(``benchmarks/concurrency.py``).  This checks that the defaults do not hurt -- and what
they do -- on the everyday path: ``benchmarks/http.py``'s load (``--concurrency``
keep-alive connections from a separate process, ``POST /v1/process``, reservoir 64,
cache off), against a dtesn-trio served in this process, in paired rounds alternating
the order: ``baseline`` = ``gc_freeze=false, gc_threshold=default``, ``tuned`` = the
ServerConfig defaults.  Each round opens its own runtime and server.

Keys (``--json``): baseline_gc_us_per_request / tuned_gc_us_per_request (time inside
the collector per answered request, from the server's own ``gc.callbacks`` monitor),
gc_time_ratio (tuned / baseline), baseline_full_collections / tuned_full_collections
(generation-2 collections per round), baseline_per_s / tuned_per_s and
throughput_ratio (tuned / baseline), p99_ms of each, longest_pause_ms of each, and the
settings; medians over the rounds.

    python benchmarks/gc_pauses.py --quick     # < 45 s
    python benchmarks/gc_pauses.py --json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
ROOT = _HERE.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(_HERE))

import trio  # noqa: E402
from _servers import run_http_load  # noqa: E402

from dtesn_trio.cache import CacheConfig  # noqa: E402
from dtesn_trio.dtesn import DTESNConfig  # noqa: E402
from dtesn_trio.jobs import JobsConfig  # noqa: E402
from dtesn_trio.limits import AdmissionConfig  # noqa: E402
from dtesn_trio.nurseries import BatchQueueConfig  # noqa: E402
from dtesn_trio.runtime import RuntimeConfig, open_runtime  # noqa: E402
from dtesn_trio.server import ServerConfig, serve  # noqa: E402

TUNED = ServerConfig(port=0)
SETTINGS = {
    "baseline": ServerConfig(port=0, gc_freeze=False, gc_threshold="default"),
    "tuned": TUNED,
}


async def one_round(name: str, duration: float, concurrency: int) -> dict[str, Any]:
    config = RuntimeConfig(
        model=DTESNConfig(reservoir_size=64, membrane_depth=2),
        cache=CacheConfig(enabled=False),
        jobs=JobsConfig(enabled=False),
        admission=AdmissionConfig(max_requests_per_second=1e6, burst_limit=100_000),
        queue=BatchQueueConfig(max_batch_size=32, max_wait=0.005),
    )
    async with open_runtime(config) as rt:
        info = await rt.nursery.start(serve, rt, SETTINGS[name])
        await run_http_load(info.url, "/v1/process", 1.0, concurrency)  # warm-up
        monitor = info.app.state.dtesn.gc_monitor
        before = monitor.statistics()
        cpu = time.process_time()
        result = await run_http_load(info.url, "/v1/process", duration, concurrency)
        cpu = time.process_time() - cpu
        after = monitor.statistics()
        rt.nursery.cancel_scope.cancel()
    n = max(result["requests"], 1)
    paused = sum(after.total_pause) - sum(before.total_pause)
    return {
        "per_s": result["per_s"],
        "p99_ms": result["p99_ms"],
        "errors": result["errors"],
        "cpu_us": cpu / n * 1e6,
        "gc_us": paused / n * 1e6,
        "collections": [a - b for a, b in zip(after.collections, before.collections, strict=True)],
        # the longest since the server started (the warm-up included)
        "longest_pause_ms": max(after.longest_pause) * 1000,
    }


async def bench(duration: float, rounds: int, concurrency: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "tuned": []}
    for r in range(rounds):
        order = ["baseline", "tuned"] if r % 2 == 0 else ["tuned", "baseline"]
        for name in order:
            runs[name].append(await one_round(name, duration, concurrency))

    def med(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[name]))

    def full(name: str) -> float:
        return float(statistics.median(run["collections"][2] for run in runs[name]))

    result: dict[str, Any] = {}
    for name in runs:
        result[f"{name}_gc_us_per_request"] = round(med(name, "gc_us"), 1)
        result[f"{name}_full_collections"] = full(name)
        result[f"{name}_per_s"] = round(med(name, "per_s"), 1)
        result[f"{name}_p99_ms"] = round(med(name, "p99_ms"), 1)
        result[f"{name}_cpu_us"] = round(med(name, "cpu_us"), 1)
        result[f"{name}_longest_pause_ms"] = round(med(name, "longest_pause_ms"), 1)
        result[f"{name}_errors"] = sum(run["errors"] for run in runs[name])
    result["gc_time_ratio"] = round(
        result["tuned_gc_us_per_request"] / max(result["baseline_gc_us_per_request"], 1e-9), 3
    )
    result["throughput_ratio"] = round(
        statistics.median(
            t["per_s"] / b["per_s"] for t, b in zip(runs["tuned"], runs["baseline"], strict=True)
        ),
        3,
    )
    result["settings"] = {
        "baseline": {"gc_freeze": False, "gc_threshold": "default"},
        "tuned": {"gc_freeze": TUNED.gc_freeze, "gc_threshold": TUNED.gc_threshold},
    }
    result.update(rounds=rounds, duration_s=duration, concurrency=concurrency)
    return result


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{'GC settings':<38}{'GC us/req':>10}{'full GCs':>10}{'req/s':>9}{'p99 ms':>9}"
        f"{'CPU us/req':>12}{'longest ms':>12}"
    ]
    for name, label in (
        ("baseline", "interpreter's (700,10,10), no freeze"),
        ("tuned", f"serve's {r['settings']['tuned']['gc_threshold']}, freeze"),
    ):
        lines.append(
            f"{label:<38}{r[f'{name}_gc_us_per_request']:>10}{r[f'{name}_full_collections']:>10}"
            f"{r[f'{name}_per_s']:>9.0f}{r[f'{name}_p99_ms']:>9}{r[f'{name}_cpu_us']:>12}"
            f"{r[f'{name}_longest_pause_ms']:>12}"
        )
    lines.append(
        f"gc_time_ratio (tuned / baseline) = {r['gc_time_ratio']}; throughput_ratio ="
        f" {r['throughput_ratio']}; median of {r['rounds']} paired rounds of"
        f" {r['duration_s']:.0f} s at concurrency {r['concurrency']}; errors"
        f" {r['baseline_errors']}/{r['tuned_errors']}"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="finish in < 45 s")
    parser.add_argument("--duration", type=float, default=None)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    duration = args.duration or (3.0 if args.quick else 8.0)
    rounds = args.rounds or (3 if args.quick else 5)
    result = trio.run(bench, duration, rounds, args.concurrency)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
