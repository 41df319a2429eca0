"""``DTESNProcessor``: the seed's processor API over the DTESN engine and the executor.

It is :class:`~dtesn_trio.dtesn.engine.DTESNEngine` (what to compute) run by an
:class:`~dtesn_trio.executor.Executor` (where and how many at once), with the seed's
calls: ``process(input, membrane_depth=..., use_batching=..., enable_concurrent=...)``,
``process_batch(inputs)``, ``start_async_resources()``, ``get_processing_stats()``.
The runtime uses the engine and an executor directly; this class is for code written
against the seed.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import trio

from dtesn_trio.dtesn.config import DTESNConfig
from dtesn_trio.dtesn.engine import DTESNEngine, DTESNItem
from dtesn_trio.dtesn.model import DTESNModel, DTESNResult
from dtesn_trio.errors import InvalidRequest
from dtesn_trio.executor import Executor, ExecutorStatistics, ProcessorConfig, with_overrides

__all__ = ["DTESNProcessor", "ProcessorConfig", "ProcessorStatistics"]

StatsProvider = Callable[[], Mapping[str, Any]]


@dataclass(frozen=True)
class ProcessorStatistics(ExecutorStatistics):
    """The executor's snapshot and the depths with a built model."""

    model_depths: tuple[int, ...] = ()


class DTESNProcessor:
    """Owns the DTESN engine and runs it off the event loop.

    ``DTESNProcessor(model_or_config, config)``, or with the seed's keywords
    ``DTESNProcessor(max_concurrent_processes=100, enable_async_optimization=True)``
    (they override ``config``).  A :class:`DTESNModel` is used as given; a
    :class:`DTESNConfig` (or nothing: the defaults) is built on first use in a worker
    thread -- ``await start_async_resources()`` builds it ahead of time.  With
    ``executor="process"`` it computes inside ``async with processor.open():``.

    The optional ``*_stats`` callables fill the nested dicts of
    :meth:`get_processing_stats`.
    """

    def __init__(
        self,
        model_or_config: DTESNModel | DTESNConfig | None = None,
        config: ProcessorConfig | None = None,
        *,
        max_concurrent_processes: int | None = None,
        enable_async_optimization: bool | None = None,
        blas_threads: int | None = None,
        worker_threads: int | None = None,
        concurrency_stats: StatsProvider | None = None,
        connection_pool_stats: StatsProvider | None = None,
        queue_stats: StatsProvider | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = with_overrides(
            config if config is not None else ProcessorConfig(),
            max_concurrent_processes=max_concurrent_processes,
            enable_async_optimization=enable_async_optimization,
            blas_threads=blas_threads,
            worker_threads=worker_threads,
        )
        self.engine = DTESNEngine(model_or_config)
        self.model_config = self.engine.config
        self.executor = Executor(self.engine, self.config, clock=clock)
        self._providers = {
            "concurrency_stats": concurrency_stats,
            "connection_pool_stats": connection_pool_stats,
            "queue_stats": queue_stats,
        }

    @property
    def max_concurrent_processes(self) -> int:
        return self.executor.max_concurrent_processes

    @max_concurrent_processes.setter
    def max_concurrent_processes(self, value: int) -> None:
        self.executor.max_concurrent_processes = value

    @property
    def model(self) -> DTESNModel:
        """The model at the configured depth (built here, synchronously, if not yet)."""
        return self.engine.model

    def cache_key(self, membrane_depth: int | None = None) -> str:
        """The model key for a result cache: config (at that depth) and readout."""
        return self.engine.model_key(membrane_depth)

    @asynccontextmanager
    async def open(self) -> AsyncIterator[DTESNProcessor]:
        """Run the executor for the block (``executor="process"``: its worker processes,
        each holding the model built before the block begins)."""
        await self.start_async_resources()
        async with self.executor.open():
            yield self

    async def start_async_resources(self) -> None:
        """Build the default model in a worker thread (the seed's start-up hook)."""
        await trio.to_thread.run_sync(lambda: self.engine.model)

    async def stop_async_resources(self) -> None:
        """Nothing to release (threads belong to Trio's cache); kept for the seed."""
        await trio.lowlevel.checkpoint()

    async def process(
        self,
        input_data: object,
        *,
        membrane_depth: int | None = None,
        use_batching: bool = False,
        enable_concurrent: bool = True,
    ) -> DTESNResult:
        """Process one input on the model's single-input path.

        ``use_batching`` and ``enable_concurrent`` are the seed's keywords, accepted and
        without effect here: batching across callers is the runtime's queue, and the
        executor's limits decide concurrency.  Raises :class:`InvalidRequest` for bad
        input.
        """
        items = self._decode([input_data], "input", membrane_depth)
        (result,) = await self.executor.run(items, method="process_single", batch=False)
        assert isinstance(result, DTESNResult)
        return result

    async def process_batch(
        self, inputs: Sequence[object], *, membrane_depth: int | None = None
    ) -> list[DTESNResult]:
        """Process a batch as one set of matrix products per step (one worker).

        A bad input raises :class:`InvalidRequest` naming ``inputs[i]``; nothing runs.
        """
        if isinstance(inputs, str | bytes | bytearray):
            raise InvalidRequest("inputs must be a list of inputs", field="inputs")
        items = self._decode(list(inputs), None, membrane_depth)
        return list(await self.executor.run(items))

    def _decode(
        self, inputs: list[object], field: str | None, depth: int | None
    ) -> list[DTESNItem]:
        try:
            return [
                self.engine.decode_as(x, field or f"inputs[{i}]", depth)
                for i, x in enumerate(inputs)
            ]
        except InvalidRequest:
            self.executor.count_refused(len(inputs))
            raise

    def statistics(self) -> ProcessorStatistics:
        """A frozen snapshot; ``throughput`` is over the last ``throughput_window``."""
        st = self.executor.statistics()
        fields = {f.name: getattr(st, f.name) for f in dataclasses.fields(st)}
        return ProcessorStatistics(**fields, model_depths=self.engine.statistics().model_depths)

    def get_processing_stats(self) -> dict[str, Any]:
        """The seed's stats dict, built from :meth:`statistics`."""
        out = self.executor.get_processing_stats()
        for key, provider in self._providers.items():
            out[key] = dict(provider()) if provider is not None else {}
        return out
