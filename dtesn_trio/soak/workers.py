"""``--workers N``: several load-generating processes for rates one process cannot drive.

The parent splits the load (rate / N each, the concurrency shared out, seed + i), starts
N worker processes (``python -m dtesn_trio soak --worker-spec JSON``), and starts them
all at the same wall-clock instant, so their per-second buckets line up. Each worker
streams JSON lines on stdout: ``{"ready"}``, then ``{"progress"}`` twice a second, then
one ``{"result"}`` (its `LoadResult` on the wire). The parent samples the target, shows
the combined progress, and merges the results. N Poisson streams at rate / N add up to a
Poisson stream at the full rate; constant streams are phase-shifted by 1 / rate each so
they interleave instead of arriving in bursts of N.

Workers run in their own session (a terminal's Ctrl-C reaches only the parent), and the
parent forwards an interrupt as SIGTERM; a worker answers it with its partial result.
The API key travels in the environment, not on the command line.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import trio

from dtesn_trio.soak.loadgen import InputSizes, LoadConfig, PriorityMix
from dtesn_trio.soak.recorder import LoadResult, RecorderStatistics
from dtesn_trio.soak.runner import ProgressDisplay, SoakRun, cpu_seconds, run_soak
from dtesn_trio.soak.sampler import Sampler
from dtesn_trio.soak.targets import TargetUnreachable, open_http_target

__all__ = ["load_from_spec", "load_to_spec", "run_workers", "split_load", "worker_main"]

_START_DELAY = 0.3  # seconds between "go" and the common start, for every worker to wake


def load_to_spec(load: LoadConfig) -> dict[str, Any]:
    """A LoadConfig as JSON values (inverse: `load_from_spec`)."""
    spec = dataclasses.asdict(load)
    spec["priority_mix"] = str(load.priority_mix)
    spec["input_size"] = str(load.input_size)
    return spec


def load_from_spec(spec: Mapping[str, Any]) -> LoadConfig:
    """Inverse of `load_to_spec`."""
    fields = dict(spec)
    fields["priority_mix"] = PriorityMix.parse(fields["priority_mix"])
    fields["input_size"] = InputSizes.parse(fields["input_size"])
    return LoadConfig(**fields)


def split_load(load: LoadConfig, n: int) -> list[tuple[LoadConfig, float]]:
    """N loads that add up to ``load``, each with its start offset in seconds."""
    if n < 1:
        raise ValueError(f"workers must be >= 1 (got {n})")
    concurrency: list[int | None] = [None] * n
    if load.concurrency is not None:
        if load.concurrency < n:
            raise ValueError(
                f"workers must be <= concurrency (got {n} workers for {load.concurrency})"
            )
        base, extra = divmod(load.concurrency, n)
        concurrency = [base + (1 if i < extra else 0) for i in range(n)]
    parts = []
    for i in range(n):
        rate = load.rate / n if load.rate is not None else None
        offset = i / load.rate if load.rate is not None and load.arrivals == "constant" else 0.0
        part = dataclasses.replace(load, rate=rate, concurrency=concurrency[i], seed=load.seed + i)
        parts.append((part, offset))
    return parts


def _emit(obj: Mapping[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _stats_to_json(s: RecorderStatistics) -> dict[str, Any]:
    return dataclasses.asdict(s)


class _JSONProgress:
    """A worker's progress: one JSON line on stdout every ``interval``."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval

    async def run(self, statistics: Callable[[float], RecorderStatistics]) -> None:
        while True:
            await trio.sleep(self.interval)
            _emit({"progress": _stats_to_json(statistics(trio.current_time()))})


async def worker_main(spec: Mapping[str, Any]) -> int:
    """The worker process: wait for "go", run its share, print its result. Returns the
    exit status (2 when the target is unreachable)."""
    load = load_from_spec(spec["load"])
    api_key = os.environ.get("DTESN_API_KEY")
    max_connections = load.concurrency if load.rate is not None else None
    run: SoakRun | None = None
    unreachable: list[str] = []
    try:
        async with open_http_target(
            spec["url"], api_key=api_key, max_connections=max_connections
        ) as target:
            interrupt = trio.Event()
            async with trio.open_nursery() as nursery:

                async def on_signal(
                    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                ) -> None:
                    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                        task_status.started()
                        async for _ in signals:
                            interrupt.set()

                await nursery.start(on_signal)
                _emit({"ready": True})
                line = await trio.to_thread.run_sync(sys.stdin.readline)
                if line.startswith("go "):  # else the parent went away
                    await trio.sleep(max(0.0, float(line.split()[1]) - time.time()))
                    run = await run_soak(
                        target,
                        load,
                        sample_interval=None,
                        progress=_JSONProgress(),
                        interrupt=interrupt,
                    )
                nursery.cancel_scope.cancel()
    except* TargetUnreachable as group:
        unreachable = [str(e) for e in group.exceptions]
    if unreachable:
        _emit({"error": unreachable[0]})
        return 2
    if run is None:
        return 1
    _emit(
        {
            "result": run.result.to_wire(),
            "client": run.client,
            "interrupted": run.interrupted,
        }
    )
    return 0


class _LineReader:
    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def readline(self) -> bytes:
        """The next line (without its newline); b"" at EOF."""
        while True:
            i = self._buf.find(b"\n")
            if i >= 0:
                line = bytes(self._buf[:i])
                del self._buf[: i + 1]
                return line
            data = await self._stream.receive_some(65536)
            if not data:
                line = bytes(self._buf)
                self._buf.clear()
                return line
            self._buf += data


