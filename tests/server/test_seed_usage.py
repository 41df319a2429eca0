"""examples/seed_usage.py runs: the seed's snippets in Trio form."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import trio

from dtesn_trio.server import create_app

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "seed_usage.py"


async def test_seed_usage_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location("seed_usage", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with trio.fail_after(60):
        stats: dict[str, Any] = await module.main()
    assert stats["ready"] is True
    processing = stats["processing"]
    for key in (
        "throughput",
        "peak_concurrent",
        "concurrency_stats",
        "connection_pool_stats",
        "queue_stats",
    ):
        assert key in processing
    out = capsys.readouterr().out
    for line in (
        "pool.get_stats():",
        "manager.get_current_load():",
        "processor.get_processing_stats():",
        "POST /v1/process on http://127.0.0.1:",
    ):
        assert line in out


def test_create_app_seed_form_checks_its_arguments() -> None:
    with pytest.raises(TypeError, match="needs the runtime"):
        create_app()
    with pytest.raises(TypeError, match="needs the runtime"):
        create_app(object(), engine=object())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="enable_async_resources=False is not supported"):
        create_app(engine=object(), enable_async_resources=False)  # type: ignore[arg-type]
