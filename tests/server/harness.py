"""Helpers for the server tests: a served app on port 0 and an httpx client for it.

``Faults`` wraps a runtime and, for inputs that start with ``"!"``, raises the named
error or holds the request at a gate -- so every error path of the HTTP layer can be
driven over a real socket while everything else goes to the runtime unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import trio

from dtesn_trio.errors import (
    BackendUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    DTESNError,
    Overloaded,
    RateLimited,
    ShuttingDown,
)
from dtesn_trio.server import ServerConfig, ServerInfo, serve

# `dtesn-trio serve` flags for a small, fast server whose limits stay out of the tests' way.
FAST_SERVE_FLAGS = [
    "--set",
    "model.reservoir_size=64",
    "--set",
    "model.membrane_depth=2",
    "--set",
    "admission.max_requests_per_second=1000000",
    "--set",
    "admission.burst_limit=100000",
    "--set",
    "queue.max_wait=0.005",
    "--set",
    "shutdown_grace=2",
]

ERRORS: dict[str, DTESNError] = {
    "rate_limited": RateLimited("rate limit hit", retry_after=2.5),
    "overloaded": Overloaded("queue full", retry_after=0.2),
    "circuit_open": CircuitOpen("engine breaker open", retry_after=7),
    "backend_unavailable": BackendUnavailable("redis down"),
    "deadline_exceeded": DeadlineExceeded("deadline passed"),
    "shutting_down": ShuttingDown("stopping"),
}


class Faults:
    """A runtime wrapper: ``"!error:<code>"`` raises, ``"!bug"`` raises a RuntimeError,
    ``"!hold"`` waits for ``release`` after processing, ``"!stuck"`` never returns."""

    def __init__(self, runtime: Any) -> None:
        self._runtime = runtime
        self.release = trio.Event()
        self.held = 0
        self.all_held = trio.Event()
        self.expect_held = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._runtime, name)

    async def _fault(self, value: Any) -> str | None:
        if not (isinstance(value, str) and value.startswith("!")):
            return None
        if value.startswith("!error:"):
            await trio.lowlevel.checkpoint()
            raise ERRORS[value.removeprefix("!error:")]
        if value == "!bug":
            await trio.lowlevel.checkpoint()
            raise RuntimeError("internal detail: password=hunter2")
        return value

    async def _hold(self, kind: str) -> None:
        self.held += 1
        if self.held == self.expect_held:
            self.all_held.set()
        if kind == "!stuck":
            await trio.sleep_forever()
        await self.release.wait()

    async def process(self, input: Any, **kwargs: Any) -> Any:
        kind = await self._fault(input)
        outcome = await self._runtime.process("held" if kind else input, **kwargs)
        if kind:
            await self._hold(kind)
        return outcome

    async def process_batch(self, inputs: Sequence[Any], **kwargs: Any) -> list[Any]:
        results: list[Any] = []
        plain = []
        for value in inputs:
            try:
                await self._fault(value)
            except DTESNError as exc:
                results.append(exc)
            else:
                results.append(None)
                plain.append(value)
        outcomes = iter(await self._runtime.process_batch(plain, **kwargs))
        return [next(outcomes) if r is None else r for r in results]


@dataclass
class Served:
    info: ServerInfo
    client: httpx.AsyncClient
    stop: trio.Event
    finished: trio.Event

    @property
    def state(self) -> Any:
        return self.info.app.state.dtesn


@asynccontextmanager
async def served(
    runtime: Any,
    config: ServerConfig | None = None,
    *,
    headers: dict[str, str] | None = None,
    limits: httpx.Limits | None = None,
) -> AsyncIterator[Served]:
    """Serve ``runtime`` on 127.0.0.1:0; leaving stops the server gracefully."""
    config = config or ServerConfig(port=0)
    async with trio.open_nursery() as nursery:
        stop = trio.Event()
        finished = trio.Event()

        async def run(*, task_status: trio.TaskStatus[ServerInfo]) -> None:
            try:
                await serve(runtime, config, shutdown_trigger=stop.wait, task_status=task_status)
            finally:
                finished.set()

        info: ServerInfo = await nursery.start(run)
        async with httpx.AsyncClient(
            base_url=info.url,
            headers=headers,
            limits=limits or httpx.Limits(max_connections=20),
            timeout=20.0,
        ) as client:
            yield Served(info, client, stop, finished)
        stop.set()


def partial_serve(runtime: Any, config: ServerConfig) -> Any:
    return partial(serve, runtime, config)
