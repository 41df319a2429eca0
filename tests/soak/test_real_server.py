"""``dtesn-trio soak`` against the real thing: a served dtesn-trio on port 0, and the
embedded runtime."""

from __future__ import annotations

import json
from pathlib import Path

import trio

from dtesn_trio.config import RuntimeConfig
from dtesn_trio.dtesn import DTESNConfig
from dtesn_trio.jobs import JobsConfig
from dtesn_trio.runtime import open_runtime
from dtesn_trio.server import ServerConfig, serve
from tests.soak.test_cli import run_cli
from tests.soak.test_report import check_report_files


def _small_runtime_config() -> RuntimeConfig:
    # A small model: the soak measures the server, not the reservoir.
    return RuntimeConfig(
        model=DTESNConfig(membrane_depth=3, reservoir_size=64),
        jobs=JobsConfig(enabled=False),
        shutdown_grace=1.0,
    )


async def test_soak_against_a_served_dtesn_trio(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with open_runtime(_small_runtime_config()) as runtime:
            stop = trio.Event()
            info = await runtime.nursery.start(
                lambda task_status: serve(
                    runtime,
                    ServerConfig(host="127.0.0.1", port=0),
                    shutdown_trigger=stop.wait,
                    task_status=task_status,
                )
            )
            url = f"http://127.0.0.1:{info.port}"
            code, out, err = await run_cli(
                "--url", url, "--rate", "40", "--duration", "5",
                "--priority-mix", "0:10,2:80,4:10", "--input-size", "uniform:16-128",
                "--deadline-ms", "5000", "--report", str(tmp_path / "real"),
                "--slo-p99-ms", "20000", "--max-error-rate", "0.9", "--json",
            )  # fmt: skip
            assert code == 0, err
            summary = json.loads(out)
            assert summary["sent"] == 200
            assert summary["sent"] == summary["answered"] + summary["failed"]
            assert summary["ok"] > 0
            report = check_report_files(tmp_path / "real")
            assert report["counts"]["sent"] == 200
            heads = [s["headlines"] for s in report["target_samples"] if "error" not in s]
            assert heads, report["target_samples"][:1]
            assert any(h["limiter_limit"] is not None for h in heads)
            assert any(h["max_step_ms"] is not None for h in heads)

            code, out, err = await run_cli(
                "--url", url, "--concurrency", "4", "--duration", "1",
                "--slo-p99-ms", "0.001", "--json",
            )  # fmt: skip
            assert code == 1, err
            assert json.loads(out)["slo_violations"][0].startswith("p99 latency")
            stop.set()


async def test_soak_embedded_runtime() -> None:
    with trio.fail_after(60):
        code, out, err = await run_cli(
            "--embedded", "--rate", "20", "--duration", "2", "--max-error-rate", "0.5", "--json",
            "--set", "model.reservoir_size=64", "--set", "model.membrane_depth=3",
            "--set", "jobs.enabled=false",
        )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["target"]["kind"] == "embedded"
    assert summary["sent"] == 40 == summary["answered"] + summary["failed"]
