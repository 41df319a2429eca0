"""The engine raising for one input in ten, through the real runtime and server.

The fault is injected honestly: ``PoisonModel`` is a real ``DTESNModel`` subclass that
raises (as a diverging reservoir or a LAPACK error would) for any input containing
``POISON``; everything else -- admission, breaker, queue, batching, the HTTP layer -- is
the production code.  What must hold: only the poisoned requests fail, each with
``500 engine_error`` and no internals; their batch neighbours succeed; the job of a
poisoned input fails once, with the same error; and the engine breaker does what its
config says (stays closed at 10 % failures under the default 50 % threshold; opens,
refuses fast, half-opens and closes again under a 5 % threshold).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.dtesn import Checkpoint, DTESNModel, DTESNResult
from dtesn_trio.limits import AdmissionConfig, CircuitBreakerConfig
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import Runtime, open_runtime
from tests.server.harness import served
from tests.server.runtimes import runtime_config

POISON = b"poison"
SECRET = "reservoir state diverged at step"  # the model's words: must not reach clients


def _none() -> None:
    return None


class PoisonModel(DTESNModel):
    """A real model that fails on poisoned inputs and records the batches it saw."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._lock = threading.Lock()
        self.poisoned_batch_sizes: list[int] = []

    def _check(self, inputs: Sequence[object]) -> None:
        encs = [self._encode(x) for x in inputs]
        if any(e.text is not None and POISON in e.text for e in encs):
            with self._lock:
                self.poisoned_batch_sizes.append(len(encs))
            raise FloatingPointError(f"{SECRET} 17 (injected fault)")

    def process_one(self, x: object, *, checkpoint: Checkpoint = _none) -> DTESNResult:
        self._check([x])
        return super().process_one(x, checkpoint=checkpoint)

    def process_batch(
        self, inputs: Sequence[object], *, checkpoint: Checkpoint = _none
    ) -> list[DTESNResult]:
        self._check(inputs)
        return super().process_batch(inputs, checkpoint=checkpoint)


def _config(tmp_path: Path, breaker: CircuitBreakerConfig | None = None) -> Any:
    admission = AdmissionConfig(
        max_requests_per_second=1e6,
        burst_limit=100_000,
        breaker=breaker or CircuitBreakerConfig(),
    )
    # Batches of up to 10, formed over 20 ms: poisoned inputs share batches.
    queue = BatchQueueConfig(max_batch_size=10, max_wait=0.02)
    return runtime_config(tmp_path, admission=admission, queue=queue)


def _inputs(n: int) -> list[str]:
    """n inputs, every tenth poisoned; all distinct (no cache hits)."""
    return [f"{'poison' if i % 10 == 3 else 'clean'} input {i}" for i in range(n)]


def _error(response: httpx.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}, body
    error: dict[str, Any] = body["error"]
    return error


async def _post_all(client: httpx.AsyncClient, inputs: list[str]) -> list[httpx.Response]:
    out: list[httpx.Response | None] = [None] * len(inputs)

    async def one(i: int) -> None:
        out[i] = await client.post("/v1/process", json={"input": inputs[i]})

    async with trio.open_nursery() as nursery:
        for i in range(len(inputs)):
            nursery.start_soon(one, i)
    return [r for r in out if r is not None]