def _combine(stats: list[dict[str, Any]], elapsed: float) -> RecorderStatistics:
    """The workers' progress as one record. Recent percentiles are the worst worker's
    (an upper bound on the combined p99, which would need the raw latencies)."""
    by_outcome: dict[str, int] = {}
    for s in stats:
        for k, n in s["by_outcome"].items():
            by_outcome[k] = by_outcome.get(k, 0) + n
    p50s = [s["recent_p50_ms"] for s in stats if s["recent_p50_ms"] is not None]
    p99s = [s["recent_p99_ms"] for s in stats if s["recent_p99_ms"] is not None]
    return RecorderStatistics(
        elapsed=elapsed,
        sent=sum(s["sent"] for s in stats),
        answered=sum(s["answered"] for s in stats),
        failed=sum(s["failed"] for s in stats),
        ok=sum(s["ok"] for s in stats),
        unfinished=sum(s["unfinished"] for s in stats),
        in_flight=sum(s["in_flight"] for s in stats),
        by_outcome=by_outcome,
        recent_p50_ms=max(p50s) if p50s else None,
        recent_p99_ms=max(p99s) if p99s else None,
        recent_rate=sum(s["recent_rate"] for s in stats),
    )


async def run_workers(
    url: str,
    load: LoadConfig,
    workers: int,
    *,
    api_key: str | None = None,
    sample_interval: float = 1.0,
    progress: ProgressDisplay | None = None,
    interrupt: trio.Event | None = None,
) -> SoakRun:
    """Run ``load`` against ``url`` from ``workers`` processes; return the merged run.

    Raises `TargetUnreachable` when the target (or a worker's connection to it) fails.
    """
    parts = split_load(load, workers)
    env = {**os.environ}
    if api_key is not None:
        env["DTESN_API_KEY"] = api_key
    started_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
    cpu0 = cpu_seconds()
    latest: list[dict[str, Any] | None] = [None] * workers
    finals: list[dict[str, Any] | None] = [None] * workers
    async with open_http_target(url, api_key=api_key, max_connections=1) as stats_target:
        sampler = Sampler(stats_target, interval=sample_interval)
        async with trio.open_nursery() as procs_nursery:
            procs: list[trio.Process] = []
            readers: list[_LineReader] = []
            for part, _offset in parts:
                spec = {"url": url, "load": load_to_spec(part)}
                cmd = [
                    sys.executable,
                    "-m",
                    "dtesn_trio",
                    "soak",
                    "--worker-spec",
                    json.dumps(spec),
                ]
                proc: trio.Process = await procs_nursery.start(
                    partial(
                        trio.run_process,
                        cmd,
                        stdin=subprocess.PIPE,
                        stdout=subprocess.PIPE,
                        check=False,
                        start_new_session=True,
                        env=env,
                    )
                )
                assert proc.stdout is not None
                procs.append(proc)
                readers.append(_LineReader(proc.stdout))
            for i, reader in enumerate(readers):
                line = await reader.readline()
                msg = json.loads(line) if line else {"error": f"worker {i} exited at start"}
                if "error" in msg:
                    raise TargetUnreachable(msg["error"])
            go = time.time() + _START_DELAY
            t0 = trio.current_time() + _START_DELAY
            for proc, (_, offset) in zip(procs, parts, strict=True):
                assert proc.stdin is not None
                await proc.stdin.send_all(f"go {go + offset!r}\n".encode())

            async def read(i: int) -> None:
                while line := await readers[i].readline():
                    msg = json.loads(line)
                    if "progress" in msg:
                        latest[i] = msg["progress"]
                    elif "result" in msg:
                        finals[i] = msg

            def statistics(now: float) -> RecorderStatistics:
                return _combine([s for s in latest if s is not None], now - t0)

            async with trio.open_nursery() as nursery:
                side = trio.CancelScope()

                async def side_tasks() -> None:
                    with side:
                        async with trio.open_nursery() as n:
                            n.start_soon(sampler.run, t0)
                            if progress is not None:
                                await trio.sleep_until(t0)
                                n.start_soon(progress.run, statistics)

                async def forward_interrupt(event: trio.Event) -> None:
                    await event.wait()
                    for proc in procs:
                        if proc.returncode is None:
                            proc.send_signal(signal.SIGTERM)

                nursery.start_soon(side_tasks)
                if interrupt is not None:
                    nursery.start_soon(forward_interrupt, interrupt)
                async with trio.open_nursery() as reading:
                    for i in range(workers):
                        reading.start_soon(read, i)
                side.cancel()
                with trio.move_on_after(sample_interval):
                    await sampler.take(t0)
                nursery.cancel_scope.cancel()
    missing = [i for i, f in enumerate(finals) if f is None]
    if missing:
        raise RuntimeError(f"worker(s) {missing} ended without a result")
    results = [LoadResult.from_wire(f["result"]) for f in finals if f is not None]
    result = LoadResult.merge(results)
    cpu = sum(f["client"]["cpu_s"] for f in finals if f is not None)
    connections: dict[str, int] = {}
    for f in finals:
        assert f is not None
        for k, v in f["client"].get("connections", {}).items():
            connections[k] = connections.get(k, 0) + v
    client = {
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_request": round(cpu * 1000.0 / result.sent, 4) if result.sent else None,
        "workers": workers,
        "parent_cpu_s": round(cpu_seconds() - cpu0, 4),
        "connections": connections,
    }
    return SoakRun(
        load=load,
        target=stats_target.describe() | {"workers": workers},
        result=result,
        samples=sampler.samples,
        client=client,
        started_at=started_at,
        interrupted=any(f["interrupted"] for f in finals if f is not None),
    )
