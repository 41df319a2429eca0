"""Servers as subprocesses for the reliability benchmarks (overload, concurrency, soak).

``start_dtesn(nursery, sets)`` runs ``python -m dtesn_trio serve --port 0 --set ...`` and
``start_peer(nursery, ...)`` runs ``benchmarks/peer_fastapi.py`` (FastAPI on uvicorn);
both return a `Server` once it listens (its URL read from its stdout).  Each runs in a
session of its own and is stopped by its PID (SIGTERM, then SIGKILL after a grace).
Their stderr goes to a temporary file, shown when a server fails to start.
"""

from __future__ import annotations

import json
import os
import re
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import IO, Any

import trio

ROOT = Path(__file__).resolve().parents[1]
_HTTP_SCRIPT = ROOT / "benchmarks" / "http.py"
_URL = re.compile(rb"(http://[0-9a-zA-Z.\[\]:-]+:\d+)")


def raise_nofile(wanted: int = 65536) -> int:
    """Raise this process's open-file limit (inherited by children) toward ``wanted``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int | None:
    """Resident set size of process ``pid`` (Linux), or None once it is gone."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def cpu_seconds_of(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` (all its threads), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return ticks / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float | None:
    """CPU seconds of process ``pid`` and of its live child processes (the engine's
    worker processes), or None."""
    total = cpu_seconds_of(pid)
    if total is None:
        return None
    children: set[int] = set()
    try:
        for task in os.listdir(f"/proc/{pid}/task"):  # any thread may have started one
            with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                children.update(int(c) for c in f.read().split())
    except (OSError, ValueError):
        return total
    return total + sum(cpu_seconds_of(c) or 0.0 for c in children)


def thread_cpu_seconds(pid: int) -> tuple[float, float] | None:
    """CPU seconds of process ``pid``'s main thread (the event loop) and of all its other
    threads together (the engine's workers), or None."""
    main = other = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        seconds = (int(fields[11]) + int(fields[12])) / tick
        if int(tid) == pid:
            main += seconds
        else:
            other += seconds
    return main, other


@dataclass
class Server:
    """A running server subprocess."""

    name: str
    url: str
    process: trio.Process
    log: IO[bytes]

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, lines: int = 20) -> str:
        self.log.flush()
        self.log.seek(0)
        return b"\n".join(self.log.read().splitlines()[-lines:]).decode("utf-8", "replace")

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM by PID, SIGKILL after ``grace``; always reaps the process."""
        proc = self.process
        if proc.returncode is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            with trio.move_on_after(grace, shield=True):
                await proc.wait()
            if proc.returncode is None:
                try:
                    os.kill(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                with trio.CancelScope(shield=True):
                    await proc.wait()
        self.log.close()


async def _start(
    nursery: trio.Nursery,
    name: str,
    cmd: Sequence[str],
    env: Mapping[str, str],
    startup_timeout: float,
) -> Server:
    log = tempfile.TemporaryFile(prefix=f"bench-{name}-")  # noqa: SIM115 (closed by stop)
    proc: trio.Process = await nursery.start(
        partial(
            trio.run_process,
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=log,
            check=False,
            start_new_session=True,
            env=dict(env),
        )
    )
    assert proc.stdout is not None
    buf = b""
    server = Server(name, "", proc, log)
    try:
        with trio.fail_after(startup_timeout):
            while (match := _URL.search(buf)) is None:
                chunk = await proc.stdout.receive_some(4096)
                if not chunk:
                    raise RuntimeError(f"{name} exited before listening:\n{server.log_tail()}")
                buf += chunk
    except BaseException:
        await server.stop(grace=1.0)
        raise
    server.url = match.group(1).decode()
    # Keep draining its stdout so a chatty server never blocks on a full pipe.
    nursery.start_soon(_drain, proc.stdout)
    return server


async def _drain(stream: trio.abc.ReceiveStream) -> None:
    try:
        while await stream.receive_some(65536):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DTESN_")}
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra or {})
    return env


async def start_dtesn(
    nursery: trio.Nursery,
    sets: Sequence[str],
    *,
    name: str = "dtesn",
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60.0,
) -> Server:
    """``dtesn-trio serve --port 0`` with ``--set`` overrides; returns once it listens."""
    cmd = [sys.executable, "-m", "dtesn_trio", "serve", "--port", "0", "--log-level", "warning"]
    for s in sets:
        cmd += ["--set", s]
    return await _start(nursery, name, cmd, _env(env), startup_timeout)


async def start_peer(
    nursery: trio.Nursery,
    *,
    reservoir_size: int,
    membrane_depth: int,
    blas_threads: int | None = 1,
    name: str = "peer",
    startup_timeout: float = 60.0,
) -> Server:
    """The FastAPI/uvicorn peer (``benchmarks/peer_fastapi.py``) on a free port.

    ``blas_threads=1`` sets ``OPENBLAS_NUM_THREADS=1`` (and the other BLAS variables), as
    a careful user would; ``None`` leaves BLAS at its default (one thread per core).
    """
    from _deps import require

    require("fastapi", "uvicorn")
    extra: dict[str, str] = {}
    env = _env()
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        env.pop(var, None)
        if blas_threads is not None:
            extra[var] = str(blas_threads)
    env.update(extra)
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "peer_fastapi.py"),
        "--port",
        "0",
        "--reservoir-size",
        str(reservoir_size),
        "--membrane-depth",
        str(membrane_depth),
    ]
    return await _start(nursery, name, cmd, env, startup_timeout)


def describe_env() -> dict[str, Any]:
    """The machine, for the record: cores and the 1-minute load average at the start."""
    return {"cores": os.cpu_count(), "loadavg_1m": round(os.getloadavg()[0], 2)}


async def run_http_load(url: str, path: str, duration: float, concurrency: int) -> dict[str, Any]:
    """``benchmarks/http.py``'s closed-loop load generator (``--client``), in a process of
    its own, against ``url + path``; its JSON result."""
    cmd = [
        sys.executable,
        str(_HTTP_SCRIPT),
        "--client",
        url,
        "--client-path",
        path,
        "--duration",
        str(duration),
        "--concurrency",
        str(concurrency),
    ]
    proc = await trio.run_process(
        cmd,
        capture_stdout=True,
        capture_stderr=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"load generator failed: {proc.stderr.decode()[-2000:]}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result
