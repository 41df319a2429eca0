"""``JobRecord`` and the ``JobStore`` protocol every backend implements.

The protocol is small on purpose: one row per job, claimed with a lease.  A backend
makes each method atomic (SQLite: one statement; PostgreSQL: ``FOR UPDATE SKIP
LOCKED``), and every method that changes a row commits before it returns.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import msgspec

__all__ = ["COLUMNS", "JobRecord", "JobStatus", "JobStore", "record_from_row"]

JobStatus = Literal["queued", "running", "succeeded", "failed"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed"})


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored.  Times are wall-clock seconds (``time.time()``), because
    several processes read them.  ``error`` is a DTESNError body (``code``,
    ``message``, ...)."""

    id: str
    status: JobStatus
    payload: dict[str, Any]
    created_at: float
    attempts: int = 0
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    started_at: float | None = None
    finished_at: float | None = None
    lease_owner: str | None = None
    lease_expires: float | None = None
    available_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore(Protocol):
    """Where jobs live.  ``now`` arguments are wall-clock seconds."""

    async def setup(self) -> None:
        """Create the tables if they do not exist."""

    async def insert(self, record: JobRecord) -> bool:
        """Store a new queued job; committed when this returns.  False (and nothing
        written) when a job with this id exists already: an idempotent resubmission."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    async def claim(self, owner: str, now: float, lease_seconds: float) -> JobRecord | None:
        """Take the oldest runnable job (queued and available, or running with its lease
        run out): mark it running for ``owner`` until ``now + lease_seconds`` and count
        the attempt.  None if there is none."""

    async def renew(self, job_id: str, owner: str, lease_expires: float) -> bool:
        """Extend ``owner``'s lease; False if the job is no longer ``owner``'s."""

    async def finish(
        self,
        job_id: str,
        owner: str,
        now: float,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> bool:
        """Record the outcome (succeeded with ``result``, or failed with ``error``) iff
        the job is still running under ``owner``.  True exactly once per job."""

    async def release(self, job_id: str, owner: str, available_at: float) -> bool:
        """Put ``owner``'s running job back in the queue, runnable from ``available_at``;
        the attempt does not count (the job was refused or stopped, it did not crash)."""

    async def recover(self, is_dead: Callable[[str], bool]) -> int:
        """Requeue running jobs whose owner ``is_dead``; return how many."""

    async def counts(self) -> dict[str, int]:
        """Jobs per status."""

    async def next_available(self) -> float | None:
        """The earliest ``available_at`` of a queued job (None: none queued)."""


# The column order every SQL backend selects, and the decoding of such a row.
COLUMNS = (
    "id, status, payload, result, error, attempts, created_at, started_at, finished_at,"
    " lease_owner, lease_expires, available_at"
)
_decode_dict = msgspec.json.Decoder(dict[str, Any])


def record_from_row(row: Sequence[Any]) -> JobRecord:
    """A ``JobRecord`` from a row of ``COLUMNS`` (JSON columns as text or bytes)."""
    return JobRecord(
        id=row[0],
        status=row[1],
        payload=_decode_dict.decode(row[2]),
        result=None if row[3] is None else _decode_dict.decode(row[3]),
        error=None if row[4] is None else _decode_dict.decode(row[4]),
        attempts=row[5],
        created_at=row[6],
        started_at=row[7],
        finished_at=row[8],
        lease_owner=row[9],
        lease_expires=row[10],
        available_at=row[11],
    )
