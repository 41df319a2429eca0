"""``dtesn-trio soak`` end to end: a subprocess driving a real HTTP server, its report, its
exit codes; bad flags and an unreachable target exit 2 with a clear message."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
from click.testing import CliRunner

from dtesn_trio.cli import main
from tests.soak.app import EchoApp, serve_app
from tests.soak.test_report import check_report_files

ROOT = Path(__file__).resolve().parents[2]


async def run_cli(*args: str) -> tuple[int, str, str]:
    """Run ``python -m dtesn_trio soak ARGS`` as a subprocess."""
    result = await trio.run_process(
        [sys.executable, "-m", "dtesn_trio", "soak", *args],
        capture_stdout=True,
        capture_stderr=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


async def test_soak_writes_a_report_whose_counts_add_up(tmp_path: Path) -> None:
    app = EchoApp(fail_every=20)
    with trio.fail_after(60):
        async with serve_app(app) as url:
            code, out, err = await run_cli(
                "--url", url, "--rate", "100", "--duration", "2",
                "--priority-mix", "0:10,2:80,4:10", "--input-size", "uniform:16-256",
                "--deadline-ms", "500", "--report", str(tmp_path / "r"),
                "--slo-p99-ms", "5000", "--max-error-rate", "0.1", "--json",
            )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sent"] == 200 == summary["answered"] + summary["failed"]
    assert summary["by_status"] == {"200": 190, "503 overloaded": 10}
    assert summary["slo_passed"] is True
    assert summary["client_cpu_ms_per_request"] > 0
    report = check_report_files(tmp_path / "r")
    assert report["counts"]["sent"] == app.requests == 200
    assert set(report["by_priority"]) <= {"0", "2", "4"}
    assert report["load"]["input_size"] == "uniform:16-256"
    assert report["target_samples"], "the target's /v1/stats and /metrics were not sampled"
    assert report["target_samples"][0]["headlines"]["limiter_limit"] == 64.0


async def test_slo_violations_exit_1() -> None:
    app = EchoApp(fail_every=5, delay=0.02)
    with trio.fail_after(60):
        async with serve_app(app) as url:
            code, out, err = await run_cli(
                "--url", url, "--concurrency", "4", "--duration", "1",
                "--slo-p99-ms", "1", "--max-error-rate", "0.1", "--json",
            )  # fmt: skip
    assert code == 1, err
    summary: dict[str, Any] = json.loads(out)
    assert summary["mode"] == "closed"
    violations = summary["slo_violations"]
    assert len(violations) == 2
    assert violations[0].startswith("p99 latency")
    # Every 5th request refused: floor(n / 5) / n of them.
    assert violations[1].startswith("error rate 0.")
    assert 0.18 <= float(violations[1].split()[2]) <= 0.2


def _closed_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port: int = sock.getsockname()[1]
    sock.close()
    return port


def test_unreachable_target_exits_2_with_a_clear_message() -> None:
    port = _closed_port()
    result = subprocess.run(
        [sys.executable, "-m", "dtesn_trio", "soak", "--url", f"http://127.0.0.1:{port}",
         "--rate", "10", "--duration", "1"],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2
    assert f"cannot reach http://127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rate", "10"], "exactly one target"),
        (["--url", "http://x", "--embedded", "--rate", "1"], "exactly one target"),
        (["--url", "http://x"], "--rate (open loop) or --concurrency"),
        (["--url", "http://x", "--rate", "-5"], "load.rate must be > 0"),
        (["--url", "http://x", "--rate", "5", "--priority-mix", "7:1"], "priority must be 0-4"),
        (["--url", "http://x", "--rate", "5", "--input-size", "lots"], "input_size"),
        (["--url", "https://x", "--rate", "5"], "http://"),
        (["--url", "http://x", "--rate", "5", "--max-error-rate", "3"], "slo.max_error_rate"),
        (["--url", "http://x", "--rate", "5", "--ramp", "20"], "load.ramp"),
        (["--url", "http://x", "--rate", "5", "--arrivals", "bursty"], "bursty"),
        (["--url", "http://x", "--rate", "5", "--set", "model.x=1"], "use --embedded"),
        (["--embedded", "--rate", "5", "--set", "model.nope=1"], "model.nope"),
        (["--embedded", "--rate", "5", "--set", "model.reservoir_size=-3"], "reservoir_size"),
    ],
)
def test_bad_flags_exit_2_naming_the_problem(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["soak", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


async def test_workers_split_the_load_and_merge_their_results(tmp_path: Path) -> None:
    app = EchoApp(fail_every=10)
    with trio.fail_after(60):
        async with serve_app(app) as url:
            code, out, err = await run_cli(
                "--url", url, "--rate", "100", "--workers", "2", "--duration", "2",
                "--json", "--report", str(tmp_path / "w"),
            )  # fmt: skip
    assert code == 0, err
    summary = json.loads(out)
    assert summary["sent"] == 200 == app.requests
    assert summary["by_status"] == {"200": 180, "503 overloaded": 20}
    assert summary["target"]["workers"] == 2
    report = check_report_files(tmp_path / "w")
    # The two workers' constant streams interleave: 100 sent in each second, not bursts.
    assert [p["sent"] for p in report["timeseries"][:2]] == [100, 100]
    assert report["client"]["workers"] == 2


async def test_ctrl_c_stops_with_a_partial_report_and_exit_130(tmp_path: Path) -> None:
    app = EchoApp(delay=0.5)  # requests overlap, so some are in flight at the interrupt
    with trio.fail_after(60):
        async with serve_app(app) as url, trio.open_nursery() as nursery:
            proc: trio.Process = await nursery.start(
                partial(
                    trio.run_process,
                    [sys.executable, "-m", "dtesn_trio", "soak", "--url", url, "--rate", "50",
                     "--duration", "60", "--json", "--report", str(tmp_path / "i")],
                    stdout=subprocess.PIPE,
                    check=False,
                    env={**os.environ, "PYTHONPATH": str(ROOT)},
                )
            )  # fmt: skip
            await app.wait_for_requests(30)
            proc.send_signal(signal.SIGINT)
            assert proc.stdout is not None
            out = b""
            while chunk := await proc.stdout.receive_some():
                out += chunk
    assert proc.returncode == 130
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert summary["unfinished"] > 0
    assert summary["sent"] == summary["answered"] + summary["failed"] + summary["unfinished"]
    report = check_report_files(tmp_path / "i")
    assert report["interrupted"] is True


_WITHOUT_SOAK_EXTRA = (
    "import sys\nsys.modules['hdrh'] = sys.modules['matplotlib'] = None  # as if not installed\n"
)


def test_soak_without_its_extra_exits_2_saying_how_to_install_it() -> None:
    code = _WITHOUT_SOAK_EXTRA + (
        "from dtesn_trio.cli import main\nmain(['soak', '--embedded', '--rate', '1'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr == (
        "dtesn-trio soak needs hdrhistogram and matplotlib, which the runtime does not install:"
        " pip install 'dtesn-trio[soak]'\n"
    )


def test_the_runtime_and_serve_do_not_import_the_soak_extra() -> None:
    code = _WITHOUT_SOAK_EXTRA + (
        "import dtesn_trio, dtesn_trio.cli, dtesn_trio.soak\n"
        "from click.testing import CliRunner\n"
        "result = CliRunner().invoke(dtesn_trio.cli.main, ['serve', '--help'])\n"
        "assert result.exit_code == 0, result.output\n"
        "print('ok')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == "ok\n"
