"""How many concurrent requests the server holds: ours against the FastAPI peer, same run.

"Holds N concurrent requests", as a user means it: N connections, each with a request in
flight at once, and every one of them either answered 200 within its deadline or refused
quickly (429/503 within ``--refusal-ms``), none lost (no connection error, no client
time-out, no other status, no 504).  Measured for N = 500, 1,000, 2,000, ... (doubling;
quick: up to 8,000, full: up to 16,000), stopping at the first N that does not hold; the
largest N that held is ``max_concurrent_held`` (to within the ladder's factor of 2).

- **ours**: ``dtesn-trio serve`` on its defaults, nothing set -- its model (1024 units,
  depth 4), its queue, batching, executor, result cache, server settings and admission
  (no rate limit; 10,000 requests at once, the queue's capacity: beyond that it refuses
  at once, which counts as holding when the refusal is quick).
- **peer**: ``benchmarks/peer_fastapi.py`` (FastAPI on uvicorn, ``process_one`` per
  request in its thread pool) with the same model: the baseline, at the same N.

Load: this process opens N connections with the soak runner's h11 client (one
connection per request in flight) and sends one ``POST /v1/process`` on each, unique
64-byte texts, ``deadline_ms`` ``--deadline-ms`` (5,000), all due within ``--ramp`` (1 s):
far faster than either server answers (a few hundred per second here), so they overlap
-- ``peak_in_flight`` is the client's count of requests sent and not yet answered at the
busiest moment.  Latency is measured from each request's intended send time; the client
gives up at the deadline + 1 s.

Keys (``--json``): max_concurrent_held, baseline_max_concurrent_held (the peer's),
ratio (ours / peer), the rows of every N tried for both (held, answered_200, refused,
late, lost, slow_refusals, peak_in_flight, p50_ms / p99_ms of the 200s, refusal_p99_ms,
by_status) and, for ours at its largest N held: rss_idle_mb, rss_peak_mb,
rss_per_connection_kb, max_step_ms (the longest event-loop step of the whole ladder,
from /v1/stats), server_in_flight_max (sampled every 0.5 s; misses the peak).
``--set section.key=value`` passes a setting to our server (after the benchmark's own).

    python benchmarks/concurrency.py --quick          # ladder to 8,000; ~1-2 min
    python benchmarks/concurrency.py --json           # ladder to 16,000
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
from _deps import require  # noqa: E402
from _servers import (  # noqa: E402
    Server,
    describe_env,
    raise_nofile,
    rss_bytes,
    start_dtesn,
    start_peer,
)

from dtesn_trio.dtesn import DTESNConfig  # noqa: E402
from dtesn_trio.soak import InputSizes, LoadConfig, PriorityMix, open_http_client  # noqa: E402
from dtesn_trio.soak.recorder import Recorder  # noqa: E402
from dtesn_trio.soak.runner import run_soak  # noqa: E402
from dtesn_trio.soak.targets import open_http_target  # noqa: E402

MiB = 1024 * 1024
REFUSALS = ("429", "503")


def ours_sets(n: int) -> list[str]:
    """Settings for our server at ``n`` connections: none (serve's defaults admit up to
    10,000 at once with no rate limit, and refuse the rest at once)."""
    return []


def classify(
    records: list[tuple[float, float, int, str]], deadline_ms: float, refusal_ms: float
) -> dict[str, Any]:
    """Count every request's fate; ``held`` is true when none was late, lost or refused
    slowly.  ``records``: (intended send, end, priority, outcome key) per request."""
    ok_ms: list[float] = []
    refusal_latencies: list[float] = []
    late = lost = slow = 0
    by_status: dict[str, int] = {}
    for intended, end, _, key in records:
        ms = (end - intended) * 1000
        by_status[key] = by_status.get(key, 0) + 1
        status = key.split(" ", 1)[0]
        if status == "200":
            ok_ms.append(ms)
            if ms > deadline_ms:
                late += 1
        elif status in REFUSALS:
            refusal_latencies.append(ms)
            if ms > refusal_ms:
                slow += 1
        elif status == "504":
            late += 1
        else:  # a client time-out, a connection error, any other status
            lost += 1
    return {
        "held": late == 0 and lost == 0 and slow == 0,
        "answered_200": len(ok_ms),
        "refused": len(refusal_latencies),
        "late": late,
        "lost": lost,
        "slow_refusals": slow,
        "p50_ms": _pct(ok_ms, 50),
        "p99_ms": _pct(ok_ms, 99),
        "refusal_p99_ms": _pct(refusal_latencies, 99),
        "by_status": by_status,
    }


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q / 100))], 1)


async def one_step(server: Server, n: int, args: argparse.Namespace) -> dict[str, Any]:
    """N requests on N connections, all due within the ramp; the fate of each."""
    load = LoadConfig(
        duration=args.ramp,
        rate=n / args.ramp,
        priority_mix=PriorityMix.parse("2:1"),
        input_size=InputSizes.parse("64"),
        deadline_ms=args.deadline_ms,
        timeout=args.deadline_ms / 1000 + 1.0,
        seed=n,
    )
    recorder = Recorder(bucket=0.1, keep_records=True)
    rss_idle = rss_bytes(server.pid) or 0
    peak_rss = [rss_idle]

    async def watch_rss() -> None:
        while True:
            rss = rss_bytes(server.pid)
            if rss is not None and rss > peak_rss[0]:
                peak_rss[0] = rss
            await trio.sleep(0.2)

    async with trio.open_nursery() as watching:
        watching.start_soon(watch_rss)
        async with open_http_target(server.url) as target:
            run = await run_soak(target, load, sample_interval=0.5, recorder=recorder)
        watching.cancel_scope.cancel()
    assert recorder.records is not None
    row = classify(recorder.records, args.deadline_ms, args.refusal_ms)
    samples = [s["stats"] for s in run.samples if s.get("stats")]
    row.update(
        connections=n,
        sent=run.result.sent,
        peak_in_flight=max((p.in_flight_max for p in run.result.series()), default=0),
        server_in_flight_max=int(max((s.get("server.in_flight", 0.0) for s in samples), default=0)),
        rss_idle_mb=round(rss_idle / MiB, 1),
        rss_peak_mb=round(peak_rss[0] / MiB, 1),
        rss_per_connection_kb=round((peak_rss[0] - rss_idle) / n / 1024, 1),
        seconds=round(run.result.duration, 1),
    )
    return row


async def ladder(
    name: str, start: Any, args: argparse.Namespace, nursery: trio.Nursery
) -> tuple[list[dict[str, Any]], dict[str, Any] | None]:
    """Every N of the ladder until one does not hold (a fresh server for each N: a
    failed step's leftovers must not count against the next); the rows and the final
    /v1/stats of the last server that held (ours only)."""
    rows: list[dict[str, Any]] = []
    stats: dict[str, Any] | None = None
    for n in args.ladder:
        server = await start(nursery, n)
        try:
            # one request first: connections, threads and the model's caches warm
            async with open_http_client(server.url) as client:
                await client.post_json("/v1/process", {"input": "warm up"})
            row = await one_step(server, n, args)
            if name == "ours":
                with trio.fail_after(30):
                    async with open_http_client(server.url) as client:
                        final = (await client.get("/v1/stats")).json()
                row["max_step_ms"] = round(final["loop"]["max_step_ms"], 1)
                if row["held"]:
                    stats = final
        finally:
            with trio.CancelScope(shield=True):
                await server.stop(grace=1.0)
        rows.append(row)
        print(
            f"  {name} {n}: {'held' if row['held'] else 'did not hold'}"
            f" (200 {row['answered_200']}, refused {row['refused']}, late {row['late']},"
            f" lost {row['lost']}, slow refusals {row['slow_refusals']})",
            file=sys.stderr,
            flush=True,
        )
        if not row["held"]:
            break
    return rows, stats


def largest_held(rows: list[dict[str, Any]]) -> int:
    return max((r["connections"] for r in rows if r["held"]), default=0)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_nofile(2 * max(args.ladder) + 2000)
    if limit < max(args.ladder) + 100:
        raise SystemExit(f"RLIMIT_NOFILE is {limit}: too low for {max(args.ladder)} connections")
    env = describe_env()
    began = time.perf_counter()
    model = DTESNConfig()

    async def start_ours(nursery: trio.Nursery, n: int) -> Server:
        return await start_dtesn(nursery, ours_sets(n) + args.sets, name="ours")

    async def start_baseline(nursery: trio.Nursery, n: int) -> Server:
        return await start_peer(
            nursery,
            reservoir_size=model.reservoir_size,
            membrane_depth=model.membrane_depth,
            name="peer",
        )

    async with trio.open_nursery() as nursery:
        ours, stats = await ladder("ours", start_ours, args, nursery)
        peer, _ = await ladder("peer", start_baseline, args, nursery)
        nursery.cancel_scope.cancel()
    held, base = largest_held(ours), largest_held(peer)
    best = next((r for r in ours if r["connections"] == held), None)
    return {
        "max_concurrent_held": held,
        "baseline_max_concurrent_held": base,
        "ratio": round(held / base, 2) if base else None,
        "baseline": "FastAPI peer (benchmarks/peer_fastapi.py), same model, same N",
        "peak_in_flight": best["peak_in_flight"] if best else None,
        "answered_200": best["answered_200"] if best else None,
        "refused": best["refused"] if best else None,
        "p99_ms": best["p99_ms"] if best else None,
        "refusal_p99_ms": best["refusal_p99_ms"] if best else None,
        "rss_idle_mb": best["rss_idle_mb"] if best else None,
        "rss_peak_mb": best["rss_peak_mb"] if best else None,
        "rss_per_connection_kb": best["rss_per_connection_kb"] if best else None,
        "max_step_ms": best.get("max_step_ms") if best else None,
        "server_in_flight_max": best["server_in_flight_max"] if best else None,
        "gc": (stats or {}).get("gc"),
        "deadline_ms": args.deadline_ms,
        "refusal_ms": args.refusal_ms,
        "ramp_s": args.ramp,
        "ladder": args.ladder,
        "ours": ours,
        "peer": peer,
        "server_sets": ours_sets(held or args.ladder[0]) + args.sets,
        "machine": env,
        "seconds": round(time.perf_counter() - began, 1),
    }


def table(r: dict[str, Any]) -> str:
    lines = [
        f"N connections, one request each, all due within {r['ramp_s']} s, deadline"
        f" {r['deadline_ms']} ms, refusals within {r['refusal_ms']} ms; machine {r['machine']}",
        f"{'server':<6}{'N':>7}{'held':>6}{'200':>7}{'refused':>9}{'late':>6}{'lost':>6}"
        f"{'slow ref.':>10}{'in flight':>10}{'p99 ms':>9}",
    ]
    for name in ("ours", "peer"):
        for x in r[name]:
            lines.append(
                f"{name:<6}{x['connections']:>7}{'yes' if x['held'] else 'no':>6}"
                f"{x['answered_200']:>7}{x['refused']:>9}{x['late']:>6}{x['lost']:>6}"
                f"{x['slow_refusals']:>10}{x['peak_in_flight']:>10}{x['p99_ms'] or '-':>9}"
            )
    lines.append(
        f"max_concurrent_held {r['max_concurrent_held']} (peer {r['baseline_max_concurrent_held']},"
        f" ratio {r['ratio']}); at it: RSS {r['rss_idle_mb']} -> {r['rss_peak_mb']} MB"
        f" ({r['rss_per_connection_kb']} KB per connection), longest loop step"
        f" {r['max_step_ms']} ms; total {r['seconds']} s"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="the ladder up to 8,000")
    parser.add_argument("--deadline-ms", type=int, default=5000)
    parser.add_argument("--refusal-ms", type=float, default=1000.0, help="a quick refusal")
    parser.add_argument("--ramp", type=float, default=1.0, help="seconds to send all N")
    parser.add_argument(
        "--connections", type=int, nargs="+", default=None, help="the ladder (default 500..)"
    )
    parser.add_argument(
        "--set",
        dest="sets",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a setting of our server, after the benchmark's own (repeatable)",
    )
    args = parser.parse_args()
    require("fastapi", "uvicorn")
    top = 8000 if args.quick else 16000
    args.ladder = args.connections or [n for n in (500, 1000, 2000, 4000, 8000, 16000) if n <= top]
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
