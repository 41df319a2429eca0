"""The soak runner's HTTP client vs httpx, against the same hello-world server, same run.

Both clients run the same closed loop (100 concurrent requests, ``POST /v1/process`` with a
small JSON body) under Trio in this process, against a hypercorn Trio-worker hello-world
server started as a subprocess on a free port (killed by PID at the end). The soak client
is measured through the soak runner's own load path (target → load generator → recorder),
so the figure is what ``dtesn-trio soak`` can drive. Rounds alternate between the two
clients so that noise on this shared machine hits both alike; the best round of each is
reported.

    python benchmarks/client.py [--quick] [--json]

Keys: soak_client_per_s, httpx_per_s, ratio, soak_client_cpu_ms_per_req,
httpx_cpu_ms_per_req. Target: ratio >= 2.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
# benchmarks/queue.py shares its name with the stdlib's ``queue``: take this folder off
# the path (or trio's ``import queue`` finds that script) and put the repository first.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "benchmarks"]
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "benchmarks"))

import trio  # noqa: E402
from _deps import require  # noqa: E402

CONCURRENCY = 100
BODY = {"input": "hello world, hello trio", "priority": 2}


# -- the server (runs in the subprocess) ------------------------------------------------

_HELLO = b'{"result":"hello"}'


async def hello_app(scope: Any, receive: Any, send: Any) -> None:
    """The smallest ASGI app: drain the body, answer a fixed JSON."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            else:
                await send({"type": "lifespan.shutdown.complete"})
                return
    while (await receive()).get("more_body"):
        pass
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(_HELLO)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": _HELLO})


def serve_forever() -> None:
    """Serve the hello app on 127.0.0.1:0 and print the bound URL on stdout."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.accesslog = None
    config.errorlog = None
    config.keep_alive_timeout = 60

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            binds = await nursery.start(serve, hello_app, config)
            print(binds[0], flush=True)

    trio.run(main)


class ServerProcess:
    """The hello-world server in a subprocess; stopped by PID."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--serve"],
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"hello server did not start (said {line!r})")
        self.url = line

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


# -- the two clients --------------------------------------------------------------------


async def run_soak_client(url: str, seconds: float) -> tuple[int, float, float]:
    """Closed loop through the soak runner's target, load generator and recorder."""
    from dtesn_trio.soak.loadgen import LoadConfig, run_load
    from dtesn_trio.soak.recorder import Recorder
    from dtesn_trio.soak.targets import open_http_target

    load = LoadConfig(duration=seconds, concurrency=CONCURRENCY, input_size=_input_size())
    recorder = Recorder()
    async with open_http_target(url) as target:
        cpu0, t0 = time.process_time(), time.perf_counter()
        await run_load(load, target, recorder)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if recorder.ok != recorder.sent:
        raise RuntimeError(f"soak client: {recorder.sent - recorder.ok} requests failed")
    return recorder.ok, wall, cpu


def _input_size() -> Any:
    from dtesn_trio.soak.loadgen import InputSizes

    return InputSizes("fixed", (len(BODY["input"]),))  # type: ignore[index,arg-type]


async def run_httpx(url: str, seconds: float) -> tuple[int, float, float]:
    """The same closed loop with one shared httpx.AsyncClient (100 connections)."""
    import httpx

    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    done = 0
    failed = 0
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await client.post("/v1/process", json=BODY)  # connect once before timing
        cpu0, t0 = time.process_time(), time.perf_counter()
        end = trio.current_time() + seconds

        async def worker() -> None:
            nonlocal done, failed
            while trio.current_time() < end:
                response = await client.post("/v1/process", json=BODY)
                if response.status_code == 200:
                    done += 1
                else:
                    failed += 1

        async with trio.open_nursery() as nursery:
            for _ in range(CONCURRENCY):
                nursery.start_soon(worker)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
    if failed:
        raise RuntimeError(f"httpx: {failed} requests failed")
    return done, wall, cpu


def measure(seconds: float, rounds: int) -> dict[str, Any]:
    server = ServerProcess()
    try:
        best: dict[str, tuple[float, float]] = {}
        for _ in range(rounds):
            for name, fn in (("soak", run_soak_client), ("httpx", run_httpx)):
                n, wall, cpu = trio.run(fn, server.url, seconds)
                per_s, cpu_ms = n / wall, cpu * 1000.0 / max(n, 1)
                if name not in best or per_s > best[name][0]:
                    best[name] = (per_s, cpu_ms)
    finally:
        server.stop()
    soak_per_s, soak_cpu = best["soak"]
    httpx_per_s, httpx_cpu = best["httpx"]
    return {
        "soak_client_per_s": round(soak_per_s, 1),
        "httpx_per_s": round(httpx_per_s, 1),
        "ratio": round(soak_per_s / httpx_per_s, 3),
        "soak_client_cpu_ms_per_req": round(soak_cpu, 4),
        "httpx_cpu_ms_per_req": round(httpx_cpu, 4),
        "concurrency": CONCURRENCY,
        "seconds_per_round": seconds,
        "rounds": rounds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="short rounds (< 45 s in all)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    require("httpx")
    if args.serve:
        serve_forever()
        return
    seconds, rounds = (4.0, 2) if args.quick else (10.0, 3)
    result = measure(seconds, rounds)
    if args.json:
        print(json.dumps(result))
        return
    print(f"closed loop, {CONCURRENCY} concurrent, best of {rounds} × {seconds:g} s rounds")
    print(f"{'client':<14}{'req/s':>10}{'CPU ms/req':>12}")
    print(
        f"{'soak client':<14}{result['soak_client_per_s']:>10.1f}{result['soak_client_cpu_ms_per_req']:>12.3f}"
    )
    print(f"{'httpx':<14}{result['httpx_per_s']:>10.1f}{result['httpx_cpu_ms_per_req']:>12.3f}")
    print(f"ratio (soak / httpx): {result['ratio']:.2f}  (target >= 2)")


if __name__ == "__main__":
    main()
