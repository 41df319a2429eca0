"""The session manager: order (409), idle TTL at exact virtual times, clear errors, and
steps going through the runtime's admission, queue and deadlines."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from dtesn_trio.dtesn import DTESNEngine, DTESNModel
from dtesn_trio.errors import (
    DeadlineExceeded,
    DTESNError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    SessionBusy,
    SessionNotFound,
    ShuttingDown,
)
from dtesn_trio.nurseries import BatchQueueConfig
from dtesn_trio.runtime import open_runtime
from dtesn_trio.sessions import BuiltinModelSource, SessionsConfig, open_sessions
from tests.sessions.helpers import SMALL, DirectRuntime, config, session_runtime, trained


class GatedEngine(DTESNEngine):
    """The DTESN engine, except that a batch holding the text ``"hold"`` waits for
    ``gate`` (set from the test) before it computes: it keeps the queue's one worker
    busy for as long as the test needs."""

    def __init__(self, model: DTESNModel) -> None:
        super().__init__(model)
        self.gate = threading.Event()

    def process_batch(self, items: Sequence[Any]) -> list[Any]:
        if any(item.encoded.text == b"hold" for item in items):
            self.gate.wait(30)
        return super().process_batch(items)


async def test_a_second_chunk_while_one_runs_is_refused_and_not_applied(tmp_path: Path) -> None:
    model = trained()
    engine = GatedEngine(model)
    cfg = config(tmp_path, model.config, queue=BatchQueueConfig(workers=1, max_batch_size=64))
    with trio.fail_after(30):
        async with open_runtime(cfg, engine=engine) as rt:
            assert rt.sessions is not None
            manager = rt.sessions
            sid = (await manager.open()).session_id
            first: list[Any] = []

            async def hold() -> None:
                await rt.process("hold", use_cache=False)

            async def step_first() -> None:
                first.append(await manager.step(sid, b"first chunk"))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(hold)
                await trio.testing.wait_all_tasks_blocked()  # the worker is held
                nursery.start_soon(step_first)
                await trio.testing.wait_all_tasks_blocked()  # queued behind it
                assert manager.get(sid).busy
                with pytest.raises(SessionBusy, match=sid) as caught:
                    await manager.step(sid, b"second chunk")
                assert caught.value.http_status == 409
                assert caught.value.field == "session_id"
                engine.gate.set()
            assert first[0].position == len(b"first chunk")
            again = await manager.step(sid, b"second chunk")
            assert again.position == len(b"first chunksecond chunk")
            assert manager.statistics().refused_busy == 1
    whole = model.process_one(b"first chunksecond chunk")
    assert np.array_equal(again.state, whole.features)


async def test_idle_sessions_end_after_the_ttl_at_exact_times(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cfg = SessionsConfig(idle_ttl=10.0)
    runtime = DirectRuntime()
    source = BuiltinModelSource(DTESNModel(SMALL))
    async with open_sessions(runtime, cfg, models=source) as manager:
        a = (await manager.open()).session_id
        await trio.sleep(3)
        b = (await manager.open()).session_id  # opened at 3: due at 13
        await trio.sleep(1)
        await manager.step(a, "keeps a alive")  # at 4: a is due at 14
        assert manager.get(a).expires_in == 10.0
        await trio.sleep_until(13 - 1e-6)
        await trio.testing.wait_all_tasks_blocked()
        assert manager.statistics().live == 2
        await trio.sleep_until(13)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 13
        with pytest.raises(SessionNotFound, match="without a chunk"):
            manager.get(b)
        assert manager.get(a).expires_in == 1.0
        await trio.sleep_until(14)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(SessionNotFound, match=r"after 10 s without a chunk"):
            await manager.step(a, "too late")
        stats = manager.statistics()
        assert (stats.live, stats.expired, stats.opened) == (0, 2, 2)
        # the sweeper sleeps until a session exists again
        c = (await manager.open()).session_id
        await trio.sleep(10)
        await trio.testing.wait_all_tasks_blocked()
        assert trio.current_time() == 24
        with pytest.raises(SessionNotFound):
            manager.get(c)


async def test_errors_name_what_was_wrong(tmp_path: Path) -> None:
    async with session_runtime(tmp_path) as rt:
        assert rt.sessions is not None
        manager = rt.sessions
        # the runtime's model registry (job store on) answers for the models
        with pytest.raises(DTESNError, match="no model named 'narma'") as caught:
            await manager.open("narma")
        assert (caught.value.http_status, caught.value.field) == (404, "model")
        with pytest.raises(DTESNError) as missing:
            await manager.open("default@3")
        assert missing.value.http_status in (404, 422)
        with pytest.raises(InvalidRequest):
            await manager.open("default@x")
        with pytest.raises(InvalidRequest, match="washout") as bad:
            await manager.open(washout=-1)
        assert bad.value.field == "washout"
        sid = (await manager.open("default@0")).session_id
        with pytest.raises(InvalidRequest, match=r"T x 1 array \(got shape \(2, 3\)\)") as dim:
            await manager.step(sid, [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
        assert dim.value.field == "input"
        assert manager.get(sid).position == 0  # refused chunks are not applied
        with pytest.raises(SessionNotFound, match="no live session with id 'nope'"):
            await manager.step("nope", "x")
        await manager.end(sid)
        with pytest.raises(SessionNotFound, match="ended by DELETE") as ended:
            await manager.step(sid, "after the end")
        assert ended.value.http_status == 404
        with pytest.raises(SessionNotFound, match="ended by DELETE"):
            await manager.end(sid)


async def test_steps_obey_deadlines_and_the_session_limit(tmp_path: Path) -> None:
    async with session_runtime(tmp_path, sessions=SessionsConfig(max_sessions=2)) as rt:
        assert rt.sessions is not None
        manager = rt.sessions
        sid = (await manager.open()).session_id
        await manager.open()
        with pytest.raises(Overloaded, match="maximum of 2 live sessions"):
            await manager.open()
        with pytest.raises(DeadlineExceeded):
            await manager.step(sid, "late", deadline=trio.current_time())
        with pytest.raises(InvalidRequest, match="priority"):
            await manager.step(sid, "x", priority=9)
        assert manager.get(sid).position == 0
        done = await manager.step(sid, "on time", priority=0, deadline=trio.current_time() + 30)
        assert done.position == 7
        rt.begin_shutdown()
        with pytest.raises(ShuttingDown):
            await manager.step(sid, "after the stop began")
        assert manager.get(sid).position == 7


class Echo:
    def decode(self, payload: Any) -> Any:
        return payload

    def process_batch(self, items: Sequence[Any]) -> list[Any]:
        return list(items)

    def encode(self, output: Any) -> Any:
        return output


async def test_sessions_are_off_without_the_dtesn_engine(tmp_path: Path) -> None:
    async with open_runtime(config(tmp_path), engine=Echo()) as rt:
        assert rt.sessions is None


async def test_the_builtin_source_names_unknown_models() -> None:
    source = BuiltinModelSource(DTESNModel(SMALL))
    assert (await source.resolve(None)).version == 0
    assert (await source.resolve("default@0")).name == "default"
    with pytest.raises(ModelNotFound, match="no model named 'narma'") as caught:
        await source.resolve("narma")
    assert (caught.value.http_status, caught.value.field) == (404, "model")
    with pytest.raises(ModelNotFound, match="no version 3"):
        await source.resolve("default@3")
    with pytest.raises(InvalidRequest, match="name@version"):
        await source.resolve("default@x")
