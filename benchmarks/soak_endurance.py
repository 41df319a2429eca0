"""Endurance (issue 8): 10 minutes at 70 % of capacity -- zero 5xx, RSS growth under 5 %
after warm-up, no growth of the task count.

A ``dtesn-trio serve`` subprocess (DTESN of 256 units, depth 4; result cache and
durable jobs off, ``server.debug_memory`` on, every other setting its default) on a free port.  First its capacity:
closed loop, 40 connections, 2xx answers per second (as ``benchmarks/overload.py``).
Then the soak runner drives it open loop at 70 % of that for ``--duration`` seconds
(``--quick``: 30 s) with the priority mix ``0:10,2:80,4:10`` and a 10 s deadline, while
this script reads the server's RSS from ``/proc/<pid>`` every second and the runner
samples ``/v1/stats`` (live tasks, requests in flight, longest loop step) every second.

Warm-up is the first 20 % of the soak.  RSS growth = (RSS at the end - RSS at the end of
the warm-up) / RSS at the end of the warm-up.  Tasks: under load the count moves with
the requests in flight (a connection is a few tasks), so the leak check is idle to idle:
the count before the soak and after it, once the soak's connections have closed
(``tasks_growth`` = after - before, target <= 0); the medians of the first and last fifth
under load are reported too.

RSS is not the live heap: pymalloc frees an arena only once all of it is free and glibc
keeps freed chunks, so RSS steps up to the most requests ever in flight at once (a stall
of the shared machine piles them up) and stays there without any leak
(``benchmarks/rss_highwater.py`` shows it).  So the live heap is checked beside it, idle
to idle like the tasks (under load it moves with the requests in flight): the
allocator's live blocks (``memory.allocated_blocks`` of ``/v1/stats?gc=1``: after a
full garbage collection) before and after the soak, ``heap_growth_pct`` (target < 5: a leak grows it, a high-water mark does not).
``in_flight_max_warmup`` / ``in_flight_max`` are the most requests in flight seen in a
sample during / after the warm-up: a new maximum after the warm-up explains a step of
RSS.  ``--tracemalloc N`` runs the server with ``PYTHONTRACEMALLOC=N`` (slower: the
capacity is measured with it) and adds ``traced_idle_before_mb`` /
``traced_idle_after_mb``.

Keys (``--json``): capacity_per_s, rate_per_s, duration_s, sent, ok, errors_5xx,
other_errors, rss_warm_mb, rss_end_mb, rss_max_mb, rss_growth_pct (target < 5),
rss_idle_after_mb, heap_blocks_idle_before, heap_blocks_idle_after, heap_growth_pct
(target < 5), in_flight_max_warmup,
in_flight_max, tasks_idle_before, tasks_idle_after, tasks_growth (target <= 0),
tasks_start, tasks_end, tasks_max, max_step_ms, p99_ms, leak_free (heap and tasks met),
passed (every target met, RSS included).

    python benchmarks/soak_endurance.py --quick    # 30 s soak, ~50 s in all
    python benchmarks/soak_endurance.py --json     # 10 minutes
"""

from __future__ import annotations

import argparse
import json
import statistics
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
from overload import capacity  # noqa: E402

from dtesn_trio.soak import InputSizes, LoadConfig, PriorityMix, open_http_client  # noqa: E402
from dtesn_trio.soak.runner import run_soak  # noqa: E402
from dtesn_trio.soak.targets import open_http_target  # noqa: E402

MiB = 1024 * 1024
SETS = [
    "model.reservoir_size=256",
    "model.membrane_depth=4",
    "cache.enabled=false",
    "jobs.enabled=false",
    "server.debug_memory=true",  # /v1/stats?gc=1 for the idle heap figures
]


