"""Sessions survive a graceful restart (SQLite and a real PostgreSQL), bit for bit; a
saved session that cannot be restored answers 410 naming it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio
import trio.testing

from dtesn_trio.config import PostgresSettings
from dtesn_trio.dtesn import DTESNModel
from dtesn_trio.errors import ModelNotFound, SessionLost, SessionNotFound, ShuttingDown
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.nurseries import ConnectionPoolConfig, SQLiteConnector, open_pool
from dtesn_trio.runtime import BatchedOutcome
from dtesn_trio.sessions import (
    BuiltinModelSource,
    ModelVersion,
    SessionsConfig,
    SQLiteSessionStore,
    open_sessions,
)
from tests.servers import PostgresServer
from tests.sessions.helpers import session_runtime, trained

SERIES = b"a live series that outlives the server process it started on"


async def restart_keeps_the_state(tmp_path: Path, **sections: object) -> None:
    model = trained()
    async with session_runtime(tmp_path, model, **sections) as rt:
        assert rt.sessions is not None
        sid = (await rt.sessions.open(washout=3)).session_id
        first = await rt.sessions.step(sid, SERIES[:20])
        ended = (await rt.sessions.open()).session_id
        await rt.sessions.end(ended)
    async with session_runtime(tmp_path, model, **sections) as rt:
        assert rt.sessions is not None
        info = rt.sessions.get(sid)
        assert (info.position, info.washout, info.model) == (20, 3, "default@0")
        assert rt.sessions.statistics().restored == 1
        with pytest.raises(SessionNotFound):
            rt.sessions.get(ended)
        second = await rt.sessions.step(sid, SERIES[20:])
    whole = model.process_one(SERIES)
    assert whole.prediction is not None
    assert first.predictions is not None
    assert second.predictions is not None
    assert np.array_equal(
        np.concatenate([first.predictions, second.predictions]), whole.prediction[3:]
    )
    assert np.array_equal(second.state, whole.features)
    async with session_runtime(tmp_path, model, **sections) as rt:
        assert rt.sessions is not None
        # restored once: the rows were taken, and the second stop saved it again
        assert rt.sessions.get(sid).position == len(SERIES)


async def test_sessions_survive_a_graceful_restart_on_sqlite(tmp_path: Path) -> None:
    with trio.fail_after(60):
        await restart_keeps_the_state(tmp_path)


@pytest.mark.postgres
async def test_sessions_survive_a_graceful_restart_on_postgres(
    tmp_path: Path, postgres_server: PostgresServer
) -> None:
    with trio.fail_after(60):
        await restart_keeps_the_state(
            tmp_path,
            jobs=JobsConfig(backend="postgres", workers=0),
            postgres=PostgresSettings(dsn=postgres_server.dsn),
        )


class OnlyOther:
    """A model source that no longer has the built-in model (a registry after the
    version was deleted)."""

    async def resolve(self, ref: str | None) -> ModelVersion:
        await trio.lowlevel.checkpoint()
        raise ModelNotFound(f"model {ref or 'default'} does not exist any more", field="model")


async def test_a_session_that_cannot_be_restored_is_410_naming_it(tmp_path: Path) -> None:
    model = trained()
    async with session_runtime(tmp_path, model) as rt:
        assert rt.sessions is not None
        sid = (await rt.sessions.open()).session_id
        await rt.sessions.step(sid, SERIES[:5])
    async with session_runtime(tmp_path, model, models=OnlyOther()) as rt:
        assert rt.sessions is not None
        with pytest.raises(
            SessionLost, match=rf"session '{sid}'.*model default does not exist"
        ) as lost:
            await rt.sessions.step(sid, SERIES[5:])
        assert (lost.value.http_status, lost.value.field) == (410, "session_id")
        assert rt.sessions.statistics().lost == 1


async def test_without_persistence_a_restart_forgets_sessions(tmp_path: Path) -> None:
    model = DTESNModel(trained().config)
    off = SessionsConfig(persist=False)
    async with session_runtime(tmp_path, model, sessions=off) as rt:
        assert rt.sessions is not None
        sid = (await rt.sessions.open()).session_id
    async with session_runtime(tmp_path, model, sessions=off) as rt:
        assert rt.sessions is not None
        with pytest.raises(SessionNotFound, match="no live session"):
            rt.sessions.get(sid)


class HeldRuntime:
    """Runs each step on the event loop once ``release`` is set (only what the session
    manager asks of a runtime): a step can be held in flight across a stop."""

    def __init__(self) -> None:
        self.release = trio.Event()
        self.release.set()

    async def submit_batched(self, item: Any, run: Any, **kwargs: Any) -> BatchedOutcome:
        await self.release.wait()
        (output,) = run([item])
        return BatchedOutcome(output, 1, {})


async def test_a_chunk_finishing_after_the_save_is_not_applied(tmp_path: Path) -> None:
    model = trained()
    source = BuiltinModelSource(model)
    runtime = HeldRuntime()
    pool_config = ConnectionPoolConfig(max_connections=2, min_connections=1)
    refused: list[ShuttingDown] = []
    with trio.fail_after(30):
        async with open_pool(SQLiteConnector(str(tmp_path / "s.db")), pool_config) as pool:
            store = SQLiteSessionStore(pool)
            async with trio.open_nursery() as outer:
                async with open_sessions(runtime, models=source, store=store) as manager:
                    sid = (await manager.open()).session_id
                    await manager.step(sid, b"answered")
                    runtime.release = trio.Event()

                    async def late() -> None:
                        with pytest.raises(ShuttingDown, match="not applied") as caught:
                            await manager.step(sid, b" in flight at the stop")
                        refused.append(caught.value)

                    outer.start_soon(late)
                    await trio.testing.wait_all_tasks_blocked()
                    assert manager.get(sid).busy
                # saved: now the held chunk's batch finishes
                runtime.release.set()
            assert len(refused) == 1
            async with open_sessions(runtime, models=source, store=store) as manager:
                info = manager.get(sid)
                assert info.position == len(b"answered")
                result = await manager.step(sid, b" again")
    whole = model.process_one(b"answered again")
    assert np.array_equal(result.state, whole.features)


async def test_the_runtime_reports_its_sessions(tmp_path: Path) -> None:
    async with session_runtime(tmp_path) as rt:
        assert rt.sessions is not None
        sid = (await rt.sessions.open()).session_id
        await rt.sessions.step(sid, "four")
        stats = rt.get_stats()["sessions"]
        assert (stats["live"], stats["opened"], stats["steps"]) == (1, 1, 4)
        assert rt.statistics().sessions.live == 1
        assert rt.metrics_snapshot()["sessions"]["live"] == 1
