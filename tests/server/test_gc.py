"""``server.gc_freeze`` / ``server.gc_threshold``: parsed and validated like every setting,
applied by ``serve`` once the runtime is ready, reported, and restored on the way out.

The garbage collector is one per process: every test here checks (``gc_restored``) that
it leaves the threshold, the frozen objects and ``gc.callbacks`` as it found them.
"""

from __future__ import annotations

import gc
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from dtesn_trio.server import ServerConfig
from dtesn_trio.server.cli import load_serve_config
from dtesn_trio.server.gctuning import applied_gc_settings
from dtesn_trio.settings import SettingsError
from tests.server.harness import served
from tests.server.runtimes import open_test_runtime


@pytest.fixture(autouse=True)
def gc_restored() -> Iterator[None]:
    before = (gc.get_threshold(), gc.get_freeze_count(), list(gc.callbacks))
    try:
        yield
        after = (gc.get_threshold(), gc.get_freeze_count(), list(gc.callbacks))
        assert after == before
    finally:
        gc.set_threshold(*before[0])
        if before[1] == 0:
            gc.unfreeze()
        gc.callbacks[:] = before[2]


# ---------------------------------------------------------------------- settings


def test_defaults_freeze_and_raise_the_threshold() -> None:
    _, server = load_serve_config(environ={})
    assert server.gc_freeze is True
    assert server.gc_threshold == (2_000, 10, 250)


@pytest.mark.parametrize(
    ("sets", "environ", "freeze", "threshold"),
    [
        (["server.gc_threshold=50000,10,100"], {}, True, (50_000, 10, 100)),
        (["server.gc_threshold=default", "server.gc_freeze=off"], {}, False, "default"),
        ([], {"DTESN_SERVER__GC_THRESHOLD": "700, 10, 10"}, True, (700, 10, 10)),
        (["server.gc_freeze=true"], {"DTESN_SERVER__GC_FREEZE": "false"}, True, (2000, 10, 250)),
    ],
)
def test_flags_and_environment(
    sets: list[str], environ: dict[str, str], freeze: bool, threshold: object
) -> None:
    _, server = load_serve_config(sets=sets, environ=environ)
    assert (server.gc_freeze, server.gc_threshold) == (freeze, threshold)


