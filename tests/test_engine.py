"""The engine protocol: a user's engine through the runtime and the server, the contract
kit on both engines, and the errors a user meets (bad outputs, bad decode, bad
--engine, an engine that does not pickle)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import trio

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig, DTESNEngine
from dtesn_trio.engine import load_engine, resolve_engine
from dtesn_trio.errors import DeadlineExceeded, EngineError, InvalidRequest
from dtesn_trio.executor import ProcessorConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import ProcessOutcome, open_runtime
from dtesn_trio.server import ServerConfig
from dtesn_trio.testing import check_engine, check_engine_sync
from tests.server.harness import served

SMALL = DTESNConfig(reservoir_size=64, membrane_depth=2)


class Doubler:
    """The smallest engine: no optional member at all."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def decode(self, payload: Any) -> float:
        if not isinstance(payload, int | float):
            raise InvalidRequest("input must be a number", field="input")
        return float(payload)

    def process_batch(self, items: Sequence[float]) -> list[float]:
        self.batches.append(len(items))
        return [2 * x for x in items]

    def encode(self, output: float) -> float:
        return output


class Short(Doubler):
    def process_batch(self, items: Sequence[float]) -> list[float]:
        return super().process_batch(items)[1:]


class BrokenDecode(Doubler):
    def decode(self, payload: Any) -> float:
        raise KeyError("secret internals")


class Encoder(Doubler):
    """Records the thread ``encode`` runs in; cannot encode 13 (its output 26)."""

    def __init__(self) -> None:
        super().__init__()
        self.threads: set[str] = set()

    def encode(self, output: float) -> Any:
        self.threads.add(threading.current_thread().name)
        if output == 26:
            raise ValueError("no 26")
        return {"value": output}


class Unpicklable(Doubler):
    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()


def config(**sections: Any) -> RuntimeConfig:
    sections.setdefault("queue", BatchQueueConfig(max_wait=0.01))
    return RuntimeConfig(
        model=SMALL,
        admission=AdmissionConfig(max_requests_per_second=1e6, burst_limit=100_000),
        jobs=JobsConfig(enabled=False),
        **sections,
    )


async def test_a_plain_engine_is_batched_and_gets_no_cache_or_options() -> None:
    engine = Doubler()
    with trio.fail_after(30):
        async with open_runtime(config(), engine=engine) as rt:
            assert rt.cache is None  # no cache_key: no result cache
            answers = await rt.process_batch([1, 2, 3, 4.5])
            with pytest.raises(InvalidRequest) as bad:
                await rt.process("x")
            with pytest.raises(InvalidRequest) as option:
                await rt.process(1, membrane_depth=2)
    assert [a.result for a in answers if isinstance(a, ProcessOutcome)] == [2, 4, 6, 9]
    assert max(engine.batches) > 1  # the four concurrent inputs shared a batch
    assert bad.value.field == "input"
    assert option.value.field == "membrane_depth"
    assert "not an option" in option.value.message


