"""The embedded runtime: the whole request path, shutdown and cancellation."""

from __future__ import annotations

import sys
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from dtesn_trio import (
    AdmissionConfig,
    CircuitOpen,
    DeadlineExceeded,
    DTESNConfig,
    DTESNModel,
    InvalidRequest,
    RateLimited,
    RuntimeConfig,
    ShuttingDown,
    open_runtime,
)
from dtesn_trio.cache import CacheConfig
from dtesn_trio.config import PostgresSettings, RedisSettings
from dtesn_trio.dtesn import DTESNResult
from dtesn_trio.dtesn import model as model_module
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.limits import BreakerState
from dtesn_trio.limits.shared_rate import SharedRateLimiterConfig
from dtesn_trio.nurseries import BatchQueueConfig
from tests.polling import wait_until
from tests.servers import PostgresServer, RedisServer

SMALL = DTESNConfig(reservoir_size=64, membrane_depth=2)


def small_config(tmp_path: Path | None = None, **kw: object) -> RuntimeConfig:
    jobs = (
        JobsConfig(enabled=True, sqlite_path=str(tmp_path / "jobs.db"))
        if tmp_path is not None
        else JobsConfig(enabled=False)
    )
    base: dict[str, object] = {"model": SMALL, "jobs": jobs}
    base.update(kw)
    return RuntimeConfig(**base)  # type: ignore[arg-type]


async def test_process_computes_the_models_result() -> None:
    model = DTESNModel(SMALL)
    with trio.fail_after(30):
        async with open_runtime(small_config()) as rt:
            outcome = await rt.process("hello reservoir", priority=1)
    expected = model.process_one("hello reservoir").to_dict()
    assert outcome.cache_hit is False
    assert outcome.priority == 1
    assert outcome.batch_size >= 1
    np.testing.assert_allclose(outcome.result["features"], expected["features"], atol=1e-12)
    assert set(outcome.timings) == {"queued_ms", "processing_ms", "total_ms"}


async def test_second_identical_request_is_a_cache_hit() -> None:
    with trio.fail_after(30):
        async with open_runtime(small_config()) as rt:
            first = await rt.process("same input")
            second = await rt.process("same input")
            other_depth = await rt.process("same input", membrane_depth=1)
    assert (first.cache_hit, second.cache_hit, other_depth.cache_hit) == (False, True, False)
    assert second.result == first.result
    assert other_depth.result["features"] != first.result["features"]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"input": ""}, "input"),
        ({"input": [[1.0, float("nan")]]}, "input"),
        ({"input": {"a": 1}}, "input"),
        ({"input": "x", "priority": 9}, "priority"),
        ({"input": "x", "priority": True}, "priority"),
        ({"input": "x", "membrane_depth": 0}, "membrane_depth"),
    ],
)
async def test_bad_input_names_the_field(kwargs: dict[str, object], field: str) -> None:
    async with open_runtime(small_config(cache=CacheConfig(enabled=False))) as rt:
        data = kwargs.pop("input")
        with pytest.raises(InvalidRequest) as info:
            await rt.process(data, **kwargs)  # type: ignore[arg-type]
    assert info.value.field == field


async def test_numeric_input_drives_the_root() -> None:
    series = np.sin(np.linspace(0, 6, 50))[:, None]
    async with open_runtime(small_config()) as rt:
        outcome = await rt.process(series)
    assert outcome.result["steps"] == 50


async def test_deadline_already_passed_and_deadline_while_queued(autojump_clock: object) -> None:
    config = small_config(queue=BatchQueueConfig(max_wait=0.1, max_batch_size=10))
    async with open_runtime(config) as rt:
        with pytest.raises(DeadlineExceeded):
            await rt.process("late", deadline=trio.current_time() - 1)
        # A deadline inside the batching window: refused or expired, never processed late.
        start = trio.current_time()
        with pytest.raises((DeadlineExceeded,)):
            await rt.process("too soon", deadline=start + 0.01, use_cache=False)
        assert trio.current_time() - start <= 0.01 + 1e-9


async def test_shutdown_answers_every_request() -> None:
    outcomes: list[object] = []
    with trio.fail_after(60):
        config = small_config(admission=AdmissionConfig(burst_limit=1000))
        async with open_runtime(config) as rt, trio.open_nursery() as nursery:

            async def call(i: int) -> None:
                try:
                    outcomes.append(await rt.process(f"request {i}", use_cache=False))
                except ShuttingDown as exc:
                    outcomes.append(exc)

            for i in range(200):
                nursery.start_soon(call, i)
            await trio.testing.wait_all_tasks_blocked()
            rt.begin_shutdown()
            with pytest.raises(ShuttingDown):
                await rt.process("after shutdown")
            assert not rt.ready
    assert len(outcomes) == 200


