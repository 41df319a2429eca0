"""``dtesn-trio serve`` as a real process: start-up, config errors, signals, and durable
jobs across a SIGKILL."""

from __future__ import annotations

import os
import resource
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trio
from click.testing import CliRunner

from dtesn_trio.cli import main
from tests.server.harness import FAST_SERVE_FLAGS

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
FAST = FAST_SERVE_FLAGS

pytestmark = pytest.mark.slow


@dataclass
class Server:
    proc: trio.Process
    url: str
    stdout: list[bytes]
    stdout_stream: trio.abc.ReceiveStream

    async def output(self) -> str:
        """Everything the process printed on stdout, up to its exit."""
        async for chunk in self.stdout_stream:
            self.stdout.append(chunk)
        return b"".join(self.stdout).decode()


@asynccontextmanager
async def dtesn_serve(
    tmp_path: Path, *args: str, preexec_fn: Callable[[], None] | None = None
) -> AsyncIterator[Server]:
    """Start ``python -m dtesn_trio serve --port 0 ...``; wait for its URL."""
    log = (tmp_path / "serve.log").open("ab")
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "dtesn_trio", "serve", "--port", "0", *FAST, *args],
        stdout=subprocess.PIPE,
        stderr=log,
        env=ENV,
        cwd=tmp_path,
        preexec_fn=preexec_fn,
    )
    assert proc.stdout is not None
    seen: list[bytes] = []
    try:
        with trio.fail_after(60):
            while b"listening on " not in b"".join(seen):
                chunk = await proc.stdout.receive_some()
                if not chunk:
                    raise AssertionError(
                        f"serve exited: {b''.join(seen)!r} {(tmp_path / 'serve.log').read_text()}"
                    )
                seen.append(chunk)
        text = b"".join(seen).decode()
        url = text.split("listening on ", 1)[1].split()[0]
        yield Server(proc, url, seen, proc.stdout)
    finally:
        if proc.returncode is None:
            proc.kill()
        with trio.move_on_after(10, shield=True):
            await proc.wait()
        log.close()


async def test_serve_answers_then_stops_gracefully_on_sigint(tmp_path: Path) -> None:
    with trio.fail_after(90):
        async with dtesn_serve(tmp_path) as server:
            assert server.url.startswith("http://127.0.0.1:")
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/readyz")).status_code == 200
                r = await client.post("/v1/process", json={"input": "hello"})
                assert r.status_code == 200, r.text
            server.proc.send_signal(signal.SIGINT)
            output = await server.output()
            assert await server.proc.wait() == 0
    assert "stopping gracefully" in output
    assert "dtesn-trio stopped" in output
    assert (tmp_path / "dtesn-jobs.db").exists()  # the embedded default job store


def _open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc")


