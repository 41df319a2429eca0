"""A contract test kit for engines: ``await check_engine(engine, samples)``.

Run it from a test of your own engine (pytest-trio, or plain pytest with
``check_engine_sync``)::

    async def test_my_engine_keeps_the_contract() -> None:
        await check_engine(MyEngine(), [payload_1, payload_2, payload_3])

``samples`` are request inputs (what a client sends as ``"input"``), at least two, and
``bad_samples`` (optional) inputs that ``decode`` must refuse with ``InvalidRequest``.
It checks, with the engine itself and through a real runtime (``open_runtime``, no
cache, no jobs):

- ``decode``: every sample decodes; every bad sample raises ``InvalidRequest``;
- batches keep order: a batch's outputs equal each item's output computed alone, and
  reversing the batch reverses them (compared after ``encode``, floats to 1e-9), and
  ``encode`` gives a value that JSON can hold;
- per-input failures: an output that is an exception fails that input alone, its batch
  neighbours succeed;
- a ``process_batch`` that returns the wrong number of outputs is an ``EngineError``;
- cancellation while a batch runs: the caller is cancelled, the batch finishes, nothing
  is left held (executor slots, queue items) and the next request succeeds;
- pickling (``processes=True``, the default): the engine survives ``pickle`` and
  computes the same outputs in a worker process (``processor.executor = "process"``).

Each failed check raises ``AssertionError`` naming the check; the result lists the
checks that passed.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import threading
from collections.abc import Sequence
from typing import Any

import msgspec
import trio
import trio.testing

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.engine import ResolvedEngine, check_outputs, resolve_engine
from dtesn_trio.errors import EngineError, InvalidRequest
from dtesn_trio.executor import ProcessorConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import AdmissionConfig
from dtesn_trio.nurseries import BatchQueueConfig

__all__ = ["check_engine", "check_engine_sync", "same_json"]


def _json(value: Any) -> Any:
    def hook(obj: Any) -> Any:
        tolist = getattr(obj, "tolist", None)
        if tolist is not None:
            return tolist()
        raise TypeError(f"encode returned a {type(obj).__name__}, which JSON cannot hold")

    return msgspec.json.decode(msgspec.json.encode(value, enc_hook=hook))


def same_json(a: Any, b: Any, *, rel: float = 1e-9, abs_: float = 1e-12) -> bool:
    """``a == b`` for JSON values, floats compared to ``rel``/``abs_``."""
    if isinstance(a, float) or isinstance(b, float):
        if not isinstance(a, int | float) or not isinstance(b, int | float):
            return False
        return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(
            same_json(x, y, rel=rel, abs_=abs_) for x, y in zip(a, b, strict=True)
        )
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same_json(a[k], b[k], rel=rel, abs_=abs_) for k in a)
    return bool(a == b)


def _check(condition: bool, name: str, detail: str) -> None:
    if not condition:
        raise AssertionError(f"check_engine: {name}: {detail}")


class _Wrapped:
    """The engine's own batch method, altered for one check (the rest is the engine's)."""

    def __init__(self, inner: Any, mode: str) -> None:
        self.inner = inner
        self.mode = mode
        self.calls = 0
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, output: Any) -> Any:
        return self.inner.encode(output)

    def process_batch(self, items: Sequence[Any]) -> Sequence[Any]:
        if self.mode == "gate":
            self.entered.set()
            self.release.wait(60)
        outputs = list(self.inner.process_batch(items))
        self.calls += 1
        if self.mode == "short":
            return outputs[:-1]
        if self.mode == "fail" and self.calls == 1:  # the first input of the first call
            outputs[0] = ValueError("injected failure (check_engine)")
        return outputs


def _config(**sections: Any) -> RuntimeConfig:
    sections.setdefault("queue", BatchQueueConfig(max_wait=0.01, max_batch_size=64))
    return RuntimeConfig(
        admission=AdmissionConfig(max_requests_per_second=1e6, burst_limit=100_000),
        jobs=JobsConfig(enabled=False),
        **sections,
    )


async def _through_runtime(
    resolved: ResolvedEngine, engine: Any, samples: Sequence[Any], **sections: Any
) -> list[Any]:
    from dtesn_trio.runtime import open_runtime

    config = _config(**sections)
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, enabled=False))
    async with open_runtime(config, engine=dataclasses.replace(resolved, engine=engine)) as rt:
        return await rt.process_batch(list(samples))


async def check_engine(
    engine: Any,
    samples: Sequence[Any],
    *,
    bad_samples: Sequence[Any] = (),
    processes: bool = True,
) -> list[str]:
    """Check ``engine`` keeps the engine contract (see the module docstring); returns
    the names of the checks, all passed."""
    from dtesn_trio.runtime import ProcessOutcome, open_runtime

    passed: list[str] = []
    _check(len(samples) >= 2, "samples", "give at least two samples")
    resolved = resolve_engine(engine)
    name = resolved.name

    # decode
    items = [resolved.decode(s) for s in samples]
    for bad in bad_samples:
        try:
            resolved.decode(bad)
        except InvalidRequest:
            continue
        raise AssertionError(f"check_engine: decode: {bad!r} was accepted, not refused")
    if resolved.group_key is not None:
        for item in items:
            hash(resolved.group_key(item))
    if resolved.cache_key_fn is not None:
        for s, item in zip(samples, items, strict=True):
            _check(
                resolved.cache_key(item) == resolved.cache_key(resolved.decode(s)),
                "cache_key",
                "the same input gave two keys",
            )
    passed.append("decode")

    # order: a batch equals its items alone, reversed reverses
    batch = await trio.to_thread.run_sync(engine.process_batch, items)
    batch = check_outputs(name, len(items), batch)
    alone = [
        check_outputs(name, 1, await trio.to_thread.run_sync(engine.process_batch, [item]))[0]
        for item in items
    ]
    backwards = check_outputs(
        name, len(items), await trio.to_thread.run_sync(engine.process_batch, items[::-1])
    )
    encoded = [_json(resolved.encode(o)) for o in batch]
    for i, (b, a, r) in enumerate(zip(encoded, alone, backwards[::-1], strict=True)):
        _check(
            same_json(b, _json(resolved.encode(a))),
            "order",
            f"samples[{i}] in a batch differs from samples[{i}] alone",
        )
        _check(
            same_json(b, _json(resolved.encode(r))),
            "order",
            f"samples[{i}] differs in the reversed batch: outputs are not in input order",
        )
    passed.append("order")

    # through the runtime: same answers
    with trio.fail_after(120):
        answers = await _through_runtime(resolved, engine, samples)
    for i, answer in enumerate(answers):
        _check(isinstance(answer, ProcessOutcome), "runtime", f"samples[{i}] failed: {answer!r}")
        assert isinstance(answer, ProcessOutcome)
        _check(same_json(_json(answer.result), encoded[i]), "runtime", f"samples[{i}] differs")
    passed.append("runtime")

    # per-input failures
    with trio.fail_after(120):
        answers = await _through_runtime(
            resolved, _Wrapped(engine, "fail"), samples, queue=_one_batch(len(samples))
        )
    failed = [i for i, a in enumerate(answers) if not isinstance(a, ProcessOutcome)]
    _check(len(failed) == 1, "per-input failure", f"inputs {failed} failed, expected one")
    _check(isinstance(answers[failed[0]], EngineError), "per-input failure", "not EngineError")
    passed.append("per-input failure")

    # wrong number of outputs
    with trio.fail_after(120):
        answers = await _through_runtime(resolved, _Wrapped(engine, "short"), samples)
    _check(
        all(isinstance(a, EngineError) for a in answers),
        "output count",
        f"a short batch gave {answers!r}, expected EngineError for each",
    )
    passed.append("output count")

    # cancellation while a batch runs
    gated = _Wrapped(engine, "gate")
    config = _config()
    config = dataclasses.replace(config, cache=dataclasses.replace(config.cache, enabled=False))
    with trio.fail_after(120):
        async with open_runtime(config, engine=dataclasses.replace(resolved, engine=gated)) as rt:
            async with trio.open_nursery() as nursery:
                scope = trio.CancelScope()

                async def caller() -> None:
                    with scope:
                        await rt.process(samples[0])
                        raise AssertionError("check_engine: cancellation: not cancelled")

                nursery.start_soon(caller)
                await trio.to_thread.run_sync(gated.entered.wait, 60)
                scope.cancel()
                await trio.testing.wait_all_tasks_blocked()
                gated.release.set()
            after = await rt.process(samples[1])
            _check(
                same_json(_json(after.result), encoded[1]), "cancellation", "next request differs"
            )
            st = rt.processor.statistics()
            _check(st.concurrent_requests == 0, "cancellation", "executor slots left held")
            assert rt.queue is not None
            _check(rt.queue.statistics().running_items == 0, "cancellation", "queue items held")
    passed.append("cancellation")

    # pickling and the process executor
    if processes:
        try:
            copy = pickle.loads(pickle.dumps(engine))
        except Exception as exc:
            raise AssertionError(
                f"check_engine: pickling: {name} does not pickle ({exc!r}); the process"
                " executor needs it (pass processes=False if you only use threads)"
            ) from exc
        again = check_outputs(name, len(items), copy.process_batch(items))
        for i, out in enumerate(again):
            _check(same_json(_json(resolved.encode(out)), encoded[i]), "pickling", f"samples[{i}]")
        with trio.fail_after(300):
            answers = await _through_runtime(
                resolved,
                engine,
                samples,
                processor=ProcessorConfig(executor="process", worker_threads=1),
            )
        for i, answer in enumerate(answers):
            _check(isinstance(answer, ProcessOutcome), "process executor", f"{answer!r}")
            assert isinstance(answer, ProcessOutcome)
            _check(same_json(_json(answer.result), encoded[i]), "process executor", f"{i}")
        passed.append("pickling")
    return passed


def _one_batch(n: int) -> BatchQueueConfig:
    # every sample in one batch: submitted together, the batch leaves when full
    return BatchQueueConfig(max_wait=1.0, max_batch_size=n, workers=1)


def check_engine_sync(
    engine: Any,
    samples: Sequence[Any],
    *,
    bad_samples: Sequence[Any] = (),
    processes: bool = True,
) -> list[str]:
    """:func:`check_engine` for code outside Trio (``trio.run`` inside)."""
    result: list[str] = trio.run(
        lambda: check_engine(engine, samples, bad_samples=bad_samples, processes=processes)
    )
    return result