class RecordingModel(DTESNModel):
    """The real model, recording which threads run it and how many calls are inside now;
    ``hold`` seconds at the start of each call make a computation outlast a cancellation."""

    def __init__(self, config: DTESNConfig, hold: float = 0.0) -> None:
        super().__init__(config)
        self.hold = hold
        self.lock = threading.Lock()
        self.started: list[int] = []
        self.ended: list[int] = []
        self.inside = 0
        self.first_call = threading.Event()

    @contextmanager
    def _call(self) -> Iterator[None]:
        with self.lock:
            self.started.append(threading.get_ident())
            self.inside += 1
        self.first_call.set()
        try:
            if self.hold:
                time.sleep(self.hold)  # a worker thread computing: cancellation lands here
            yield
        finally:
            with self.lock:
                self.inside -= 1
                self.ended.append(threading.get_ident())

    def process_one(self, x: object, **kw: Any) -> DTESNResult:
        with self._call():
            return super().process_one(x, **kw)

    def process_batch(self, inputs: Sequence[object], **kw: Any) -> list[DTESNResult]:
        with self._call():
            return super().process_batch(inputs, **kw)


def threads_inside(module_file: str) -> list[int]:
    """Threads whose stack is inside ``module_file`` right now."""
    inside = []
    for ident, frame in sys._current_frames().items():
        f: FrameType | None = frame
        while f is not None:
            if f.f_code.co_filename == module_file:
                inside.append(ident)
                break
            f = f.f_back
    return inside


async def test_hard_cancel_leaves_no_thread_running_user_code(tmp_path: Path) -> None:
    model = RecordingModel(SMALL, hold=0.3)
    with trio.fail_after(60), trio.CancelScope() as cancel:
        async with (
            open_runtime(small_config(tmp_path), model=model) as rt,
            trio.open_nursery() as nursery,
        ):
            for i in range(100):
                nursery.start_soon(rt.process, f"request {i}")
            await wait_until(model.first_call.is_set)
            cancel.cancel()  # the whole runtime, with the engine computing
    assert cancel.cancelled_caught
    # Every call that started has ended, on the thread that started it, before the
    # block returned; trio's idle cached worker threads are not inside the model.
    with model.lock:
        assert model.inside == 0
        assert model.started
        assert sorted(model.started) == sorted(model.ended)
    assert threads_inside(model_module.__file__) == []
    assert threads_inside(__file__) == [threading.get_ident()]  # only this test itself


async def test_two_thousand_mixed_requests_never_compute_on_the_loop() -> None:
    """No computation runs on the event loop's thread: every model call is in a worker
    thread.  (How long the loop's steps are is a measurement: benchmarks/runtime.py's
    ``max_step_ms``, target <= 20 ms.)"""
    rng = np.random.default_rng(0)
    config = small_config(
        cache=CacheConfig(enabled=False),
        admission=AdmissionConfig(
            burst_limit=5000,
            max_requests_per_second=100_000,
            max_concurrent_requests=5000,
            adaptive_scaling=False,
        ),
        # All 2,000 arrive at once: on a busy machine the estimated wait of the last ones
        # can pass the adaptive queue timeout, and they would (rightly) be refused.
        queue=BatchQueueConfig(default_timeout=600.0),
    )
    model = RecordingModel(SMALL)
    loop_thread = threading.get_ident()
    with trio.fail_after(120):
        async with open_runtime(config, model=model) as rt:

            async def call(i: int) -> None:
                if i % 4 == 0:
                    await rt.process(rng.normal(size=(20, 1)), priority=i % 5)
                else:
                    await rt.process("x" * int(rng.integers(1, 128)), priority=i % 5)

            async with trio.open_nursery() as nursery:
                for i in range(2000):
                    nursery.start_soon(call, i)
                    if i % 200 == 199:  # a server accepts in steps too
                        await trio.lowlevel.checkpoint()
            stats = rt.statistics()
    assert stats.queue.completed == 2000
    assert stats.processor.completed_requests == 2000
    assert model.started
    assert loop_thread not in model.started
    assert sorted(model.started) == sorted(model.ended)