async def test_serve_lifts_the_open_file_limit_and_computes_in_processes(
    tmp_path: Path,
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = 256

    def lower() -> None:  # the common soft default is 1,024: start lower still
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    with trio.fail_after(90):
        async with dtesn_serve(tmp_path, preexec_fn=lower) as server:
            soft, seen_hard = _open_file_limits(server.proc.pid)
            async with httpx.AsyncClient(base_url=server.url) as client:
                stats = (await client.get("/v1/stats")).json()
    assert seen_hard == hard
    assert soft == min(hard, 1 << 20) > low
    assert stats["processing"]["executor"] == "process"  # serve's default


@pytest.mark.parametrize(
    ("args", "env", "words"),
    [
        (["--set", "server.port=eighty"], {}, "server.port"),
        (["--set", "model.reservoir_sise=64"], {}, "unknown key model.reservoir_sise"),
        (["--set", "jobs.workers"], {}, "expected section.key=value"),
        ([], {"DTESN_SERVER__PROT": "1"}, "DTESN_SERVER__PROT"),
        ([], {"DTESN_JOBS__WORKERS": "-2"}, "jobs.workers must be >= 0"),
        ([], {"DTESN_API_KEYS": "short"}, "server.api_keys"),
        (["--config", "missing.toml"], {}, "cannot read"),
    ],
)
def test_bad_config_stops_start_up_naming_the_key(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    env: dict[str, str],
    words: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", *args], env=env)
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not (tmp_path / "dtesn-jobs.db").exists()  # stopped before opening anything


def test_bad_config_in_a_real_process_exits_2_without_a_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "dtesn_trio", "serve", "--set", "server.port=eighty"],
        env=ENV,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "invalid setting server.port (from --set): expected an integer" in proc.stderr
    assert "Traceback" not in proc.stderr


async def test_config_file_and_flags(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text('[server]\nport = 1\napi_keys = ["file-key-123456"]\n')
    with trio.fail_after(90):
        # the file's port 1 loses to --port 0 (flags win); its key is used
        async with dtesn_serve(tmp_path, "--config", "c.toml") as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                assert (await client.get("/v1/stats")).status_code == 401
                auth = {"authorization": "Bearer file-key-123456"}
                assert (await client.get("/v1/stats", headers=auth)).status_code == 200
            server.proc.send_signal(signal.SIGTERM)
            assert await server.proc.wait() == 0


def job_counts(jobs_db: Path) -> dict[str, int]:
    db = sqlite3.connect(jobs_db)
    try:
        return dict(db.execute("SELECT status, COUNT(*) FROM dtesn_jobs GROUP BY status"))
    finally:
        db.close()


async def test_100_jobs_survive_a_sigkill(tmp_path: Path) -> None:
    jobs_db = tmp_path / "jobs.db"
    text = "durable job input " * 200  # ~3.6 KB: tens of ms of engine time each
    with trio.fail_after(120):
        async with dtesn_serve(
            tmp_path, "--set", f"jobs.sqlite_path={jobs_db}", "--set", "jobs.workers=1"
        ) as server:
            ids: list[str] = []
            async with (
                httpx.AsyncClient(
                    base_url=server.url, limits=httpx.Limits(max_connections=100)
                ) as client,
                trio.open_nursery() as nursery,
            ):

                async def submit(n: int) -> None:
                    r = await client.post("/v1/jobs", json={"input": f"{n} {text}"})
                    assert r.status_code == 202, r.text
                    ids.append(r.json()["job_id"])

                for n in range(100):
                    nursery.start_soon(submit, n)
            # Kill it while its one worker runs a job: freeze it (SIGSTOP) at a moment
            # the database shows one running, else let it go on a little and look again.
            while True:
                server.proc.send_signal(signal.SIGSTOP)
                frozen = job_counts(jobs_db)
                if frozen.get("running") == 1:
                    break
                server.proc.send_signal(signal.SIGCONT)
                await trio.sleep(0.005)  # another process's progress: nothing to wait on
            server.proc.kill()  # SIGKILL: no release, no clean close
            await server.proc.wait()
        # Every 202 followed a commit: all 100 rows are there; one was running (its
        # claimer died with it), most were still queued.
        counts = job_counts(jobs_db)
        assert counts == frozen
        assert sum(counts.values()) == 100
        assert counts["running"] == 1
        assert counts.get("queued", 0) > 0
        async with dtesn_serve(
            tmp_path, "--set", f"jobs.sqlite_path={jobs_db}", "--set", "jobs.workers=4"
        ) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                stats = (await client.get("/v1/stats")).json()["jobs"]
                assert stats["recovered"] == 1  # the dead process's running job
                while stats["store"]["succeeded"] + stats["store"]["failed"] < 100:
                    await trio.sleep(0.1)
                    stats = (await client.get("/v1/stats")).json()["jobs"]
                for job_id in ids:
                    job = (await client.get(f"/v1/jobs/{job_id}")).json()
                    assert job["status"] == "succeeded", job
                    assert job["result"]["result"]["steps"] > 0
            server.proc.send_signal(signal.SIGTERM)
            assert await server.proc.wait() == 0


async def test_second_signal_stops_at_once(tmp_path: Path) -> None:
    with trio.fail_after(60):
        async with dtesn_serve(tmp_path, "--set", "shutdown_grace=30") as server:
            port = int(server.url.rsplit(":", 1)[1])
            # A client still uploading its body keeps the drain going (up to the grace).
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            async with stream:
                await stream.send_all(
                    b"POST /v1/process HTTP/1.1\r\nhost: x\r\ncontent-length: 100\r\n\r\n{"
                )
                async with httpx.AsyncClient(base_url=server.url) as client:
                    # in flight: the upload, and this very stats request
                    while (await client.get("/v1/stats")).json()["server"]["in_flight"] < 2:  # noqa: ASYNC110 (another process)
                        await trio.sleep(0.05)
                server.proc.send_signal(signal.SIGINT)
                with trio.move_on_after(1.0):
                    await server.proc.wait()
                assert server.proc.returncode is None  # draining, not gone
                stopped_at = trio.current_time()
                server.proc.send_signal(signal.SIGINT)
                assert await server.proc.wait() == 130
                # not the 30 s grace (real time: half of it is slack for a busy machine)
                assert trio.current_time() - stopped_at < 15.0
            output = await server.output()
    assert "stopping gracefully" in output
    assert "stopping now" in output
    assert "dtesn-trio stopped (forced)" in output


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--engine", "no_such_module_here:factory"], "cannot import 'no_such_module_here'"),
        (["--engine", "examples.sklearn_digits"], "must be package.module:factory"),
        (["--set", "engine.c=0.5"], "need --engine MODULE:FACTORY"),
    ],
)
def test_a_bad_engine_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], words: str
) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["serve", *args], env={})
    assert result.exit_code == 2, result.output
    assert words in result.output
    assert not (tmp_path / "dtesn-jobs.db").exists()


async def test_serve_a_user_engine_the_sklearn_example(tmp_path: Path) -> None:
    pytest.importorskip("sklearn")
    from examples.sklearn_digits import samples

    images, labels = samples(6)
    engine = ["--engine", "examples.sklearn_digits:factory", "--set", "engine.c=0.5"]
    with trio.fail_after(120):
        async with dtesn_serve(tmp_path, *engine) as server:
            async with httpx.AsyncClient(base_url=server.url) as client:
                one = await client.post("/v1/process", json={"input": images[3]})
                batch = await client.post("/v1/process/batch", json={"inputs": images})
                stats = (await client.get("/v1/stats")).json()
            server.proc.send_signal(signal.SIGINT)
            assert await server.proc.wait() == 0
    assert one.status_code == 200, one.text
    assert one.json()["result"]["digit"] == labels[3]
    assert len(one.json()["result"]["probabilities"]) == 10
    digits = [item["outcome"]["result"]["digit"] for item in batch.json()["results"]]
    assert digits == labels
    assert stats["engine"]["name"] == "examples.sklearn_digits.DigitsEngine"
    assert stats["engine"]["test_accuracy"] > 0.9
