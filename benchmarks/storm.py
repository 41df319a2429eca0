"""Light requests, many clients (issue 13): `dtesn-trio serve` on its defaults under
closed-loop load from 1 to 4,096 connections, beside the FastAPI peer, measured by wrk.

The server runs exactly as `dtesn-trio serve` starts it (default model: 1,024 units,
depth 4; default queue, admission, cache and job store): no flag is tuned.  Every
request is a unique 64-byte text (so the result cache never answers it) with
``deadline_ms`` (default 1,000; ``--no-deadline`` sends none and the server's own queue
timeout applies) at priority 2, or a mix of priorities 0-4 (``--priorities mix``).

The load tool is wrk (Debian's package; `scripts/test` installs it), one thread,
closed loop: each connection sends its next request the moment an answer arrives,
whatever the answer, so a storm of refused clients comes straight back, as retrying
clients do.  wrk and the server share this machine's two cores (the server's CPU is
reported per row).  A row per connection count: answers per second by status, p50/p99
of all answers (wrk's histogram: every answer, refusals included), connection errors,
client time-outs (``--timeout``), the server's CPU: its own process (the event loop,
and the engine when it computes in threads) and, beside it, with its worker processes.
``leak`` compares fds, tasks and RSS before and after the rows; ``cache_mb`` is what
the result cache holds (its entries times one result's JSON), so
``rss_growth_beyond_cache_pct`` is the growth the cache does not explain.

The floor for one client is the engine's single-input time (measured here, in this
process, on the same model) plus a `GET /healthz` round trip (wrk, one connection).
The peer is `benchmarks/peer_fastapi.py` (FastAPI + uvicorn, `process_one` per request
in its thread pool) at 1 and 4 connections.

Keys: c1_p50_ms, c1_floor_ms, c1_ratio (p50 / floor, target <= 2), c4_ok_per_s,
c4_peer_ok_per_s, c4_vs_peer (target >= 2), best_ok_per_s (16-64 connections),
storm256_ratio, storm1024_ratio (target >= 0.8), storm4096_ratio (>= 0.7),
storm_p99_ms (the worst p99 at 256 and 1,024; target <= 1.5 x deadline),
storm4096_p99_ms (the p99 at 4,096, where waiting for a ``server.max_in_flight`` slot
does not count in a request's deadline), storm_timeouts
(client time-outs / requests at 4,096, target < 1 %), storm_other_status (answers not
200/429/503/504), storm_connect_errors, leak (fds, tasks, RSS before and after), rows.

    python benchmarks/storm.py --quick        # 4 s a row; under 60 s
    python benchmarks/storm.py --json         # 10 s a row
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))
sys.path.append(str(_HERE))

from _deps import require, require_program  # noqa: E402

require("fastapi", "uvicorn", "httpx")

import httpx  # noqa: E402
import trio  # noqa: E402
from _servers import (  # noqa: E402
    Server,
    cpu_seconds_of,
    describe_env,
    raise_nofile,
    rss_bytes,
    start_dtesn,
    start_peer,
    tree_cpu_seconds,
)

CONNECTIONS = (1, 4, 16, 64, 256, 1024, 4096)
OK_STATUSES = {200, 429, 503, 504}
_WRK_JSON = re.compile(r"^WRKJSON(.*)$", re.MULTILINE)

# Unique 64-byte texts, a row id and a per-connection counter; statuses (and with a
# priority mix, the 200s by priority) gathered over wrk's threads in done().
LUA = r"""
local threads = {}
local counter = 0
local deadline, mix, tag = -1, false, "r"
statuses, ok_by_priority = {}, {}