def test_toml(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[server]\ngc_threshold = [10000, 20, 30]\ngc_freeze = false\n")
    _, server = load_serve_config(config_file=str(path), environ={})
    assert (server.gc_freeze, server.gc_threshold) == (False, (10_000, 20, 30))
    path.write_text('[server]\ngc_threshold = "default"\n')
    _, server = load_serve_config(config_file=str(path), environ={})
    assert server.gc_threshold == "default"


@pytest.mark.parametrize(
    ("value", "words"),
    [
        ("50000,10", "server.gc_threshold (from --set): expected tuple[int, int, int] or one of"),
        ("fast", "server.gc_threshold (from --set): expected"),
        ("a,b,c", "server.gc_threshold (from --set): expected"),
        ("0,10,10", "server.gc_threshold gen0 must be >= 1 (got 0)"),
        ("700,-1,10", "server.gc_threshold gen1 must be >= 1 (got -1)"),
        ("2000000,10,10", "server.gc_threshold gen0 must be <= 1000000 (got 2000000)"),
    ],
)
def test_bad_threshold_names_the_field(value: str, words: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(words)):
        load_serve_config(sets=[f"server.gc_threshold={value}"], environ={})


def test_bad_freeze_names_the_field() -> None:
    with pytest.raises(SettingsError, match=r"server\.gc_freeze \(from DTESN_SERVER__GC_FREEZE\)"):
        load_serve_config(environ={"DTESN_SERVER__GC_FREEZE": "maybe"})
    with pytest.raises(ValueError, match=r"server\.gc_freeze must be true or false"):
        ServerConfig(gc_freeze=1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"server\.gc_threshold must be \"default\" or three"):
        ServerConfig(gc_threshold=(1, 2, 3, 4))  # type: ignore[arg-type]


# ---------------------------------------------------------------------- applied by serve


async def test_serve_applies_reports_and_restores(tmp_path: Path) -> None:
    before = gc.get_threshold()
    config = ServerConfig(port=0, gc_freeze=True, gc_threshold=(12_345, 11, 99))
    with trio.fail_after(30):
        async with open_test_runtime(tmp_path) as rt, served(rt, config) as s:
            assert gc.get_threshold() == (12_345, 11, 99)
            frozen = gc.get_freeze_count()
            assert frozen > 0  # the runtime, the model and the app among them
            gc.collect(0)
            gc.collect(2)
            stats = (await s.client.get("/v1/stats")).json()["gc"]
            assert stats["freeze"] is True
            assert stats["threshold"] == stats["configured_threshold"] == [12_345, 11, 99]
            # refcounting still frees frozen objects: the count only goes down
            assert 0 < stats["frozen_objects"] <= frozen
            assert stats["collections"]["0"] >= 1
            assert stats["collections"]["2"] >= 1
            assert stats["longest_pause_ms"]["2"] > 0
            text = (await s.client.get("/metrics")).text
            assert re.search(r'^dtesn_gc_collections_total\{generation="2"\} [1-9]', text, re.M)
            assert 'dtesn_gc_threshold{generation="0"} 12345.0' in text
            assert re.search(r"^dtesn_gc_longest_pause_seconds\{generation=\"2\"\} ", text, re.M)
            assert re.search(r"^dtesn_gc_frozen_objects [1-9]", text, re.M)
        assert s.finished.is_set()
        assert s.state.gc_monitor is None
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0


async def test_default_word_leaves_the_interpreter_alone(tmp_path: Path) -> None:
    before = gc.get_threshold()
    gc.set_threshold(701, 9, 11)
    try:
        config = ServerConfig(port=0, gc_freeze=False, gc_threshold="default")
        with trio.fail_after(30):
            async with open_test_runtime(tmp_path) as rt, served(rt, config) as s:
                assert gc.get_threshold() == (701, 9, 11)
                assert gc.get_freeze_count() == 0
                stats = (await s.client.get("/v1/stats")).json()["gc"]
                assert (stats["freeze"], stats["configured_threshold"]) == (False, "default")
        assert gc.get_threshold() == (701, 9, 11)
    finally:
        gc.set_threshold(*before)


# ---------------------------------------------------------------------- one GC per process


def test_overlapping_blocks_restore_what_the_first_found() -> None:
    original = gc.get_threshold()
    outer = applied_gc_settings(True, (1000, 10, 10))
    inner = applied_gc_settings(False, (3000, 10, 10))
    a = outer.__enter__()
    b = inner.__enter__()
    assert gc.get_threshold() == (3000, 10, 10)  # the last applied wins
    assert a.callback in gc.callbacks
    assert b.callback in gc.callbacks
    outer.__exit__(None, None, None)  # the first one leaves first: nothing restored yet
    assert gc.get_threshold() == (3000, 10, 10)
    assert gc.get_freeze_count() > 0
    assert a.callback not in gc.callbacks
    inner.__exit__(None, None, None)
    assert gc.get_threshold() == original
    assert gc.get_freeze_count() == 0
    assert b.callback not in gc.callbacks


def test_someone_elses_freeze_stays() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with applied_gc_settings(True, "default"):
            assert gc.get_freeze_count() >= frozen
        assert gc.get_freeze_count() >= frozen > 0
    finally:
        gc.unfreeze()


def test_monitor_counts_and_times_collections() -> None:
    with applied_gc_settings(False, "default") as monitor:
        gc.collect(1)
        gc.collect(1)
        stats = monitor.statistics()
    assert stats.collections[1] == 2
    assert stats.total_pause[1] >= stats.longest_pause[1] > 0
    gc.collect(1)
    assert monitor.statistics().collections[1] == 2  # removed from gc.callbacks
