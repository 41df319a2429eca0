"""One soak run: the load, the sampler and the progress display under one nursery."""

from __future__ import annotations

import datetime as _dt
import resource
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from dtesn_trio.soak.loadgen import LoadConfig, run_load
from dtesn_trio.soak.recorder import LoadResult, Recorder, RecorderStatistics
from dtesn_trio.soak.report import SLO, build_report
from dtesn_trio.soak.sampler import Sampler
from dtesn_trio.soak.targets import SoakTarget

__all__ = ["ProgressDisplay", "SoakRun", "cpu_seconds", "run_soak"]


class ProgressDisplay(Protocol):
    """Shows live statistics until cancelled (`LiveProgress` on a terminal)."""

    async def run(self, statistics: Callable[[float], RecorderStatistics]) -> None:
        """Show ``statistics(trio.current_time())`` periodically until cancelled."""
        ...


def cpu_seconds() -> float:
    """User + system CPU of this process (all its threads) so far."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


@dataclass
class SoakRun:
    """What one run measured, ready for `SoakRun.report`."""

    load: LoadConfig
    target: dict[str, Any]
    result: LoadResult
    samples: list[dict[str, Any]]
    client: dict[str, Any]
    started_at: str
    interrupted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def report(self, slo: SLO | None = None) -> dict[str, Any]:
        """The JSON report of this run, with the SLO verdict."""
        report = build_report(
            self.result,
            target=self.target,
            load=self.load.describe(),
            samples=self.samples,
            client=self.client,
            slo=slo,
            started_at=self.started_at,
            interrupted=self.interrupted,
        )
        report.update(self.extra)
        return report


def client_figures(cpu: float, sent: int, target: SoakTarget) -> dict[str, Any]:
    """The client's own cost: CPU seconds, CPU per request, connection counts."""
    figures: dict[str, Any] = {
        "cpu_s": round(cpu, 4),
        "cpu_ms_per_request": round(cpu * 1000.0 / sent, 4) if sent else None,
    }
    if target.kind == "embedded":
        figures["note"] = "embedded target: the CPU includes the runtime itself"
    client = getattr(target, "client", None)
    if client is not None:
        s = client.statistics()
        figures["connections"] = {
            "opened": s.connects,
            "stale_replaced": s.stale_replaced,
            "retries": s.retries,
        }
    return figures


async def run_soak(
    target: SoakTarget,
    load: LoadConfig,
    *,
    sample_interval: float | None = 1.0,
    progress: ProgressDisplay | None = None,
    interrupt: trio.Event | None = None,
    recorder: Recorder | None = None,
) -> SoakRun:
    """Drive ``target`` with ``load``, sampling it and showing progress; return the run.

    Setting ``interrupt`` stops the load at once: requests in flight are abandoned and
    counted as unfinished, and the run is returned marked ``interrupted``.
    ``sample_interval=None`` turns sampling of the target off.
    """
    recorder = recorder or Recorder(bucket=load.bucket)
    sampler = Sampler(target, interval=sample_interval or 1.0)
    started_at = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    load_scope = trio.CancelScope()
    load_done = trio.Event()
    interrupted = False
    cpu0 = cpu_seconds()

    async def load_task(*, task_status: trio.TaskStatus[float] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            with load_scope:
                await run_load(load, target, recorder, task_status=task_status)
        finally:
            load_done.set()

    async def watch_interrupt(event: trio.Event) -> None:
        nonlocal interrupted
        await event.wait()
        interrupted = True
        load_scope.cancel()

    async with trio.open_nursery() as nursery:
        t0 = await nursery.start(load_task)
        sampling = trio.CancelScope()

        async def sample_periodically() -> None:
            with sampling:
                await sampler.run(t0)

        if sample_interval is not None:
            nursery.start_soon(sample_periodically)
        if progress is not None:
            nursery.start_soon(progress.run, recorder.statistics)
        if interrupt is not None:
            nursery.start_soon(watch_interrupt, interrupt)
        await load_done.wait()
        cpu = cpu_seconds() - cpu0
        sampling.cancel()
        # One last look at the target as the load ends, unless one was just taken.
        now = round(trio.current_time() - t0, 3)
        if sample_interval is not None and (not sampler.samples or sampler.samples[-1]["t"] < now):
            with trio.move_on_after(sample_interval):
                await sampler.take(t0)
        nursery.cancel_scope.cancel()
    result = recorder.result()
    return SoakRun(
        load=load,
        target=target.describe(),
        result=result,
        samples=sampler.samples,
        client=client_figures(cpu, result.sent, target),
        started_at=started_at,
        interrupted=interrupted,
    )


async def soak_url(
    url: str,
    load: LoadConfig,
    *,
    api_key: str | None = None,
    slo: SLO | None = None,
    sample_interval: float | None = 1.0,
) -> dict[str, Any]:
    """Soak the server at ``url`` with ``load`` and return the report (a dict, as in
    report.json). For benchmarks and scripts; raises `TargetUnreachable`.

    Open loop (``load.rate``): ``load.concurrency`` caps the connections, if set.
    """
    from dtesn_trio.soak.targets import open_http_target

    max_connections = load.concurrency if load.rate is not None else None
    async with open_http_target(url, api_key=api_key, max_connections=max_connections) as target:
        run = await run_soak(target, load, sample_interval=sample_interval)
    return run.report(slo)
