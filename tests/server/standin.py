"""TEMPORARY stand-in for dtesn_trio.runtime (per RUNTIME_CONTRACT.md) until it lands."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from dtesn_trio.errors import DeadlineExceeded, DTESNError, ShuttingDown
from dtesn_trio.jobs import JobsConfig, SQLiteJobStore, open_job_service
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool


@dataclass(frozen=True)
class Outcome:
    result: dict[str, Any]
    cache_hit: bool
    priority: int
    batch_size: int
    timings: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "result": self.result,
            "cache_hit": self.cache_hit,
            "priority": self.priority,
            "batch_size": self.batch_size,
            "timings": self.timings,
        }


class StandIn:
    def __init__(self, nursery: trio.Nursery, shutdown_grace: float) -> None:
        self.config = SimpleNamespace(shutdown_grace=shutdown_grace)
        self.nursery = nursery
        self.jobs: Any = None
        self.ready = True
        self.shutting_down = False

    def begin_shutdown(self) -> None:
        self.shutting_down = True

    async def process(
        self,
        input: Any,
        *,
        priority: int = 2,
        deadline: float | None = None,
        membrane_depth: int | None = None,
        use_cache: bool = True,
    ) -> Outcome:
        await trio.lowlevel.checkpoint()
        if self.shutting_down:
            raise ShuttingDown("the runtime is stopping")
        if deadline is not None and trio.current_time() >= deadline:
            raise DeadlineExceeded("deadline passed")
        return Outcome(
            {"features": [float(len(input))], "steps": len(input)},
            False,
            priority,
            1,
            {"queued_ms": 0.0, "processing_ms": 0.1, "total_ms": 0.1},
        )

    async def process_batch(self, inputs: Sequence[Any], **kw: Any) -> list[Outcome | DTESNError]:
        kw.pop("use_cache", None)
        return [await self.process(i, **kw) for i in inputs]

    def get_stats(self) -> dict[str, Any]:
        return {
            "processing": {"total_requests": 0},
            "load": {},
            "queue": {},
            "pool": {},
            "loop": {"max_step_ms": 0.0},
        }

    def metrics_snapshot(self) -> dict[str, Any]:
        return {"queue_depth_p0": 0, "limiter_limit": 10, "loop_max_step_ms": 1.5}


@asynccontextmanager
async def open_standin(
    tmp_path: Path, *, shutdown_grace: float = 1.0, jobs: JobsConfig | None = None
) -> AsyncIterator[StandIn]:
    jobs = jobs or JobsConfig(sqlite_path=str(tmp_path / "jobs.db"))
    async with trio.open_nursery() as nursery:
        rt = StandIn(nursery, shutdown_grace)
        if jobs.enabled:
            pool_cfg = ConnectionPoolConfig(
                min_connections=1, max_connections=4, max_concurrent_creates=2
            )
            async with open_pool(SQLiteConnector(jobs.sqlite_path), pool_cfg) as pool:

                async def run(payload: dict[str, Any]) -> dict[str, Any]:
                    out = await rt.process(payload["input"], priority=payload["priority"])
                    return out.to_dict()

                async with open_job_service(SQLiteJobStore(pool), run, jobs) as svc:
                    rt.jobs = svc
                    yield rt
        else:
            yield rt
        nursery.cancel_scope.cancel()
