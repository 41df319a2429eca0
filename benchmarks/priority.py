"""Priority 0 under overload: what strict priority (and adaptive LIFO) give it.

The embedded runtime (no HTTP: this is about the queue and the engine) with the overload
benchmark's model (256 units, depth 4, unique 12,000-byte texts), one batch worker and
one engine thread, driven open loop from inside the process:

- **idle**: priority 0 alone at ``--p0-rate`` requests/s: its latency with the engine
  otherwise idle (the baseline);
- **rare / heavy**: the same priority-0 traffic at ``--p0-rate`` (about 1/15 of
  capacity) or ``--heavy-p0-rate`` (about half), plus priority 3 at ``--bulk-rate`` (far
  above the engine's capacity), 5 s deadlines, the queue's defaults otherwise.

Reported per run: p50/p99 and answers of priority 0 and of priority 3.  A priority-0
request waits for the batch that is running when it arrives (no preemption), then goes
first.

Keys: ``idle_p0_p50_ms``, ``{rare,heavy}_p0_p50_ms``, ``{rare,heavy}_p0_p99_ms``,
``{rare,heavy}_p0_ok``, ``{rare,heavy}_p0_failed``, ``{rare,heavy}_bulk_p50_ms``,
``{rare,heavy}_bulk_ok``, ``{rare,heavy}_p0_p50_vs_idle`` and ``runs``.

    python benchmarks/priority.py --quick     # ~25 s
"""

from __future__ import annotations

import argparse
import json
import random
import string
import sys
import time
from pathlib import Path
from typing import Any

# benchmarks/ holds queue.py and http.py: keep it behind the standard library on the path.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import trio  # noqa: E402

from dtesn_trio import open_runtime  # noqa: E402
from dtesn_trio.config import RuntimeConfig  # noqa: E402
from dtesn_trio.errors import DTESNError  # noqa: E402
from dtesn_trio.settings import load_settings  # noqa: E402

BASE = [
    ("model.reservoir_size", "256"),
    ("model.membrane_depth", "4"),
    ("cache.enabled", "false"),
    ("jobs.enabled", "false"),
    ("processor.worker_threads", "1"),
    ("queue.workers", "1"),
    ("admission.max_requests_per_second", "100000"),
    ("admission.burst_limit", "100000"),
]


def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 1)


async def one_run(args: argparse.Namespace, p0_rate: float, bulk: bool) -> dict[str, Any]:
    config = load_settings(RuntimeConfig, environ={}, overrides=BASE)
    rnd = random.Random(7)

    def text() -> str:
        return "".join(rnd.choices(string.ascii_letters, k=args.input_bytes))

    lat: dict[int, list[float]] = {0: [], 3: []}
    late: dict[int, int] = {0: 0, 3: 0}
    errors: dict[str, int] = {}
    async with open_runtime(config) as rt:
        # warm up: one batch, so the queue knows how long a batch takes
        await rt.process(text(), priority=2)

        async def call(priority: int) -> None:
            t = trio.current_time()
            try:
                await rt.process(text(), priority=priority, deadline=t + args.deadline)
            except DTESNError as exc:
                late[priority] += 1
                errors[f"p{priority} {exc.code}"] = errors.get(f"p{priority} {exc.code}", 0) + 1
            else:
                lat[priority].append(trio.current_time() - t)

        async def generate(rate: float, priority: int) -> None:
            async with trio.open_nursery() as calls:
                end = trio.current_time() + args.seconds
                at = trio.current_time()
                while at < end:
                    calls.start_soon(call, priority)
                    at += 1 / rate
                    await trio.sleep_until(at)

        # requests still queued 2 s after the load stops are left out (neither counted)
        with trio.move_on_after(args.seconds + 2.0):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(generate, p0_rate, 0)
                if bulk:
                    nursery.start_soon(generate, args.bulk_rate, 3)
        stats = rt.queue.statistics() if rt.queue is not None else None
    return {
        "p0_rate": p0_rate,
        "bulk_rate": args.bulk_rate if bulk else 0,
        "p0_p50_ms": _pct(lat[0], 0.5),
        "p0_p99_ms": _pct(lat[0], 0.99),
        "p0_ok": len(lat[0]),
        "p0_failed": late[0],
        "bulk_p50_ms": _pct(lat[3], 0.5),
        "bulk_p99_ms": _pct(lat[3], 0.99),
        "bulk_ok": len(lat[3]),
        "bulk_failed": late[3],
        "batches": stats.batches if stats is not None else None,
        "batch_sizes": dict(stats.batch_sizes) if stats is not None else None,
        "errors": errors,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or not b else round(a / b, 3)


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    began = time.perf_counter()
    runs: dict[str, Any] = {"idle": await one_run(args, args.p0_rate, bulk=False)}
    out: dict[str, Any] = {"idle_p0_p50_ms": runs["idle"]["p0_p50_ms"]}
    for share, rate in (("rare", args.p0_rate), ("heavy", args.heavy_p0_rate)):
        run = runs[share] = await one_run(args, rate, bulk=True)
        for stat in ("p0_p50_ms", "p0_p99_ms", "p0_ok", "p0_failed", "bulk_p50_ms", "bulk_ok"):
            out[f"{share}_{stat}"] = run[stat]
        out[f"{share}_p0_p50_vs_idle"] = _ratio(run["p0_p50_ms"], out["idle_p0_p50_ms"])
    out["runs"] = runs
    out["seconds"] = round(time.perf_counter() - began, 1)
    return out


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{'run':<8}{'p0/s':>6}{'p0 p50':>9}{'p0 p99':>9}{'p0 ok':>7}{'p0 fail':>9}"
        f"{'p3 p50':>9}{'p3 ok':>7}{'p3 fail':>9}",
    ]
    for name, x in r["runs"].items():
        lines.append(
            f"{name:<8}{x['p0_rate']:>6.1f}{x['p0_p50_ms'] or 0:>9.0f}{x['p0_p99_ms'] or 0:>9.0f}"
            f"{x['p0_ok']:>7}{x['p0_failed']:>9}{x['bulk_p50_ms'] or 0:>9.0f}{x['bulk_ok']:>7}"
            f"{x['bulk_failed']:>9}"
        )
    for share in ("rare", "heavy"):
        lines.append(f"{share}: p0 p50 / idle p50 {r[f'{share}_p0_p50_vs_idle']}")
    lines.append(f"total {r['seconds']} s")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="5 s per run")
    parser.add_argument("--input-bytes", type=int, default=12000)
    parser.add_argument("--p0-rate", type=float, default=1.0)
    parser.add_argument("--heavy-p0-rate", type=float, default=5.0)
    parser.add_argument("--bulk-rate", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=5.0)
    args = parser.parse_args()
    args.seconds = 5.0 if args.quick else 15.0
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