function setup(thread)
  table.insert(threads, thread)
  thread:set("tid", #threads)
end

function init(args)
  deadline = tonumber(args[1])
  mix = args[2] == "mix"
  tag = args[3] .. "-" .. tostring(tid) .. "-"
end

function request()
  counter = counter + 1
  local text = tag .. counter .. "-"
  text = text .. string.rep("x", 64 - #text)
  local body = '{"input":"' .. text .. '"'
  if deadline > 0 then body = body .. ',"deadline_ms":' .. deadline end
  if mix then body = body .. ',"priority":' .. (counter % 5) end
  body = body .. "}"
  return wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if mix and status == 200 then
    local p = string.match(body, '"priority":%s*(%d)')
    if p then ok_by_priority[p] = (ok_by_priority[p] or 0) + 1 end
  end
end

local function json_table(t)
  local parts = {}
  for k, v in pairs(t) do table.insert(parts, '"' .. tostring(k) .. '":' .. v) end
  return "{" .. table.concat(parts, ",") .. "}"
end

function done(summary, latency, requests)
  local total, prio = {}, {}
  for _, t in ipairs(threads) do
    for k, v in pairs(t:get("statuses")) do total[k] = (total[k] or 0) + v end
    for k, v in pairs(t:get("ok_by_priority")) do prio[k] = (prio[k] or 0) + v end
  end
  local e = summary.errors
  io.write("WRKJSON{",
    '"duration_us":', summary.duration, ',"requests":', summary.requests,
    ',"connect":', e.connect, ',"read":', e.read, ',"write":', e.write,
    ',"timeout":', e.timeout, ',"status_errors":', e.status,
    ',"p50_us":', latency:percentile(50), ',"p99_us":', latency:percentile(99),
    ',"max_us":', latency.max, ',"mean_us":', latency.mean,
    ',"statuses":', json_table(total), ',"ok_by_priority":', json_table(prio), "}\n")
end
"""

HEALTHZ_LUA = LUA.replace(
    'wrk.format("POST", nil, {["Content-Type"] = "application/json"}, body)',
    'wrk.format("GET", nil)',
)


def _wrk() -> str:
    return require_program("wrk", "apt-get install wrk (scripts/test installs it)")


async def run_wrk(
    url: str,
    connections: int,
    seconds: float,
    *,
    script: Path,
    deadline_ms: int,
    priorities: str,
    tag: str,
    client_timeout: float,
) -> dict[str, Any]:
    cmd = [
        _wrk(),
        "-t1",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        f"--timeout={client_timeout:g}s",
        "-s",
        str(script),
        url,
        "--",
        str(deadline_ms),
        priorities,
        tag,
    ]
    proc = await trio.run_process(cmd, capture_stdout=True, capture_stderr=True, check=False)
    out = proc.stdout.decode()
    match = _WRK_JSON.search(out)
    if proc.returncode != 0 or match is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {out[-1500:]} {proc.stderr[-1500:]!r}")
    raw: dict[str, Any] = json.loads(match.group(1))
    return raw


def row_of(raw: dict[str, Any], connections: int, cpu: float | None) -> dict[str, Any]:
    seconds = raw["duration_us"] / 1e6
    statuses = {int(k): v for k, v in raw["statuses"].items()}
    answered = sum(statuses.values())
    return {
        "connections": connections,
        "seconds": round(seconds, 2),
        "answers_per_s": round(answered / seconds, 1),
        "ok_per_s": round(statuses.get(200, 0) / seconds, 1),
        "per_s_by_status": {s: round(n / seconds, 1) for s, n in sorted(statuses.items())},
        "p50_ms": round(raw["p50_us"] / 1000, 1),
        "p99_ms": round(raw["p99_us"] / 1000, 1),
        "max_ms": round(raw["max_us"] / 1000, 1),
        "other_status": sum(n for s, n in statuses.items() if s not in OK_STATUSES),
        "connect_errors": raw["connect"],
        "read_write_errors": raw["read"] + raw["write"],
        "timeouts": raw["timeout"],
        "requests": raw["requests"],
        "server_cpu": None if cpu is None else round(cpu / seconds, 2),
        "ok_by_priority": {int(k): v for k, v in raw["ok_by_priority"].items()},
    }


async def settle(
    server: Server, client: httpx.AsyncClient, fds: int | None = None, limit: float = 15.0
) -> dict[str, Any]:
    """Wait (up to ``limit`` s) until nothing is queued or running and, given ``fds``,
    until the server holds no more open files than that; the last stats."""
    stats: dict[str, Any] = {}
    with trio.move_on_after(limit):
        while True:
            stats = (await client.get(f"{server.url}/v1/stats")).json()
            queue = stats.get("queue", {})
            idle = not queue.get("total_queued_requests") and not queue.get("running_batches")
            if idle and (fds is None or fds_of(server.process.pid) <= fds):
                return stats
            await trio.sleep(0.25)
    return stats


def fds_of(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def engine_single_ms(repeat: int = 30) -> float:
    """The default model's time for one 64-byte text, in this process, one BLAS thread."""
    from threadpoolctl import threadpool_limits

    from dtesn_trio.dtesn import DTESNConfig, DTESNModel

    model = DTESNModel(DTESNConfig())
    times = []
    with threadpool_limits(1):
        for i in range(repeat):
            text = f"floor-{i}-".ljust(64, "y")
            start = time.perf_counter()
            model.process_one(text)
            times.append(time.perf_counter() - start)
    return statistics.median(times[3:]) * 1000


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    raise_nofile(65536)
    seconds = 4.0 if args.quick else args.seconds
    conns = [int(c) for c in args.connections.split(",")]
    deadline_ms = -1 if args.no_deadline else args.deadline_ms
    env = describe_env()
    workdir = Path(tempfile.mkdtemp(prefix="storm-"))
    script = workdir / "storm.lua"
    script.write_text(LUA)
    healthz_script = workdir / "healthz.lua"
    healthz_script.write_text(HEALTHZ_LUA)
    engine_ms = engine_single_ms()
    rows: list[dict[str, Any]] = []
    result: dict[str, Any] = {"env": env, "deadline_ms": deadline_ms, "seconds": seconds}
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=30) as client:
        server = await start_dtesn(nursery, args.set, name="dtesn")
        try:
            pid = server.process.pid
            await client.post(f"{server.url}/v1/process", json={"input": "warm-up"})
            healthz = await run_wrk(
                f"{server.url}/healthz",
                1,
                2.0,
                script=healthz_script,
                deadline_ms=-1,
                priorities="2",
                tag="h",
                client_timeout=args.timeout,
            )
            healthz_ms = healthz["p50_us"] / 1000
            before = await settle(server, client)
            leak_before = {
                "fds": fds_of(pid),
                "tasks": before.get("loop", {}).get("tasks"),
                "rss_mb": round((rss_bytes(pid) or 0) / 1e6, 1),
            }
            for i, c in enumerate(conns):
                cpu0 = cpu_seconds_of(pid)
                tree0 = tree_cpu_seconds(pid)
                raw = await run_wrk(
                    f"{server.url}/v1/process",
                    c,
                    seconds,
                    script=script,
                    deadline_ms=deadline_ms,
                    priorities=args.priorities,
                    tag=f"r{i}",
                    client_timeout=args.timeout,
                )
                cpu1 = cpu_seconds_of(pid)
                tree1 = tree_cpu_seconds(pid)
                cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                row = row_of(raw, c, cpu)
                if tree0 is not None and tree1 is not None:
                    row["cpu_with_workers"] = round((tree1 - tree0) / row["seconds"], 2)
                rows.append(row)
                if not args.json:
                    print(_row_line("ours", row), flush=True)
                await settle(server, client)
            # the client closed every connection: wait for the server to see it
            after = await settle(server, client, fds=leak_before["fds"] + 1)
            cache = after.get("cache") or {}
            entries = cache.get("size", cache.get("entries")) or 0
            # what one cached result holds: its JSON (the cache keeps the bytes)
            probe = await client.post(
                f"{server.url}/v1/process", json={"input": "leak-probe-" + "x" * 53}
            )
            result_bytes = len(json.dumps(probe.json()["result"], separators=(",", ":")))
            rss_after = round((rss_bytes(pid) or 0) / 1e6, 1)
            cache_mb = round(entries * result_bytes / 1e6, 1)
            leak_after = {
                "fds": fds_of(pid),
                "tasks": after.get("loop", {}).get("tasks"),
                "rss_mb": rss_after,
                "cache_entries": entries,
                "cache_mb": cache_mb,
                "rss_growth_beyond_cache_pct": round(
                    100 * (rss_after - cache_mb - leak_before["rss_mb"]) / leak_before["rss_mb"], 1
                ),
            }
        finally:
            await server.stop()
        peer_rows: list[dict[str, Any]] = []
        if not args.skip_peer:
            peer = await start_peer(nursery, reservoir_size=1024, membrane_depth=4)
            try:
                await client.post(f"{peer.url}/v1/process", json={"input": "warm-up"})
                for c in (1, 4):
                    cpu0 = cpu_seconds_of(peer.process.pid)
                    raw = await run_wrk(
                        f"{peer.url}/v1/process",
                        c,
                        seconds,
                        script=script,
                        deadline_ms=deadline_ms,
                        priorities="2",
                        tag=f"p{c}",
                        client_timeout=args.timeout,
                    )
                    cpu1 = cpu_seconds_of(peer.process.pid)
                    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
                    peer_rows.append(row_of(raw, c, cpu))
                    if not args.json:
                        print(_row_line("peer", peer_rows[-1]), flush=True)
            finally:
                await peer.stop()
        nursery.cancel_scope.cancel()
    shutil.rmtree(workdir, ignore_errors=True)
    return summarize(result, rows, peer_rows, engine_ms, healthz_ms, leak_before, leak_after)


def summarize(
    result: dict[str, Any],
    rows: list[dict[str, Any]],
    peer_rows: list[dict[str, Any]],
    engine_ms: float,
    healthz_ms: float,
    leak_before: dict[str, Any],
    leak_after: dict[str, Any],
) -> dict[str, Any]:
    by_c = {r["connections"]: r for r in rows}
    peer_by_c = {r["connections"]: r for r in peer_rows}
    best = max((by_c[c]["ok_per_s"] for c in (16, 64) if c in by_c), default=None)
    storm = [by_c[c] for c in (256, 1024, 4096) if c in by_c]

    def ratio(c: int) -> float | None:
        if best is None or c not in by_c or best == 0:
            return None
        return round(by_c[c]["ok_per_s"] / best, 3)

    floor = engine_ms + healthz_ms
    c1 = by_c.get(1)
    c4 = by_c.get(4)
    peer4 = peer_by_c.get(4)
    result.update(
        {
            "engine_single_ms": round(engine_ms, 2),
            "healthz_p50_ms": round(healthz_ms, 2),
            "c1_p50_ms": None if c1 is None else c1["p50_ms"],
            "c1_floor_ms": round(floor, 2),
            "c1_ratio": None if c1 is None else round(c1["p50_ms"] / floor, 2),
            "c4_ok_per_s": None if c4 is None else c4["ok_per_s"],
            "c4_peer_ok_per_s": None if peer4 is None else peer4["ok_per_s"],
            "c4_vs_peer": (
                None
                if c4 is None or peer4 is None or not peer4["ok_per_s"]
                else round(c4["ok_per_s"] / peer4["ok_per_s"], 2)
            ),
            "best_ok_per_s": best,
            "storm256_ratio": ratio(256),
            "storm1024_ratio": ratio(1024),
            "storm4096_ratio": ratio(4096),
            # the issue's p99 target is for 256 and 1,024; 4,096's target is time-outs
            "storm_p99_ms": max(
                (r["p99_ms"] for r in storm if r["connections"] <= 1024), default=None
            ),
            "storm4096_p99_ms": None if 4096 not in by_c else by_c[4096]["p99_ms"],
            "storm_timeouts": (
                None
                if 4096 not in by_c
                else round(by_c[4096]["timeouts"] / max(1, by_c[4096]["requests"]), 4)
            ),
            "storm_other_status": sum(r["other_status"] for r in rows),
            "storm_connect_errors": sum(r["connect_errors"] for r in rows),
            "leak": {"before": leak_before, "after": leak_after},
            "rows": rows,
            "peer_rows": peer_rows,
        }
    )
    for key in ("storm256_ratio", "storm1024_ratio", "storm4096_ratio"):
        value = result[key]
        if value is not None and value > 1.25:
            print(
                f"note: {key} = {value}: more connections than the 16-64 rows kept larger"
                " batches going (a storm row above 1 is possible; far above, check the rows)",
                file=sys.stderr,
            )
    return result


def _row_line(who: str, r: dict[str, Any]) -> str:
    statuses = " ".join(f"{s}:{v:g}" for s, v in r["per_s_by_status"].items())
    cpu = "-" if r["server_cpu"] is None else f"{r['server_cpu']:.2f}"
    if r.get("cpu_with_workers") is not None:
        cpu += f" (with workers {r['cpu_with_workers']:.2f})"
    prio = f" ok by priority {r['ok_by_priority']}" if r["ok_by_priority"] else ""
    return (
        f"{who:5} {r['connections']:>5} conns  {r['ok_per_s']:>7.1f} ok/s  "
        f"p50 {r['p50_ms']:>7.1f}  p99 {r['p99_ms']:>7.1f} ms  [{statuses}]  "
        f"conn-err {r['connect_errors']}  timeouts {r['timeouts']}  cpu {cpu}{prio}"
    )


def table(result: dict[str, Any]) -> str:
    lines = [
        f"storm: dtesn-trio serve defaults vs FastAPI peer; deadline_ms={result['deadline_ms']};"
        f" wrk -t1, {result['seconds']:g} s a row; wrk and the servers share "
        f"{result['env']['cores']} cores (load {result['env']['loadavg_1m']} at start)",
        "",
        "who   conns      ok/s        p50       p99     statuses per s",
    ]
    lines += [_row_line("ours", r) for r in result["rows"]]
    lines += [_row_line("peer", r) for r in result["peer_rows"]]
    lines += [
        "",
        f"one client: p50 {result['c1_p50_ms']} ms vs floor {result['c1_floor_ms']} ms "
        f"(engine {result['engine_single_ms']} + healthz {result['healthz_p50_ms']}):"
        f" ratio {result['c1_ratio']} (target <= 2)",
        f"four clients: {result['c4_ok_per_s']} ok/s vs peer {result['c4_peer_ok_per_s']}:"
        f" {result['c4_vs_peer']}x (target >= 2)",
        f"storm: best {result['best_ok_per_s']} ok/s at 16-64; 256: {result['storm256_ratio']},"
        f" 1024: {result['storm1024_ratio']} (>= 0.8), 4096: {result['storm4096_ratio']}"
        f" (>= 0.7); worst p99 at 256-1024 {result['storm_p99_ms']} ms"
        f" (<= {1.5 * result['deadline_ms'] if result['deadline_ms'] > 0 else 3750:g}:"
        " 1.5 x the deadline, or of server.default_deadline_ms without one);"
        f" p99 at 4096 {result['storm4096_p99_ms']} ms; time-outs at 4096:"
        f" {result['storm_timeouts']}; other statuses {result['storm_other_status']};"
        f" connect errors {result['storm_connect_errors']}",
        f"leak: {result['leak']}",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="4 s a row (under 60 s)")
    parser.add_argument("--seconds", type=float, default=10.0, help="seconds a row")
    parser.add_argument("--connections", default=",".join(map(str, CONNECTIONS)))
    parser.add_argument("--deadline-ms", type=int, default=1000)
    parser.add_argument("--no-deadline", action="store_true", help="send no deadline_ms")
    parser.add_argument("--priorities", choices=("2", "mix"), default="2")
    parser.add_argument("--timeout", type=float, default=5.0, help="wrk's client timeout, s")
    parser.add_argument("--skip-peer", action="store_true")
    parser.add_argument(
        "--set", action="append", default=[], help="a server setting (not the defaults!)"
    )
    args = parser.parse_args()
    result = trio.run(bench, args)
    print(json.dumps(result) if args.json else table(result))


if __name__ == "__main__":
    main()
