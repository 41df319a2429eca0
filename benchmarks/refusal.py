"""What one refusal costs the server's event loop (issue 8, "Overload").

Under 10x overload most requests are refused (``429 rate_limited`` by the admission rate
limiter, ``503 overloaded`` when the deadline cannot be met), and every refusal takes CPU
-- and the GIL -- from the engine.  This measures that cost alone.

One ``dtesn-trio serve`` runs in a subprocess (the overload benchmark's model and
settings) with a fixed admission rate of ``--limited-share`` x ``--rate`` (burst 1, not
adaptive).  One request without a deadline primes the queue's batch-time estimate; then
every ``POST /v1/process`` (unique 12,000-byte texts, overload's priority mix) is sent
with a deadline shorter than one batch, so a request the rate limiter lets through is
refused ``503 overloaded`` ("a batch takes ...") after admission -- the same path as
overload's deadline refusals -- and the engine never runs.  The load is open loop at a
fixed rate, from this process (``dtesn_trio.soak``'s generator and h11 client).

- **floor** (baseline, same run, same server, same rate): ``GET /healthz``, the cheapest
  endpoint: what hypercorn and the app charge for any request at all;
- **refusal**: the refusals above.

CPU is the server's main thread (its event loop: hypercorn, the app, admission) from
``/proc/<pid>/task/<pid>/stat``, divided by the requests answered in the phase; its idle
CPU (measured first) is subtracted.  The two phases alternate for ``--rounds`` rounds (the
machine's load drifts; both see the same drift) and are pooled.  Keys: ``refusal_cpu_us``, ``floor_cpu_us``,
``refusal_cost_ratio`` (refusal / floor), ``refusal_p50_ms``, ``refusal_p99_ms`` (the
client's, from each request's intended send time), ``floor_p99_ms``, and the details.

The app's own share, without hypercorn: the same app and runtime in this process, called
directly over ASGI (``app_floor_cpu_us`` for ``GET /healthz``, ``app_refusal_429_cpu_us``
and ``app_refusal_503_cpu_us``; this thread's CPU, the least of three passes).

    python benchmarks/refusal.py --quick      # 3 rounds of 2 x 4 s at 200/s; ~35 s
    python benchmarks/refusal.py --json       # 5 rounds of 2 x 8 s; ~90 s
"""

from __future__ import annotations

import argparse
import json
import math
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
from _servers import Server, describe_env, start_dtesn, thread_cpu_seconds  # noqa: E402

from dtesn_trio.soak import (  # noqa: E402
    HTTPClient,
    HTTPClientError,
    InputSizes,
    LoadConfig,
    Outcome,
    PriorityMix,
    RequestSpec,
    open_http_client,
)
from dtesn_trio.soak.recorder import LatencySummary  # noqa: E402
from dtesn_trio.soak.runner import run_soak  # noqa: E402
from dtesn_trio.soak.targets import open_http_target  # noqa: E402

MIX = "0:5,1:10,2:25,3:30,4:30"  # overload's


def server_sets(args: argparse.Namespace) -> list[str]:
    return [
        "model.reservoir_size=256",
        "model.membrane_depth=4",
        "cache.enabled=false",
        "jobs.enabled=false",
        "processor.worker_threads=1",
        "queue.workers=1",
        f"admission.max_requests_per_second={args.limited_share * args.rate:g}",
        "admission.burst_limit=1",
        "admission.adaptive_scaling=false",
        *args.set,
    ]


class HealthTarget:
    """``GET /healthz``: the floor."""

    kind = "health"

    def __init__(self, client: HTTPClient) -> None:
        self.client = client

    async def call(self, request: RequestSpec) -> Outcome:
        try:
            response = await self.client.get("/healthz")
        except HTTPClientError as exc:
            return Outcome(0, exc.kind)
        return Outcome(response.status, "" if response.status == 200 else "error")

    async def sample(self) -> dict[str, Any]:
        return {}

    def describe(self) -> dict[str, Any]:
        return {"kind": self.kind}


