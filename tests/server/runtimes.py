"""The runtime the server tests run against: the real one, with a tiny model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import Runtime, open_runtime

TINY_MODEL = DTESNConfig(reservoir_size=64, membrane_depth=2)


def runtime_config(
    tmp_path: Path, *, shutdown_grace: float = 2.0, **sections: Any
) -> RuntimeConfig:
    sections.setdefault("model", TINY_MODEL)
    sections.setdefault("jobs", JobsConfig(sqlite_path=str(tmp_path / "jobs.db")))
    # The tests send bursts of hundreds of requests: no rate limit, short batch waits.
    sections.setdefault(
        "admission", AdmissionConfig(max_requests_per_second=1e6, burst_limit=100_000)
    )
    sections.setdefault("queue", BatchQueueConfig(max_wait=0.005))
    return RuntimeConfig(shutdown_grace=shutdown_grace, **sections)


@asynccontextmanager
async def open_test_runtime(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Runtime]:
    async with open_runtime(runtime_config(tmp_path, **kwargs)) as rt:
        yield rt
