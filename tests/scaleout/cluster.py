"""Several ``dtesn-trio serve`` processes sharing one Redis and one PostgreSQL.

The harness of the scale-out test and of ``benchmarks/scale_out.py``: start N servers
on 127.0.0.1 (port 0, each reports its URL on stdout), SIGKILL one by PID, stop the rest
gracefully (SIGTERM, then SIGKILL after a grace) -- and a soak target that spreads
requests round-robin over the servers and fails over on a refused connection, as a
load balancer with health checks would.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

from dtesn_trio.soak.http_client import HTTPClient, HTTPClientError, open_http_client
from dtesn_trio.soak.loadgen import RequestSpec
from dtesn_trio.soak.recorder import Outcome
from dtesn_trio.soak.targets import HTTPTarget, open_http_target

ROOT = Path(__file__).resolve().parents[2]

__all__ = [
    "ROOT",
    "RoundRobinTarget",
    "ServerProcess",
    "open_round_robin_target",
    "shared_settings",
    "start_servers",
    "stop_servers",
]


def shared_settings(redis_url: str, dsn: str, rates: str, instances: int) -> list[str]:
    """The ``--set`` flags every instance of one deployment shares."""
    return [
        f"redis.url={redis_url}",
        "shared_limit.enabled=true",
        f"shared_limit.rates={rates}",
        f"shared_limit.instances={instances}",
        "jobs.backend=postgres",
        f"postgres.dsn={dsn}",
    ]


class ServerProcess:
    """One ``python -m dtesn_trio serve --port 0`` child; stdout/stderr go to files."""

    def __init__(self, name: str, sets: Sequence[str], workdir: Path, port: int = 0) -> None:
        self.name = name
        self.out_path = workdir / f"{name}.out"
        self.err_path = workdir / f"{name}.err"
        argv = [sys.executable, "-m", "dtesn_trio", "serve", "--host", "127.0.0.1"]
        argv += ["--port", str(port), "--log-level", "warning"]
        for s in sets:
            argv += ["--set", s]
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        with self.out_path.open("wb") as out, self.err_path.open("wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, env=env, cwd=workdir)
        self.url: str | None = None
        self.remove_dir: Path | None = None  # deleted by stop_servers (logs included)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll_ready(self) -> bool:
        """True once the server printed its URL; raises if it exited first."""
        for line in self.out_path.read_text(errors="replace").splitlines():
            if line.startswith("dtesn-trio listening on "):
                self.url = line.rsplit(" ", 1)[1].strip()
                return True
        if self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.log()}")
        return False

    def log(self, chars: int = 3000) -> str:
        return self.err_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """SIGKILL: a crash, no clean-up of any kind."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, grace: float = 10.0, *, signalled: bool = False) -> None:
        """SIGTERM (graceful drain), SIGKILL after ``grace`` seconds.  ``signalled``: the
        SIGTERM was sent already -- a second one would mean "stop at once" (exit 130)."""
        if self.proc.poll() is None:
            if not signalled:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def start_servers(
    count: int,
    sets: Sequence[str],
    *,
    timeout: float = 60.0,
    workdir: Path | None = None,
    port: int = 0,
) -> list[ServerProcess]:
    """Start ``count`` servers at once and wait until each listens (or raise)."""
    own_dir = workdir is None
    workdir = workdir or Path(tempfile.mkdtemp(prefix="dtesn-scaleout-"))
    servers = [ServerProcess(f"server-{i}", sets, workdir, port) for i in range(count)]
    if own_dir:
        for s in servers:
            s.remove_dir = workdir
    deadline = time.monotonic() + timeout
    try:
        while not all(s.poll_ready() for s in servers):
            if time.monotonic() > deadline:
                raise RuntimeError(f"servers not ready after {timeout:g} s")
            time.sleep(0.05)
    except BaseException:
        stop_servers(servers, grace=2.0)
        raise
    return servers


def stop_servers(servers: Iterable[ServerProcess], *, grace: float = 10.0) -> None:
    """Stop every server still running: all SIGTERMed at once, then waited for."""
    servers = list(servers)
    alive = [s for s in servers if s.proc.poll() is None]
    for s in alive:
        s.proc.send_signal(signal.SIGTERM)
    for s in alive:
        s.stop(grace, signalled=True)
    for d in {s.remove_dir for s in servers if s.remove_dir is not None}:
        shutil.rmtree(d, ignore_errors=True)


class RoundRobinTarget:
    """A soak target over several servers: request k goes to server k mod N; a refused
    connection (the server is gone) moves the request to the next server."""

    kind = "http"

    def __init__(self, targets: Sequence[HTTPTarget]) -> None:
        self.targets = list(targets)
        self._next = itertools.count()
        self.failovers = 0

    async def call(self, request: RequestSpec) -> Outcome:
        first = next(self._next)
        outcome = Outcome(0, "connect_error")
        for i in range(len(self.targets)):
            outcome = await self.targets[(first + i) % len(self.targets)].call(request)
            if outcome.code != "connect_error":
                return outcome
            self.failovers += 1
        return outcome

    async def sample(self) -> dict[str, Any]:
        return await self.targets[0].sample()

    def describe(self) -> dict[str, Any]:
        return {"kind": "http", "urls": [t.url for t in self.targets]}


@asynccontextmanager
async def open_round_robin_target(urls: Sequence[str]) -> AsyncIterator[RoundRobinTarget]:
    async with AsyncExitStack() as stack:
        targets = [await stack.enter_async_context(open_http_target(url)) for url in urls]
        yield RoundRobinTarget(targets)


@asynccontextmanager
async def open_clients(urls: Sequence[str]) -> AsyncIterator[list[HTTPClient]]:
    """One keep-alive client per server (for job submissions and stats)."""
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(open_http_client(url)) for url in urls]


async def post_with_failover(
    clients: Sequence[HTTPClient],
    first: int,
    path: str,
    payload: Any,
    headers: Sequence[tuple[bytes, bytes]] = (),
) -> tuple[int, Any]:
    """POST to server ``first``; if its connection is refused or dropped before the
    answer (the server died), to the next one.  Returns ``(server index, response)``.

    A dropped POST may have taken effect: retrying it elsewhere does it twice unless
    the request is idempotent (``Idempotency-Key`` for ``/v1/jobs``)."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    all_headers = [(b"content-type", b"application/json"), *headers]
    for i in range(len(clients)):
        k = (first + i) % len(clients)
        try:
            return k, await clients[k].request("POST", path, body, all_headers)
        except HTTPClientError as exc:
            if exc.kind not in ("connect_error", "connection_closed"):
                raise
    raise RuntimeError("every server refused the connection")