class Costly(Doubler):
    """``cost(x) = x``; its first batch waits for ``gate``."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[list[float]] = []
        self.entered = threading.Event()
        self.gate = threading.Event()

    def cost(self, item: float) -> float:
        return item

    def process_batch(self, items: Sequence[float]) -> list[float]:
        self.calls.append(list(items))
        self.entered.set()
        self.gate.wait(10)
        return super().process_batch(items)


async def test_the_engine_cost_is_the_batch_budget() -> None:
    engine = Costly()
    queue = BatchQueueConfig(max_batch_size=10, workers=1, lifo_delay=None)
    with trio.fail_after(30):
        async with (
            open_runtime(config(queue=queue), engine=engine) as rt,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(rt.process, 0.5)
            await trio.to_thread.run_sync(engine.entered.wait, 10)
            for x in (6, 3, 4, 5, 0.2):
                nursery.start_soon(rt.process, x)
                await trio.testing.wait_all_tasks_blocked()
            engine.gate.set()
    # 0.5 and 0.2 count as one unit each; 4 does not fit beside 6 + 3 (10 units)
    assert engine.calls == [[0.5], [6, 3], [4, 5, 0.2]]


async def test_a_hung_engine_is_bounded_by_the_deadline() -> None:
    engine = Costly()  # its batch waits for the gate: hung, as far as the caller knows
    with trio.fail_after(30):
        async with open_runtime(config(), engine=engine) as rt:
            with pytest.raises(DeadlineExceeded, match="the deadline passed after"):
                await rt.process(1, deadline=trio.current_time() + 0.2)
            running = rt.statistics().queue.running_items
            engine.gate.set()  # let the worker thread finish before the runtime closes
    assert engine.calls == [[1.0]]
    assert running == 1  # the caller left; the batch it was in was not disturbed


async def test_wrong_output_count_is_an_engine_error_naming_the_engine() -> None:
    with trio.fail_after(30):
        async with open_runtime(config(), engine=Short()) as rt:
            answers = await rt.process_batch([1, 2, 3])
    assert all(isinstance(a, EngineError) for a in answers)
    with pytest.raises(
        EngineError, match=r"test_engine\.Short\.process_batch returned 0 outputs for 1 items"
    ):
        raise answers[0]  # type: ignore[misc]


async def test_encode_runs_in_the_worker_and_fails_only_its_own_input() -> None:
    engine = Encoder()
    with trio.fail_after(30):
        async with open_runtime(config(), engine=engine) as rt:
            answers = await rt.process_batch([1, 13, 2])
    assert threading.main_thread().name not in engine.threads  # off the event loop
    assert engine.threads  # it ran
    ok = [a for a in answers if isinstance(a, ProcessOutcome)]
    assert [a.result for a in ok] == [{"value": 2}, {"value": 4}]
    assert bytes(ok[0].encoded) == b'{"value":2.0}'  # JSON bytes, sent as they are
    assert ok[0].to_dict()["result"] is ok[0].encoded
    assert isinstance(answers[1], EngineError)
    assert "encode failed" in answers[1].message
    assert "no 26" in answers[1].message


async def test_a_decode_bug_is_an_engine_error_with_the_cause_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "dtesn_trio.runtime")
    with trio.fail_after(30):
        async with open_runtime(config(), engine=BrokenDecode()) as rt:
            with pytest.raises(EngineError) as info:
                await rt.process(1)
    assert "secret" not in info.value.message
    assert any(r.exc_info is not None for r in caplog.records)
    assert "secret internals" in caplog.text


class BrokenGroupKey(Doubler):
    def group_key(self, item: float) -> int:
        raise KeyError("secret internals")


async def test_a_group_key_bug_is_an_engine_error_with_and_without_a_deadline_and_in_a_job(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "dtesn_trio.runtime")
    with trio.fail_after(30):
        async with open_runtime(config(), engine=BrokenGroupKey()) as rt:
            with pytest.raises(EngineError) as plain:
                await rt.process(1)
            with pytest.raises(EngineError) as bounded:
                await rt.process(1, deadline=trio.current_time() + 10)
            with pytest.raises(EngineError) as job:  # a durable job's run, past admission
                await rt._run_job({"input": 1})
            load = rt.admission.get_current_load()
    for info in (plain, bounded, job):
        assert "secret" not in info.value.message
    assert "secret internals" in caplog.text
    assert load["concurrent_requests"] == 0  # both gave their admission token back


async def test_an_unpicklable_engine_with_processes_says_so() -> None:
    cfg = config(processor=ProcessorConfig(executor="process", worker_threads=1))
    with pytest.RaisesGroup(pytest.RaisesExc(TypeError, match="needs a picklable engine")):
        async with open_runtime(cfg, engine=Unpicklable()):
            pass  # pragma: no cover


def test_an_object_without_the_methods_is_not_an_engine() -> None:
    with pytest.raises(TypeError, match="has no process_batch, encode method"):
        resolve_engine(type("Half", (), {"decode": lambda self, p: p})())


def test_load_engine_errors_say_what_to_fix() -> None:
    with pytest.raises(ValueError, match=r"must be package\.module:factory"):
        load_engine("examples.sklearn_digits")
    with pytest.raises(ValueError, match="cannot import 'no_such_module_here'"):
        load_engine("no_such_module_here:factory")
    with pytest.raises(ValueError, match="has no 'nope'"):
        load_engine("tests.test_engine:nope")
    with pytest.raises(ValueError, match=r"failed: .*unexpected keyword argument 'bogus'"):
        load_engine("tests.test_engine:Doubler", {"bogus": 1})
    assert isinstance(load_engine("tests.test_engine:Doubler"), Doubler)


@pytest.mark.slow
async def test_the_dtesn_engine_passes_the_contract_kit() -> None:
    samples = ["hello", "a longer input", [[0.1], [0.2], [0.3]]]
    passed = await check_engine(DTESNEngine(SMALL), samples, bad_samples=["", [[1.0, 2.0]]])
    assert passed == [
        "decode",
        "order",
        "runtime",
        "per-input failure",
        "output count",
        "cancellation",
        "pickling",
    ]


@pytest.mark.slow
async def test_the_sklearn_engine_passes_the_contract_kit() -> None:
    sklearn_digits = pytest.importorskip("examples.sklearn_digits")
    images, _ = sklearn_digits.samples(4)
    engine = sklearn_digits.factory(c=0.5)
    passed = await check_engine(engine, images, bad_samples=[[1.0] * 3, [99.0] * 64])
    assert "pickling" in passed
    assert len(passed) == 7


async def test_the_kit_catches_a_batch_out_of_order() -> None:
    class Backwards(Doubler):
        def process_batch(self, items: Sequence[float]) -> list[float]:
            return super().process_batch(items)[::-1]

    with pytest.raises(AssertionError, match="check_engine: order"):
        await check_engine(Backwards(), [1, 2, 3], processes=False)


async def test_the_openapi_document_describes_the_engine(tmp_path: Path) -> None:
    sklearn_digits = pytest.importorskip("examples.sklearn_digits")
    engine = sklearn_digits.factory()
    with trio.fail_after(60):
        async with (
            open_runtime(config(), engine=engine) as rt,
            served(rt, ServerConfig(port=0)) as s,
        ):
            doc = (await s.client.get("/openapi.json")).json()
            images, labels = sklearn_digits.samples(3)
            r = await s.client.post("/v1/process", json={"input": images[2]})
            wrong = await s.client.post("/v1/process", json={"input": [1, 2]})
            depth = await s.client.post(
                "/v1/process", json={"input": images[0], "membrane_depth": 1}
            )
    request = doc["components"]["schemas"]["ProcessRequest"]["properties"]
    assert request["input"]["minItems"] == request["input"]["maxItems"] == 64
    assert "membrane_depth" not in request
    result = doc["components"]["schemas"]["ProcessResponse"]["properties"]["result"]
    assert result["properties"]["digit"]["maximum"] == 9
    assert r.status_code == 200, r.text
    assert r.json()["result"]["digit"] == labels[2]
    assert wrong.status_code == 422
    assert depth.status_code == 422
    assert depth.json()["error"]["field"] == "membrane_depth"


def test_the_kit_runs_outside_trio_too() -> None:
    passed = check_engine_sync(Doubler(), [1, 2.5], bad_samples=["x"], processes=False)
    assert passed[-1] == "cancellation"
