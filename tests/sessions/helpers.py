"""Shared pieces of the session tests: a small trained model and a runtime over it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import numpy as np
import trio

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig, DTESNModel
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import BatchedOutcome, Runtime, open_runtime
from dtesn_trio.sessions import ModelSource, SessionsConfig

SMALL = DTESNConfig(reservoir_size=96, membrane_depth=3, seed=7)
NUMERIC = DTESNConfig(reservoir_size=80, membrane_depth=2, input_dim=3, seed=3)


def trained(config: DTESNConfig = SMALL, outputs: int = 2) -> DTESNModel:
    """A model with a fitted per-step readout (predictions to compare)."""
    model = DTESNModel(config)
    rng = np.random.default_rng(1)
    if config.input_dim == 1:
        inputs: list[Any] = ["the quick brown fox jumps over", "a lazy dog, twice or thrice"]
    else:
        inputs = [rng.normal(size=(30, config.input_dim)) for _ in range(2)]
    steps = [model.run_states(x).shape[0] for x in inputs]
    model.fit_readout(inputs, [rng.normal(size=(n, outputs)) for n in steps], mode="per_step")
    return model


def config(tmp_path: Path, model: DTESNConfig = SMALL, **sections: Any) -> RuntimeConfig:
    sections.setdefault("jobs", JobsConfig(sqlite_path=str(tmp_path / "jobs.db"), workers=0))
    sections.setdefault(
        "admission", AdmissionConfig(max_requests_per_second=1e6, burst_limit=100_000)
    )
    sections.setdefault("queue", BatchQueueConfig(max_batch_size=64))
    return RuntimeConfig(model=model, **sections)


@asynccontextmanager
async def session_runtime(
    tmp_path: Path,
    model: DTESNModel | None = None,
    *,
    models: ModelSource | None = None,
    **sections: Any,
) -> AsyncIterator[Runtime]:
    model = model if model is not None else trained()
    async with open_runtime(
        config(tmp_path, model.config, **sections), model=model, model_source=models
    ) as rt:
        yield rt


class DirectRuntime:
    """Runs each step at once on the event loop (no threads): virtual time stands still
    while a step computes, so the sweeper's times are exact under ``autojump_clock``.
    Only what the session manager asks of a runtime."""

    def __init__(self) -> None:
        self.submitted = 0

    async def submit_batched(
        self,
        item: Any,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        group: Hashable = None,
        priority: int = 2,
        deadline: float | None = None,
    ) -> BatchedOutcome:
        await trio.lowlevel.checkpoint()
        self.submitted += 1
        (output,) = run([item])
        return BatchedOutcome(output, 1, {})


def sessions_config(**kwargs: Any) -> SessionsConfig:
    return SessionsConfig(**kwargs)
