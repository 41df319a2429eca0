"""10,000 concurrent connections, each with a request in flight (issue 8; the seed: 500).

A ``dtesn-trio serve`` subprocess on a free port; this process opens ``--connections``
keep-alive connections with the soak runner's h11 client (open loop, all sends due
within 2 s) and sends one ``POST /v1/process`` on each.  To make sure they are all in
flight *at once*, the server gathers them into one batch: ``queue.max_batch_size`` =
the connection count and ``queue.max_wait`` = 60 s, so the engine runs exactly when the
last request has arrived (or after 60 s if one never does: then ``largest_batch`` says
so).  Admission limits are raised to fit (the defaults -- 500 in flight, 1,000/s with a
burst of 100 -- would refuse the burst; that is their job, not what this measures).

Reported (``--json``): connections, completed (2xx), errors (everything else),
largest_batch (== connections: all were in the server at once), in_flight_sampled_max
(the server's own count, sampled every 0.5 s over a busy loop: it misses the peak),
client_peak_in_flight, rss_idle_mb (after a
warm-up request), rss_peak_mb, rss_per_connection_kb, max_step_ms (the longest event-loop
step the server saw, from /v1/stats), tasks_peak (live Trio tasks), p50_ms / p99_ms
(from each request's intended send time), seed_connections (500) and ratio
(connections / 500); and the server's garbage collector: ``gc_settings`` (freeze,
threshold, objects frozen, from /v1/stats), ``gc_collections`` per generation,
``gc_gen2_longest_ms`` / ``gc_gen2_total_ms`` (the full collections' pauses) and
``gc_longest_ms`` (any generation), ``gc_longest_pause_ms`` / ``gc_total_pause_ms`` per
generation.  ``--set section.key=value`` passes a setting to
the server (after the benchmark's own), e.g. ``--set server.gc_freeze=false``.

    python benchmarks/concurrency.py --quick     # 10,000 connections, ~30 s
    python benchmarks/concurrency.py --json --connections 5000
    python benchmarks/concurrency.py --quick --set server.gc_threshold=default \
        --set server.gc_freeze=false              # the interpreter's own GC settings
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/ holds queue.py and http.py: keep it behind the standard library on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

import trio  # noqa: E402
from _servers import describe_env, raise_nofile, rss_bytes, start_dtesn  # noqa: E402

from dtesn_trio.soak import InputSizes, LoadConfig, PriorityMix, open_http_client  # noqa: E402
from dtesn_trio.soak.runner import run_soak  # noqa: E402
from dtesn_trio.soak.targets import open_http_target  # noqa: E402

SEED_CONNECTIONS = 500
MiB = 1024 * 1024


def server_sets(n: int) -> list[str]:
    return [
        "model.reservoir_size=64",
        "model.membrane_depth=2",
        "cache.enabled=false",
        "jobs.enabled=false",
        "server.backlog=4096",
        f"admission.max_concurrent_requests={2 * n}",
        f"admission.max_requests_per_second={100 * n}",
        f"admission.burst_limit={2 * n}",
        "admission.adaptive_scaling=false",
        f"queue.max_queue_size={10 * n}",
        f"queue.max_batch_size={n}",
        "queue.max_wait=60",
        "queue.adaptive_timeout=false",
    ]


async def bench(n: int, extra_sets: list[str]) -> dict[str, Any]:
    limit = raise_nofile(n + 2000)
    if limit < n + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {n} connections")
    env = describe_env()
    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        server = await start_dtesn(nursery, server_sets(n) + extra_sets, name="concurrency")
        try:
            # Warm the HTTP path up (a process request would wait out max_wait alone).
            async with open_http_client(server.url) as client:
                await client.get("/v1/stats")
            rss_idle = rss_bytes(server.pid) or 0
            peak_rss = [rss_idle]

            async def watch_rss() -> None:
                while True:
                    rss = rss_bytes(server.pid)
                    if rss is not None and rss > peak_rss[0]:
                        peak_rss[0] = rss
                    await trio.sleep(0.2)

            load = LoadConfig(
                duration=2.0,
                rate=n / 2.0,
                priority_mix=PriorityMix.parse("2:1"),
                input_size=InputSizes.parse("16"),
                timeout=120.0,
            )
            async with trio.open_nursery() as watching:
                watching.start_soon(watch_rss)
                async with open_http_target(server.url) as target:
                    run = await run_soak(target, load, sample_interval=0.5)
                async with open_http_client(server.url) as client:
                    final = (await client.get("/v1/stats")).json()
                watching.cancel_scope.cancel()
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
        nursery.cancel_scope.cancel()
    report = run.report()
    samples = [s["stats"] for s in run.samples if s.get("stats")]
    in_flight = [s.get("server.in_flight", 0.0) for s in samples]
    tasks = [s.get("loop.tasks", 0.0) for s in samples]
    batch_sizes = {int(k): v for k, v in final["queue"]["batch_sizes"].items()}
    client_peak = max((p["in_flight_max"] for p in report["timeseries"]), default=0)
    ok = report["counts"]["ok"]
    all_latency = report["latency_ms"]["all"] or {}
    gc_stats = final.get("gc") or {}
    gc_longest = gc_stats.get("longest_pause_ms", {})
    return {
        "connections": n,
        "completed": ok,
        "errors": report["counts"]["sent"] - ok,
        "by_status": {k: v["count"] for k, v in report["by_status"].items()},
        "largest_batch": max(batch_sizes, default=0),
        "in_flight_sampled_max": int(max(in_flight, default=0)),
        "client_peak_in_flight": client_peak,
        "rss_idle_mb": round(rss_idle / MiB, 1),
        "rss_peak_mb": round(peak_rss[0] / MiB, 1),
        "rss_per_connection_kb": round((peak_rss[0] - rss_idle) / n / 1024, 1),
        "max_step_ms": round(final["loop"]["max_step_ms"], 1),
        "max_step_task": final["loop"].get("max_step_task"),
        "tasks_peak": int(max(tasks, default=0)),
        "p50_ms": all_latency.get("p50"),
        "p99_ms": all_latency.get("p99"),
        "gc_settings": {
            "freeze": gc_stats.get("freeze"),
            "threshold": gc_stats.get("threshold"),
            "frozen_objects": gc_stats.get("frozen_objects"),
        },
        "gc_collections": gc_stats.get("collections"),
        "gc_collected": gc_stats.get("collected"),
        "gc_gen2_longest_ms": _round(gc_longest.get("2")),
        "gc_gen2_total_ms": _round(gc_stats.get("total_pause_ms", {}).get("2")),
        "gc_longest_ms": _round(max(gc_longest.values(), default=None)),
        "gc_longest_pause_ms": {g: _round(v) for g, v in gc_longest.items()},
        "gc_total_pause_ms": {g: _round(v) for g, v in gc_stats.get("total_pause_ms", {}).items()},
        "seed_connections": SEED_CONNECTIONS,
        "ratio": round(n / SEED_CONNECTIONS, 1),
        "server_sets": server_sets(n) + extra_sets,
        "machine": env,
        "seconds": round(time.perf_counter() - began, 1),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def table(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"{r['connections']} concurrent connections (seed: {r['seed_connections']},"
            f" x{r['ratio']}), machine {r['machine']}",
            f"completed {r['completed']}, errors {r['errors']} {r['by_status']}",
            f"largest batch {r['largest_batch']} (all in the server at once when ="
            f" connections); server in flight (sampled, misses the peak) {r['in_flight_sampled_max']},"
            f" client {r['client_peak_in_flight']}",
            f"server RSS idle {r['rss_idle_mb']} MB, peak {r['rss_peak_mb']} MB"
            f" ({r['rss_per_connection_kb']} KB per connection); tasks peak {r['tasks_peak']}",
            f"longest loop step {r['max_step_ms']} ms ({r['max_step_task']})",
            f"server GC {r['gc_settings']}: collections per generation {r['gc_collections']},"
            f" collected {r['gc_collected']}; longest full (gen 2) collection"
            f" {r['gc_gen2_longest_ms']} ms (total {r['gc_gen2_total_ms']} ms),"
            f" longest of any generation {r['gc_longest_ms']} ms; per generation: longest"
            f" {r['gc_longest_pause_ms']} ms, total {r['gc_total_pause_ms']} ms",
            f"latency p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms; total {r['seconds']} s",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="the same 10,000; < 45 s")
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a server setting, after the benchmark's own (repeatable)",
    )
    args = parser.parse_args()
    result = trio.run(bench, args.connections, args.sets)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