async def idle_stats(url: str) -> tuple[int, dict[str, Any]]:
    """The server's live task count with no load (one connection: this request's) and
    its ``memory`` section of ``/v1/stats`` after a full garbage collection."""
    async with open_http_client(url) as client:
        stats = (await client.get("/v1/stats?gc=1")).json()
        return int(stats["loop"]["tasks"]), stats["memory"]


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    env = describe_env()
    began = time.perf_counter()
    rss: list[tuple[float, int]] = []
    async with trio.open_nursery() as nursery:
        server_env = {"PYTHONTRACEMALLOC": str(args.tracemalloc)} if args.tracemalloc else None
        server = await start_dtesn(nursery, SETS, name="endurance", env=server_env)
        try:
            # overload.py's capacity rule: a warm-up, then the window's 2xx per second
            warm, drain = (1.0, 0.5) if args.quick else (2.0, None)
            cap = await capacity(server, args, 40, args.capacity_seconds, warm, drain)
            rate = 0.7 * cap["per_s"]
            load = LoadConfig(
                duration=args.duration,
                rate=rate,
                priority_mix=PriorityMix.parse("0:10,2:80,4:10"),
                input_size=InputSizes.parse(str(args.input_bytes)),
                deadline_ms=10_000,
                timeout=30.0,
                seed=3,
            )

            # Idle: the capacity run's connections close (the server notices a close
            # asynchronously): wait until two looks agree, at most 5 s.
            tasks_before, memory_before = await idle_stats(server.url)
            for _ in range(10):
                await trio.sleep(0.5)
                now_tasks, memory_before = await idle_stats(server.url)
                if now_tasks == tasks_before:
                    break
                tasks_before = now_tasks
            async with trio.open_nursery() as watching:

                async def watch_rss() -> None:
                    t0 = trio.current_time()
                    while True:
                        value = rss_bytes(server.pid)
                        if value is not None:
                            rss.append((trio.current_time() - t0, value))
                        await trio.sleep(1.0)

                watching.start_soon(watch_rss)
                async with open_http_target(server.url) as target:
                    run = await run_soak(target, load, sample_interval=1.0)
                watching.cancel_scope.cancel()
            # Idle again: every connection of the soak closed.  Closing is noticed by the
            # server asynchronously, and hypercorn keeps a connection's task until its
            # keep-alive timer (server.keep_alive_timeout, 5 s) fires: up to 15 s to settle.
            for _ in range(30):
                await trio.sleep(0.5)
                tasks_after, memory_after = await idle_stats(server.url)
                if tasks_after <= tasks_before:
                    break
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
        nursery.cancel_scope.cancel()
    report = run.report()
    warm = 0.2 * args.duration
    after = [v for t, v in rss if t >= warm]
    rss_warm = after[0] if after else 0
    rss_end = after[-1] if after else 0
    growth = 100.0 * (rss_end - rss_warm) / rss_warm if rss_warm else float("nan")
    fifth_of = _fifths(run.samples, warm)
    tasks_start, tasks_end = fifth_of("loop.tasks")
    heap_before = memory_before["allocated_blocks"]
    heap_after = memory_after["allocated_blocks"]
    heap_growth = 100.0 * (heap_after - heap_before) / heap_before if heap_before else float("nan")
    in_flight_warmup = _max_of(run.samples, "server.in_flight", 0.0, warm)
    in_flight_after = _max_of(run.samples, "server.in_flight", warm, float("inf"))
    steps = [s["stats"].get("loop.max_step_ms", 0.0) for s in run.samples if s.get("stats")]
    by_status = {k: v["count"] for k, v in report["by_status"].items()}
    errors_5xx = sum(n for k, n in by_status.items() if k.startswith("5"))
    ok = report["counts"]["ok"]
    result = {
        "capacity_per_s": cap["per_s"],
        "rate_per_s": round(rate, 2),
        "duration_s": args.duration,
        "sent": report["counts"]["sent"],
        "ok": ok,
        "errors_5xx": errors_5xx,
        "other_errors": report["counts"]["sent"] - ok - errors_5xx,
        "by_status": by_status,
        "rss_warm_mb": round(rss_warm / MiB, 1),
        "rss_end_mb": round(rss_end / MiB, 1),
        "rss_max_mb": round(max((v for _, v in rss), default=0) / MiB, 1),
        "rss_growth_pct": round(growth, 2),
        "rss_idle_after_mb": round(memory_after["rss_bytes"] / MiB, 1),
        "heap_blocks_idle_before": heap_before,
        "heap_blocks_idle_after": heap_after,
        "heap_growth_pct": round(heap_growth, 2),
        "in_flight_max_warmup": in_flight_warmup,
        "in_flight_max": in_flight_after,
        "tasks_idle_before": tasks_before,
        "tasks_idle_after": tasks_after,
        "tasks_growth": tasks_after - tasks_before,
        "tasks_start": tasks_start,
        "tasks_end": tasks_end,
        "tasks_max": _max_of(run.samples, "loop.tasks", warm, float("inf")),
        "max_step_ms": round(max(steps, default=0.0), 1),
        "p99_ms": (report["latency_ms"]["all"] or {}).get("p99"),
        "server_sets": SETS,
        "machine": env,
        "seconds": round(time.perf_counter() - began, 1),
    }
    if args.tracemalloc:
        result["traced_idle_before_mb"] = round(memory_before["traced_bytes"] / MiB, 1)
        result["traced_idle_after_mb"] = round(memory_after["traced_bytes"] / MiB, 1)
    result["leak_free"] = heap_growth < 5.0 and tasks_after <= tasks_before
    result["passed"] = (
        errors_5xx == 0 and result["other_errors"] == 0 and growth < 5.0 and result["leak_free"]
    )
    return result


