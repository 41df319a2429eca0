"""Real servers for the tests: redis-server on a free port, started and stopped by PID.

Used from ``conftest.py`` fixtures; fault tests call ``stop()`` / ``start()`` themselves.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class RedisServer:
    """One redis-server process on 127.0.0.1 that the tests own."""

    def __init__(self, port: int | None = None) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed; scripts/test installs it")
        self.exe = exe
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="dtesn-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}"

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = subprocess.Popen(
            [
                self.exe,
                "--port",
                str(self.port),
                "--bind",
                self.host,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.dir),
                "--maxclients",
                "20000",
                "--protected-mode",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                if self.command("PING") == "PONG":
                    return
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self) -> None:
        """Kill the server (SIGKILL: a crash, not a polite shutdown)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=10)
        self.proc = None

    def command(self, *args: str) -> str:
        """One command over a fresh blocking socket; returns the reply as text."""
        payload = f"*{len(args)}\r\n".encode()
        for a in args:
            b = a.encode()
            payload += b"$%d\r\n%s\r\n" % (len(b), b)
        with socket.create_connection((self.host, self.port), timeout=5) as s:
            s.sendall(payload)
            data = b""
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if _complete(data):
                    break
        return _decode(data)

    def client_count(self, *, name: str | None = None) -> int:
        """Clients connected now, excluding the connection asking (optionally by name)."""
        lines = [ln for ln in self.command("CLIENT", "LIST").splitlines() if ln.strip()]
        others = [ln for ln in lines if "cmd=client|list" not in ln]
        if name is not None:
            others = [ln for ln in others if f" name={name} " in f" {ln} "]
        return len(others)

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _complete(data: bytes) -> bool:
    if data[:1] in (b"+", b"-", b":"):
        return data.endswith(b"\r\n")
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        n = int(head[1:])
        return n < 0 or len(rest) >= n + 2
    return False


def _decode(data: bytes) -> str:
    if data[:1] in (b"+", b":"):
        return data[1:-2].decode()
    if data[:1] == b"-":
        raise RuntimeError(data[1:-2].decode())
    if data[:1] == b"$":
        head, _, rest = data.partition(b"\r\n")
        n = int(head[1:])
        return "" if n < 0 else rest[:n].decode()
    raise RuntimeError(f"unexpected reply {data[:40]!r}")


def _postgres_bin(name: str) -> str:
    found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}"))
    if found:
        return str(found[-1])
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"PostgreSQL's {name} is not installed; scripts/test installs it")
    return exe


class PostgresServer:
    """A throw-away PostgreSQL cluster on a free port, run as the ``postgres`` user.

    PostgreSQL refuses to run as root, so when we are root the cluster is created and
    started through ``runuser -u postgres``; the data directory is deleted on close.
    """

    def __init__(self) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.user = "dtesn"
        self.password = "dtesn"
        self.database = "dtesn"
        self.dir = Path(tempfile.mkdtemp(prefix="dtesn-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen[bytes] | None = None
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.dir, user="postgres", group="postgres")

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}:{self.password}@{self.host}:{self.port}/{self.database}"

    def _run(self, argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        return subprocess.run(argv, check=True, capture_output=True, **kw)  # type: ignore[call-overload, no-any-return]

    def start(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        if not (self.data / "PG_VERSION").exists():
            pwfile = self.dir / "pw"
            pwfile.write_text(self.password + "\n")
            if self._as_postgres:
                shutil.chown(pwfile, user="postgres", group="postgres")
            self._run(
                [
                    _postgres_bin("initdb"),
                    "-D",
                    str(self.data),
                    "-U",
                    self.user,
                    "--pwfile",
                    str(pwfile),
                    "-A",
                    "md5",
                    "-E",
                    "UTF8",
                    "--no-sync",
                ]
            )
        argv = [
            _postgres_bin("postgres"),
            "-D",
            str(self.data),
            "-p",
            str(self.port),
            "-h",
            self.host,
            "-k",
            str(self.dir),
            "-c",
            "fsync=off",
            # synchronous_commit stays on: with fsync off it costs a write to the page
            # cache, and an immediate stop (the fault tests') then loses no commit --
            # off, the last ~0.5 s of commits (a migration, a job) vanished on restart.
            "-c",
            "full_page_writes=off",
            "-c",
            "max_connections=300",
        ]
        if self._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.proc.returncode}")
            ready = subprocess.run(
                [_postgres_bin("pg_isready"), "-h", self.host, "-p", str(self.port)],
                capture_output=True,
            )
            if ready.returncode == 0:
                self._ensure_database()
                return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"postgres did not start on port {self.port}")

    def _ensure_database(self) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        psql = [_postgres_bin("psql"), "-h", self.host, "-p", str(self.port), "-U", self.user]
        found = subprocess.run(
            [
                *psql,
                "-d",
                "postgres",
                "-tAc",
                f"SELECT 1 FROM pg_database WHERE datname='{self.database}'",
            ],
            capture_output=True,
            env=env,
            check=True,
        )
        if found.stdout.strip() != b"1":
            subprocess.run(
                [*psql, "-d", "postgres", "-c", f"CREATE DATABASE {self.database}"],
                capture_output=True,
                env=env,
                check=True,
            )

    def stop(self) -> None:
        """SIGKILL the postmaster (runuser forwards it) and wait for it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            # runuser's child is the postmaster: stop it politely first so shared
            # memory is released, then make sure.
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run(
                    [_postgres_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
                )
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=10)
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
