"""``dtesn-trio serve`` SIGKILLed while durable jobs are accepted but unfinished.

A real server process takes jobs while a client keeps submitting; it is killed with
SIGKILL (no release, no clean close) once some jobs are done and one is running, then
a new server is started on the same SQLite file.  The SQLite file itself is the
witness: triggers added by the test (before either server starts) append one audit
row per claim and one per recorded outcome, written in the same transaction as the
change they describe.  What must hold:

- every job that got a 202 is in the file and ends ``succeeded`` (none lost);
- each job's outcome was recorded exactly once (one audit row per job), and the jobs
  finished before the kill keep their ``finished_at`` and result unchanged;
- a job running at the kill was claimed twice (``attempts`` 2, once per process), the
  others once; the new server reports the requeued jobs as ``recovered``.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from dtesn_trio.jobs.sqlite import _SCHEMA

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
SETTINGS = {
    "model.reservoir_size": "64",
    "model.membrane_depth": "2",
    "admission.max_requests_per_second": "1000000",
    "admission.burst_limit": "100000",
    "queue.max_wait": "0.002",
    "shutdown_grace": "2",
}

AUDIT = """
CREATE TABLE job_audit (
    id TEXT NOT NULL, event TEXT NOT NULL, owner TEXT, attempts INTEGER,
    finished_at REAL, result BLOB
);
CREATE TRIGGER audit_claim AFTER UPDATE OF lease_owner ON dtesn_jobs
WHEN NEW.status = 'running' AND NEW.lease_owner IS NOT OLD.lease_owner
BEGIN
    INSERT INTO job_audit VALUES (NEW.id, 'claim', NEW.lease_owner, NEW.attempts, NULL, NULL);
END;
CREATE TRIGGER audit_finish AFTER UPDATE OF status ON dtesn_jobs
WHEN NEW.status IN ('succeeded', 'failed') AND OLD.status != NEW.status
BEGIN
    INSERT INTO job_audit
    VALUES (NEW.id, NEW.status, OLD.lease_owner, NEW.attempts, NEW.finished_at, NEW.result);
END;
"""


def _prepare(db: Path) -> None:
    with sqlite3.connect(db) as conn:
        conn.executescript("PRAGMA journal_mode=WAL;" + _SCHEMA + AUDIT)


def _query(db: Path, sql: str) -> list[Any]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


@asynccontextmanager
async def serve_process(tmp_path: Path, db: Path, workers: int) -> AsyncIterator[Any]:
    """``python -m dtesn_trio serve --port 0`` on ``db``; yields (process, base URL)."""
    sets = {**SETTINGS, "jobs.sqlite_path": str(db), "jobs.workers": str(workers)}
    argv = [sys.executable, "-m", "dtesn_trio", "serve", "--port", "0"]
    for key, value in sets.items():
        argv += ["--set", f"{key}={value}"]
    with (tmp_path / "serve.log").open("ab") as log:
        proc = await trio.lowlevel.open_process(
            argv, stdout=subprocess.PIPE, stderr=log, env=ENV, cwd=tmp_path
        )
        assert proc.stdout is not None
        seen = b""
        try:
            with trio.fail_after(60):
                while b"listening on " not in seen or not seen.endswith(b"\n"):
                    chunk = await proc.stdout.receive_some()
                    if not chunk:
                        raise AssertionError(f"serve exited: {seen!r}")
                    seen += chunk
            url = seen.decode().split("listening on ", 1)[1].split()[0]
            yield proc, url
        finally:
            if proc.returncode is None:
                proc.kill()
            with trio.move_on_after(10, shield=True):
                await proc.wait()


async def test_sigkill_with_jobs_accepted_but_unfinished(tmp_path: Path) -> None:
    db = tmp_path / "jobs.db"
    _prepare(db)
    text = "a durable job " * 100  # ~1.4 KB: a few ms of engine time each
    accepted: list[str] = []
    with trio.fail_after(100):
        async with (
            serve_process(tmp_path, db, workers=1) as (proc, url),
            httpx.AsyncClient(base_url=url, timeout=10) as client,
        ):

            async def submit_until_killed(k: int) -> None:
                n = k
                while True:
                    try:
                        r = await client.post("/v1/jobs", json={"input": f"{n} {text}"})
                    except httpx.TransportError:
                        return  # the server is gone: that job was not accepted
                    assert r.status_code == 202, r.text
                    accepted.append(r.json()["job_id"])
                    n += 4

            async with trio.open_nursery() as nursery:
                for k in range(4):  # four clients submitting at once
                    nursery.start_soon(submit_until_killed, k)
                while True:  # some done, one running, more queued: kill now
                    await trio.sleep(0.02)
                    store = (await client.get("/v1/stats")).json()["jobs"]["store"]
                    if store["succeeded"] >= 10 and store["running"] >= 1 and store["queued"] >= 20:
                        break
                proc.send_signal(signal.SIGKILL)
                await proc.wait()
        at_kill = {
            row[0]: row[1:]
            for row in _query(
                db, "SELECT id, status, finished_at, result, attempts FROM dtesn_jobs"
            )
        }
        running_at_kill = {i for i, row in at_kill.items() if row[0] == "running"}
        done_at_kill = {i for i, row in at_kill.items() if row[0] == "succeeded"}
        assert running_at_kill
        assert len(done_at_kill) >= 10
        assert len(at_kill) > len(done_at_kill) + len(running_at_kill)  # queued ones too

        restarted = trio.current_time()
        async with serve_process(tmp_path, db, workers=2) as (proc, url):
            async with httpx.AsyncClient(base_url=url, timeout=10) as client:
                while True:
                    stats = (await client.get("/v1/stats")).json()["jobs"]
                    if stats["store"]["succeeded"] == len(at_kill):
                        break
                    assert stats["store"]["failed"] == 0, stats
                    await trio.sleep(0.05)
                recovered = stats["recovered"]
                drained = trio.current_time() - restarted
                sample = (await client.get(f"/v1/jobs/{accepted[-1]}")).json()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0

    rows = {
        row[0]: row[1:]
        for row in _query(db, "SELECT id, status, finished_at, result, attempts FROM dtesn_jobs")
    }
    # None lost: every 202 is in the file, and every row in the file succeeded.
    assert set(accepted) <= set(rows)
    assert set(rows) == set(at_kill)
    assert {row[0] for row in rows.values()} == {"succeeded"}
    assert sample["status"] == "succeeded"
    assert sample["result"]["result"]["steps"] > 0
    # None completed twice: one recorded outcome per job, across both processes.
    finishes = _query(db, "SELECT id, COUNT(*) FROM job_audit WHERE event != 'claim' GROUP BY id")
    assert dict(finishes) == dict.fromkeys(rows, 1)
    # Finished before the kill: untouched by the second server.
    for job_id in done_at_kill:
        assert rows[job_id][1:3] == at_kill[job_id][1:3]
        assert rows[job_id][3] == 1
    # Running at the kill: claimed once by each process, requeued at start-up.
    claims = dict(
        _query(
            db, "SELECT id, COUNT(DISTINCT owner) FROM job_audit WHERE event = 'claim' GROUP BY id"
        )
    )
    for job_id in rows:
        expected = 2 if job_id in running_at_kill else 1
        assert claims[job_id] == expected, job_id
        assert rows[job_id][3] == expected
    assert recovered == len(running_at_kill)
    print(
        f"\njobs: {len(rows)} in the file ({len(accepted)} answered 202), at the kill"
        f" {len(done_at_kill)} done / {len(running_at_kill)} running; all succeeded, once,"
        f" {drained:.1f} s after the restart began"
    )
