"""RSS after a burst is a high-water mark, not a leak (issue 8, endurance).

A ``dtesn-trio serve`` subprocess (the endurance settings of
``benchmarks/soak_endurance.py``) gets a warm-up (closed loop, 10 connections), then
bursts: ``--burst`` requests in flight at once (closed loop, that many connections, 10 s
deadline) for ``--burst-seconds`` -- what a stall of a shared machine does when the
requests that piled up meanwhile all arrive together (the 10-minute soak saw ~220).
After the warm-up and after each burst the script waits until the server is idle (no
request in flight but its own, its connections closed: the task count back to where it
was before any load) and reads ``/v1/stats?gc=1`` ``memory``: RSS and the live blocks
of Python's object allocator after a full garbage collection.

The first burst is the baseline: RSS steps up (pymalloc arenas hold the burst's objects
and are freed only once empty; glibc keeps the freed chunks).  The second burst is the
same again: a high-water mark does not rise again, a leak would.  The third is twice as
large: a new high-water mark, RSS steps again.  The live heap returns to its level after
every burst.

Keys (``--json``): burst, rss_idle_mb (after warm-up, burst 1, burst 2, burst 2x),
first_step_mb, second_step_mb, second_to_first_ratio (target well below 1),
double_step_mb, heap_blocks_idle (the same four points), heap_growth_pct (after burst 2
vs after warm-up), tasks_idle, sent, ok.

    python benchmarks/rss_highwater.py --quick     # ~40 s
    python benchmarks/rss_highwater.py --json
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
from _servers import Server, describe_env, raise_nofile, start_dtesn  # noqa: E402
from soak_endurance import SETS  # noqa: E402

from dtesn_trio.soak import InputSizes, LoadConfig, PriorityMix, open_http_client  # noqa: E402
from dtesn_trio.soak.runner import run_soak  # noqa: E402
from dtesn_trio.soak.targets import open_http_target  # noqa: E402

MiB = 1024 * 1024


async def idle_memory(url: str, tasks: int | None, patience: float = 30.0) -> dict[str, Any]:
    """The server's ``/v1/stats`` once it is idle: nothing but this request in flight
    and at most ``tasks`` + 8 live tasks (the connections of a burst close a few seconds
    after it), or after ``patience`` seconds (the figures then include them)."""
    async with open_http_client(url) as client:
        with trio.move_on_after(patience):
            while True:
                stats: dict[str, Any] = (await client.get("/v1/stats")).json()
                in_flight, live = stats["server"]["in_flight"], stats["loop"]["tasks"]
                if in_flight <= 1 and (tasks is None or live <= tasks + 8):
                    break
                await trio.sleep(0.5)
        collected: dict[str, Any] = (await client.get("/v1/stats?gc=1")).json()
        return collected


async def closed_loop(server: Server, connections: int, seconds: float) -> dict[str, Any]:
    load = LoadConfig(
        duration=seconds,
        concurrency=connections,
        priority_mix=PriorityMix.parse("0:10,2:80,4:10"),
        input_size=InputSizes.parse("2000"),
        deadline_ms=10_000,
        timeout=30.0,
        seed=connections,
    )
    async with open_http_target(server.url) as target:
        run = await run_soak(target, load, sample_interval=None)
    counts: dict[str, Any] = run.report()["counts"]
    return counts


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile()
    env = describe_env()
    began = time.perf_counter()
    points: list[dict[str, Any]] = []
    sent = ok = 0
    async with trio.open_nursery() as nursery:
        server = await start_dtesn(nursery, SETS, name="highwater")
        try:
            phases = [(10, args.warm)] + [
                (n, args.burst_seconds) for n in (args.burst, args.burst, 2 * args.burst)
            ]
            fresh = (await idle_memory(server.url, None))["loop"]["tasks"]
            for connections, seconds in phases:
                counts = await closed_loop(server, connections, seconds)
                sent += counts["sent"]
                ok += counts["ok"]
                stats = await idle_memory(server.url, fresh)
                points.append({**stats["memory"], "tasks": stats["loop"]["tasks"]})
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
        nursery.cancel_scope.cancel()
    rss = [round(p["rss_bytes"] / MiB, 1) for p in points]
    blocks = [p["allocated_blocks"] for p in points]
    first_step, second_step = rss[1] - rss[0], rss[2] - rss[1]
    return {
        "burst": args.burst,
        "burst_seconds": args.burst_seconds,
        "rss_idle_mb": rss,
        "first_step_mb": round(first_step, 1),
        "second_step_mb": round(second_step, 1),
        "second_to_first_ratio": round(second_step / first_step, 2) if first_step > 0 else None,
        "double_step_mb": round(rss[3] - rss[2], 1),
        "heap_blocks_idle": blocks,
        "heap_growth_pct": round(100.0 * (blocks[2] - blocks[0]) / blocks[0], 2),
        "tasks_idle": [p["tasks"] for p in points],
        "sent": sent,
        "ok": ok,
        "machine": env,
        "seconds": round(time.perf_counter() - began, 1),
    }


def table(r: dict[str, Any]) -> str:
    rss, blocks = r["rss_idle_mb"], r["heap_blocks_idle"]
    n = r["burst"]
    return "\n".join(
        [
            f"bursts of {n}, {n} and {2 * n} requests in flight for {r['burst_seconds']} s;"
            f" machine {r['machine']}",
            f"idle RSS after warm-up {rss[0]} MB -> after burst {n}: {rss[1]} MB"
            f" (+{r['first_step_mb']}, the baseline) -> after burst {n} again: {rss[2]} MB"
            f" (+{r['second_step_mb']}; ratio {r['second_to_first_ratio']}) -> after burst"
            f" {2 * n}: {rss[3]} MB (+{r['double_step_mb']})",
            f"idle live heap blocks {' -> '.join(str(b) for b in blocks)}"
            f" ({r['heap_growth_pct']} % after burst 2); idle tasks"
            f" {' -> '.join(str(t) for t in r['tasks_idle'])}",
            f"sent {r['sent']}, ok {r['ok']}; total {r['seconds']} s",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="shorter phases (~40 s)")
    parser.add_argument("--burst", type=int, default=200, help="requests in flight at once")
    parser.add_argument("--burst-seconds", type=float, default=None)
    args = parser.parse_args()
    args.warm = 8.0 if args.quick else 20.0
    args.burst_seconds = args.burst_seconds or (4.0 if args.quick else 10.0)
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