async def test_one_in_ten_poisoned_fails_alone_with_engine_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, "dtesn_trio.runtime")
    config = _config(tmp_path)
    model = PoisonModel(config.model)
    inputs = _inputs(100)
    with trio.fail_after(60):
        async with open_runtime(config, model=model) as rt:
            async with served(rt) as s:
                responses = await _post_all(s.client, inputs)
                batch = await s.client.post(
                    "/v1/process/batch", json={"inputs": ["ok a", "a poison b", "ok c"]}
                )
            stats = rt.admission.statistics().breaker
    for text, r in zip(inputs, responses, strict=True):
        if "poison" in text:
            assert r.status_code == 500, r.text
            error = _error(r)
            assert error["code"] == "engine_error"
            assert "server's log" in error["message"]
            assert SECRET not in r.text
            assert "FloatingPoint" not in r.text
        else:
            assert r.status_code == 200, (text, r.text)
            assert r.json()["result"]["steps"] == len(text)
    # The test can fail: poisoned inputs did share batches with clean ones.
    assert max(model.poisoned_batch_sizes) > 1
    items = batch.json()["results"]
    assert [i["status"] for i in items] == [200, 500, 200]
    assert items[1]["error"]["code"] == "engine_error"
    # Default breaker (50 % over 100 calls): 10 % failures leave it closed.
    assert stats.state.value == "closed"
    assert stats.failed_calls_total == 11
    # The cause is in the log, with its traceback, once per failed input.
    failures = [r for r in caplog.records if r.name == "dtesn_trio.runtime"]
    assert len(failures) == 11
    assert all(r.exc_info is not None for r in failures)
    assert SECRET in caplog.text


async def test_poisoned_job_fails_once_with_engine_error(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with trio.fail_after(60):
        async with open_runtime(config, model=PoisonModel(config.model)) as rt:
            assert rt.jobs is not None
            bad = await rt.jobs.submit({"input": "a poison job", "priority": 2})
            good = await rt.jobs.submit({"input": "a clean job", "priority": 2})
            while True:
                records = [await rt.jobs.get(bad.id), await rt.jobs.get(good.id)]
                if all(r is not None and r.status in ("succeeded", "failed") for r in records):
                    break
                await trio.sleep(0.01)
    bad_rec, good_rec = records
    assert bad_rec is not None
    assert good_rec is not None
    assert (bad_rec.status, bad_rec.attempts) == ("failed", 1)
    assert bad_rec.error is not None
    assert bad_rec.error["code"] == "engine_error"
    assert (good_rec.status, good_rec.attempts) == ("succeeded", 1)


async def _breaker_state(rt: Runtime) -> str:
    await trio.lowlevel.checkpoint()
    return str(rt.admission.statistics().breaker.state.value)


async def test_strict_breaker_opens_refuses_fast_then_closes(tmp_path: Path) -> None:
    breaker = CircuitBreakerConfig(
        sliding_window_size=10,
        minimum_calls=10,
        failure_rate_threshold=5.0,
        wait_in_open=2.0,  # long enough that a loaded machine still sees it open
        permitted_calls_in_half_open=2,
    )
    config = _config(tmp_path, breaker)
    inputs = _inputs(10)  # one poisoned: 10 % > 5 %
    with trio.fail_after(60):
        async with open_runtime(config, model=PoisonModel(config.model)) as rt, served(rt) as s:
            statuses = []
            for text in inputs:  # one at a time: the window fills in order
                statuses.append(await s.client.post("/v1/process", json={"input": text}))
            assert [r.status_code for r in statuses].count(500) == 1
            assert await _breaker_state(rt) == "open"
            engine_calls = rt.processor.statistics().total_requests
            refused = await s.client.post("/v1/process", json={"input": "clean, refused"})
            assert refused.status_code == 503
            assert _error(refused)["code"] == "circuit_open"
            assert 1 <= int(refused.headers["retry-after"]) <= 2  # ceil(wait_in_open left)
            # refused at admission: the engine never saw it
            assert rt.processor.statistics().total_requests == engine_calls
            await trio.sleep(2.0)  # wait_in_open
            trials = [
                await s.client.post("/v1/process", json={"input": f"trial {i}"}) for i in range(2)
            ]
            assert [r.status_code for r in trials] == [200, 200]
            assert await _breaker_state(rt) == "closed"


async def test_a_model_must_match_the_config(tmp_path: Path) -> None:
    config = _config(tmp_path)
    other = DTESNModel(dataclasses.replace(config.model, reservoir_size=32))
    with pytest.raises(ValueError, match=r"model\.config must equal config\.model"):
        async with open_runtime(config, model=other):
            pass  # pragma: no cover