async def prime(server: Server) -> float:
    """One request without a deadline, so the queue knows how long a batch takes;
    returns that time (seconds)."""
    async with open_http_client(server.url) as client:
        with trio.fail_after(60):
            r = await client.post_json("/v1/process", {"input": "x" * 16000})
            if r.status != 200:
                raise RuntimeError(f"priming request failed: {r.status} {r.body[:300]!r}")
            stats = json.loads((await client.get("/v1/stats")).body)
    run = stats["queue"].get("mean_batch_duration") or stats["processing"].get(
        "mean_batch_duration"
    )
    return float(run) if run else json.loads(r.body)["timings"]["processing_ms"] / 1000


def _scope(method: str, path: str, body_len: int | None) -> dict[str, Any]:
    headers = [(b"host", b"127.0.0.1:8000"), (b"content-type", b"application/json")]
    if body_len is not None:
        headers.append((b"content-length", str(body_len).encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.1"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 5555),
        "server": ("127.0.0.1", 8000),
        "extensions": {},
        "state": {},
    }


async def app_only(args: argparse.Namespace, rate: float) -> dict[str, float]:
    """The app alone, in process (no hypercorn, no sockets): this thread's CPU per
    ``GET /healthz`` and per refused ``POST /v1/process``, called as hypercorn calls the
    app (the body as one message, then an empty last one).  ``rate`` is the admission
    rate: tiny -> every request is refused 429; huge -> 503 after admission."""
    import random
    import string

    from dtesn_trio.server import ServerConfig, create_app
    from dtesn_trio.server.cli import load_serve_config

    sets = [*server_sets(args)[:6], f"admission.max_requests_per_second={rate:g}"]
    sets += ["admission.burst_limit=1", "admission.adaptive_scaling=false"]
    runtime_config, _ = load_serve_config(sets=sets)
    from dtesn_trio.runtime import open_runtime

    n = args.app_requests
    rnd = random.Random(5)
    async with open_runtime(runtime_config) as rt:
        app = create_app(rt, ServerConfig())
        statuses: list[int] = []

        async def send(message: Any) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        async def call(method: str, path: str, body: bytes | None) -> None:
            messages = (
                [{"type": "http.request", "body": b"", "more_body": False}]
                if body is None
                else [
                    {"type": "http.request", "body": body, "more_body": True},
                    {"type": "http.request", "body": b"", "more_body": False},
                ]
            )

            async def receive() -> Any:
                return messages.pop(0)

            await app(_scope(method, path, None if body is None else len(body)), receive, send)

        await call("POST", "/v1/process", json.dumps({"input": "x" * 16000}).encode())
        if statuses != [200] or rt.queue is None or rt.queue.mean_batch_duration is None:
            raise RuntimeError(f"in-process priming failed: {statuses}")
        deadline_ms = max(1, int(rt.queue.mean_batch_duration * 500))
        bodies = [
            json.dumps(
                {
                    "input": "".join(rnd.choices(string.ascii_letters, k=args.input_bytes)),
                    "priority": rnd.randrange(5),
                    "deadline_ms": deadline_ms,
                },
                separators=(",", ":"),
            ).encode()
            for _ in range(n)
        ]
        best = {"floor": math.inf, "refusal": math.inf}
        for _ in range(3):  # the least of three: the machine's noise only ever adds
            for kind in ("floor", "refusal"):
                statuses.clear()
                t0 = time.thread_time()
                for i in range(n):
                    if kind == "floor":
                        await call("GET", "/healthz", None)
                    else:
                        await call("POST", "/v1/process", bodies[i])
                cpu = (time.thread_time() - t0) / n * 1e6
                wanted = {200} if kind == "floor" else {429, 503}
                if not set(statuses) <= wanted:
                    raise RuntimeError(f"in-process {kind}: unexpected statuses {set(statuses)}")
                best[kind] = min(best[kind], cpu)
        rt.nursery.cancel_scope.cancel()
    return {k: round(v, 1) for k, v in best.items()}


def _loop_cpu(server: Server) -> float:
    cpu = thread_cpu_seconds(server.pid)
    if cpu is None:
        raise RuntimeError("cannot read the server's CPU time from /proc")
    return cpu[0]


async def phase(
    server: Server, args: argparse.Namespace, kind: str, deadline_ms: int, seed: int
) -> dict[str, Any]:
    """One phase: ``args.seconds`` of open-loop load; the server's loop CPU and the
    client's outcomes (the latency histogram of the answers that count: 200 for the
    floor, 429/503 for the refusals)."""
    load = LoadConfig(
        duration=args.seconds,
        rate=args.rate,
        priority_mix=PriorityMix.parse(MIX),
        input_size=InputSizes.parse(str(args.input_bytes)),
        deadline_ms=deadline_ms,
        timeout=10.0,
        seed=seed,
    )
    cpu0 = _loop_cpu(server)
    t0 = time.perf_counter()
    if kind == "floor":
        async with open_http_client(server.url) as client:
            run = await run_soak(HealthTarget(client), load, sample_interval=None)
    else:
        async with open_http_target(server.url) as target:
            run = await run_soak(target, load, sample_interval=None)
    wall = time.perf_counter() - t0
    cpu = _loop_cpu(server) - cpu0
    result = run.result
    by_outcome = {k: result.merged(key=k).get_total_count() for k in result.outcome_keys}
    answered = sum(n for k, n in by_outcome.items() if not k.startswith(("0", "timeout")))
    wanted = (200,) if kind == "floor" else (429, 503)
    return {
        "sent": result.sent,
        "answered": answered,
        "by_outcome": by_outcome,
        "cpu_s": cpu,
        "wall_s": wall,
        "hist": result.status_histogram(lambda s: s in wanted),
        "client_cpu_ms_per_request": run.client.get("cpu_ms_per_request"),
    }


def pooled(rounds: list[dict[str, Any]], idle: float) -> dict[str, Any]:
    """The rounds of one kind together: loop CPU per answered request (the idle loop's
    CPU subtracted), the loop's share of a core, latencies of the counted answers."""
    cpu = sum(r["cpu_s"] - idle * r["wall_s"] for r in rounds)
    wall = sum(r["wall_s"] for r in rounds)
    answered = sum(r["answered"] for r in rounds)
    hist = rounds[0]["hist"]
    for r in rounds[1:]:
        hist.add(r["hist"])
    lat = LatencySummary.of(hist)
    by_outcome: dict[str, int] = {}
    for r in rounds:
        for k, n in r["by_outcome"].items():
            by_outcome[k] = by_outcome.get(k, 0) + n
    return {
        "sent": sum(r["sent"] for r in rounds),
        "answered": answered,
        "counted": hist.get_total_count(),
        "by_outcome": by_outcome,
        "cpu_us": round(cpu / answered * 1e6, 1) if answered else None,
        "cpu_us_rounds": [
            round((r["cpu_s"] - idle * r["wall_s"]) / r["answered"] * 1e6, 1)
            for r in rounds
            if r["answered"]
        ],
        "loop_cpu_share": round(cpu / wall, 3),
        "p50_ms": None if lat is None else lat.p50_ms,
        "p99_ms": None if lat is None else lat.p99_ms,
        "client_cpu_ms_per_request": rounds[-1]["client_cpu_ms_per_request"],
    }


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    env = describe_env()
    began = time.perf_counter()
    app_429 = await app_only(args, 1e-3)
    app_503 = await app_only(args, 1e9)
    rounds: dict[str, list[dict[str, Any]]] = {"floor": [], "refusal": []}
    async with trio.open_nursery() as nursery:
        server = await start_dtesn(nursery, server_sets(args), name="refusal")
        try:
            batch_s = await prime(server)
            # Shorter than one batch: a request the rate limiter lets through is refused.
            deadline_ms = max(1, min(int(batch_s * 1000 * 0.5), 1000))
            cpu0 = _loop_cpu(server)
            t0 = time.perf_counter()
            await trio.sleep(args.idle_seconds)
            idle = (_loop_cpu(server) - cpu0) / (time.perf_counter() - t0)
            # Alternate the phases: the machine's load drifts, and both see the same drift.
            for i in range(args.rounds):
                for kind in ("floor", "refusal"):
                    rounds[kind].append(await phase(server, args, kind, deadline_ms, seed=3 + i))
        finally:
            with trio.CancelScope(shield=True):
                await server.stop()
        nursery.cancel_scope.cancel()
    floor, refusal = pooled(rounds["floor"], idle), pooled(rounds["refusal"], idle)
    r, f = refusal["cpu_us"], floor["cpu_us"]
    ratios = [
        round(a / b, 3)
        for a, b in zip(refusal["cpu_us_rounds"], floor["cpu_us_rounds"], strict=False)
        if b
    ]
    return {
        "refusal_cpu_us": r,
        "floor_cpu_us": f,
        "refusal_cost_ratio": round(r / f, 3) if r and f else None,
        "refusal_cost_ratio_rounds": ratios,
        "refusal_p50_ms": refusal["p50_ms"],
        "refusal_p99_ms": refusal["p99_ms"],
        "floor_p99_ms": floor["p99_ms"],
        "app_floor_cpu_us": min(app_429["floor"], app_503["floor"]),
        "app_refusal_429_cpu_us": app_429["refusal"],
        "app_refusal_503_cpu_us": app_503["refusal"],
        "refused_share": (
            round(refusal["counted"] / refusal["sent"], 4) if refusal["sent"] else math.nan
        ),
        "rate": args.rate,
        "rounds": args.rounds,
        "seconds": args.seconds,
        "input_bytes": args.input_bytes,
        "deadline_ms": deadline_ms,
        "batch_ms": round(batch_s * 1000, 1),
        "idle_loop_cpu_share": round(idle, 4),
        "server_sets": server_sets(args),
        "runs": {"floor": floor, "refusal": refusal},
        "machine": env,
        "total_seconds": round(time.perf_counter() - began, 1),
    }


def _fmt(v: float | None, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


def table(r: dict[str, Any]) -> str:
    lines = [
        f"{r['rate']:g} requests/s, {r['rounds']} rounds of {r['seconds']:g} s per phase,"
        f" {r['input_bytes']} B bodies,"
        f" deadline {r['deadline_ms']} ms < one batch ({r['batch_ms']} ms); machine {r['machine']}",
        "",
        f"{'phase':<10}{'sent':>7}{'answered':>10}{'loop CPU/req':>14}{'loop share':>12}"
        f"{'p50 ms':>9}{'p99 ms':>9}  outcomes",
    ]
    for name in ("floor", "refusal"):
        x = r["runs"][name]
        lines.append(
            f"{name:<10}{x['sent']:>7}{x['answered']:>10}{_fmt(x['cpu_us']) + ' us':>14}"
            f"{x['loop_cpu_share']:>12.3f}{_fmt(x['p50_ms']):>9}{_fmt(x['p99_ms']):>9}"
            f"  {x['by_outcome']}"
        )
    lines += [
        "",
        f"refusal_cpu_us {r['refusal_cpu_us']}  floor_cpu_us {r['floor_cpu_us']}"
        f"  refusal_cost_ratio {r['refusal_cost_ratio']} (rounds {r['refusal_cost_ratio_rounds']})",
        f"refusal_p99_ms {r['refusal_p99_ms']} (target <= 50)   total {r['total_seconds']} s",
        "",
        f"the app alone (in process, no hypercorn): GET /healthz {r['app_floor_cpu_us']} us,"
        f" refusal 429 {r['app_refusal_429_cpu_us']} us, 503 {r['app_refusal_503_cpu_us']} us",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="8 s per phase")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--input-bytes", type=int, default=12000)
    parser.add_argument(
        "--limited-share",
        type=float,
        default=0.5,
        help="admission rate as a share of --rate: the rest is refused 429 (default 0.5)",
    )
    parser.add_argument("--seconds", type=float, default=None, help="seconds per phase and round")
    parser.add_argument("--rounds", type=int, default=None, help="floor/refusal rounds")
    parser.add_argument(
        "--set", action="append", default=[], help="extra server setting (section.key=value)"
    )
    args = parser.parse_args()
    if args.seconds is None:
        args.seconds = 4.0 if args.quick else 8.0
    if args.rounds is None:
        args.rounds = 3 if args.quick else 5
    args.idle_seconds = 1.0 if args.quick else 2.0
    args.app_requests = 1000 if args.quick else 3000
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