@pytest.mark.redis
async def test_redis_cache_is_shared_and_fails_open(redis: RedisServer) -> None:
    config = small_config(
        redis=RedisSettings(url=redis.url), cache=CacheConfig(backend="redis", ttl_seconds=60)
    )
    with trio.fail_after(30):
        async with open_runtime(config) as a:
            first = await a.process("shared")
        async with open_runtime(config) as b:
            second = await b.process("shared")
            redis.stop()
            third = await b.process("redis is down now")
    assert (first.cache_hit, second.cache_hit, third.cache_hit) == (False, True, False)
    assert redis.proc is None


@pytest.mark.postgres
async def test_jobs_on_postgres_run_through_the_runtime(postgres_server: PostgresServer) -> None:
    config = small_config(
        jobs=JobsConfig(backend="postgres", workers=2, poll_interval=0.05),
        postgres=PostgresSettings(dsn=postgres_server.dsn),
    )
    with trio.fail_after(60):
        async with open_runtime(config) as rt:
            assert rt.jobs is not None
            record = await rt.jobs.submit({"input": "a durable job", "priority": 3})
            while not (await rt.jobs.get(record.id) or record).finished:  # noqa: ASYNC110 - the database is the state
                await trio.sleep(0.02)
            done = await rt.jobs.get(record.id)
    assert done is not None
    assert done.status == "succeeded"
    assert done.result is not None
    assert len(done.result["result"]["features"]) > 0


@pytest.mark.redis
async def test_shared_limit_refuses_past_the_global_rate(redis: RedisServer) -> None:
    config = small_config(
        redis=RedisSettings(url=redis.url),
        shared_limit=SharedRateLimiterConfig(enabled=True, rates="1/min:3"),
    )
    outcomes: list[str] = []
    with trio.fail_after(30):
        async with open_runtime(config) as rt:
            for i in range(5):
                try:
                    await rt.process(f"input {i}")
                    outcomes.append("ok")
                except RateLimited as exc:
                    outcomes.append(f"limited after {exc.retry_after or 0:.0f}s+")
            stats = rt.statistics().shared_limit
    assert outcomes[:3] == ["ok", "ok", "ok"]
    # 1/min: the next slot is about 20 s (one emission interval minus elapsed) away.
    assert all(o.startswith("limited after") and o != "limited after 0s+" for o in outcomes[3:])
    assert stats is not None
    assert (stats.admitted, stats.limited) == (3, 2)


def test_config_cross_checks_name_the_missing_section() -> None:
    with pytest.raises(ValueError, match=r"shared_limit\.enabled = true needs redis\.url"):
        RuntimeConfig(shared_limit=SharedRateLimiterConfig(enabled=True))
    with pytest.raises(ValueError, match=r"jobs\.backend = 'postgres' needs postgres\.dsn"):
        RuntimeConfig(jobs=JobsConfig(backend="postgres"))
    with pytest.raises(ValueError, match=r"cache\.backend = 'redis' needs redis\.url"):
        RuntimeConfig(cache=CacheConfig(backend="redis"))


async def test_every_stats_view_reports_the_admission_breaker() -> None:
    with trio.fail_after(30):
        async with open_runtime(small_config()) as rt:
            queue, breaker = rt.queue, rt.admission.breaker
            assert queue is not None

            def views() -> dict[str, object]:
                stats = rt.get_stats()
                return {
                    "queue": queue.get_queue_stats()["circuit_breaker_open"],
                    "get_stats.queue": stats["queue"]["circuit_breaker_open"],
                    "processing": stats["processing"]["queue_stats"]["circuit_breaker_open"],
                    "statistics": rt.statistics().admission.breaker.open,
                    "load": stats["load"]["circuit_breaker_state"],
                }

            def every(is_open: bool, state: str) -> dict[str, object]:
                return {**dict.fromkeys(views(), is_open), "load": state}

            assert views() == every(False, "closed")
            assert queue.get_queue_stats()["circuit_breaker_open"] is False
            # opened by the engine's failures, as in production
            for _ in range(breaker.config.minimum_calls):
                breaker.acquire_permission().on_error(RuntimeError("engine down"))
            assert breaker.state is BreakerState.OPEN
            assert views() == every(True, "open")
            with pytest.raises(CircuitOpen):
                await rt.process("refused while open", priority=1)
            breaker.transition_to_forced_open()
            assert views() == every(True, "forced_open")
            assert queue.get_queue_stats()["circuit_breaker_open"] is True
            assert rt.get_stats()["processing"]["queue_stats"]["circuit_breaker_open"] is True
            breaker.reset()
            assert views() == every(False, "closed")
            assert queue.get_queue_stats()["circuit_breaker_open"] is False