def _series(samples: list[dict[str, Any]], key: str, start: float, end: float) -> list[float]:
    return [s["stats"][key] for s in samples if key in s.get("stats", {}) and start <= s["t"] < end]


def _max_of(samples: list[dict[str, Any]], key: str, start: float, end: float) -> float:
    return max(_series(samples, key, start, end), default=0)


def _fifths(samples: list[dict[str, Any]], warm: float) -> Any:
    """``fifth_of(key)``: the medians of ``key`` in the first and last fifth of the
    samples after the warm-up (a median: the in-flight requests move every count)."""

    def fifth_of(key: str) -> tuple[float, float]:
        values = _series(samples, key, warm, float("inf"))
        if not values:
            return 0, 0
        n = max(1, len(values) // 5)
        return statistics.median(values[:n]), statistics.median(values[-n:])

    return fifth_of


def table(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"capacity {r['capacity_per_s']}/s; soak {r['duration_s']} s at {r['rate_per_s']}/s"
            f" (70 %), machine {r['machine']}",
            f"sent {r['sent']}, ok {r['ok']}, 5xx {r['errors_5xx']}, other errors"
            f" {r['other_errors']} {r['by_status']}",
            f"RSS after warm-up {r['rss_warm_mb']} MB -> end {r['rss_end_mb']} MB"
            f" ({r['rss_growth_pct']} %, target < 5; max {r['rss_max_mb']} MB)",
            f"live heap blocks idle {r['heap_blocks_idle_before']} ->"
            f" {r['heap_blocks_idle_after']} after the soak ({r['heap_growth_pct']} %, target"
            f" < 5; RSS then {r['rss_idle_after_mb']} MB); in flight at most"
            f" {r['in_flight_max_warmup']:.0f} in warm-up, {r['in_flight_max']:.0f} after"
            + (
                f"; traced idle {r['traced_idle_before_mb']} -> {r['traced_idle_after_mb']} MB"
                if "traced_idle_before_mb" in r
                else ""
            ),
            f"tasks idle {r['tasks_idle_before']} -> {r['tasks_idle_after']} after the soak"
            f" (under load: {r['tasks_start']} -> {r['tasks_end']}, max {r['tasks_max']});"
            f" longest loop step {r['max_step_ms']} ms; p99 {r['p99_ms']} ms",
            f"leak free: {r['leak_free']}; passed: {r['passed']}; total {r['seconds']} s",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="a 30 s soak")
    parser.add_argument("--duration", type=float, default=None, help="soak seconds")
    parser.add_argument("--input-bytes", type=int, default=2000)
    parser.add_argument(
        "--tracemalloc",
        type=int,
        default=0,
        metavar="N",
        help="run the server with PYTHONTRACEMALLOC=N (N frames; slower) and report its"
        " traced memory",
    )
    args = parser.parse_args()
    args.duration = args.duration or (30.0 if args.quick else 600.0)
    args.capacity_seconds = 8.0 if args.quick else 20.0
    args.timeout = 30.0
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
