"""``JobRecord`` and the ``JobStore`` protocol every backend implements.

The protocol is small on purpose: one row per job, claimed with a lease.  A backend
makes each method atomic (SQLite: one statement; PostgreSQL: ``FOR UPDATE SKIP
LOCKED``), and every method that changes a row commits before it returns.

Time: each row's times (``created_at``, ``lease_expires``, ``finished_at``, ...) are
seconds on *the store's clock*.  A method that needs "now" is given the caller's wall
clock (``now``); a store that has a clock of its own -- PostgreSQL, shared by every
instance -- ignores it and uses its server's ``now()``, so instances whose clocks
disagree still agree on when a lease runs out.  SQLite (one host) uses ``now``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, Literal, Protocol

import msgspec

__all__ = [
    "COLUMNS",
    "PURGE_START",
    "JobRecord",
    "JobStatus",
    "JobStore",
    "PurgeCursor",
    "record_from_row",
]

JobStatus = Literal["queued", "running", "succeeded", "failed"]
FINISHED: frozenset[str] = frozenset({"succeeded", "failed"})
# Where a purge stopped: (finished_at, row key) of the last row it deleted -- the row
# key is an integer that orders rows with equal times (PostgreSQL's seq, SQLite's rowid).
PurgeCursor = tuple[float, int]
# Before every row: purging from here starts at the oldest.
PURGE_START: PurgeCursor = (float("-inf"), -(2**63))


@dataclasses.dataclass(frozen=True, slots=True)
class JobRecord:
    """One job as stored.  Times are seconds since the epoch on the store's clock (see
    the module docstring).  ``error`` is a DTESNError body (``code``, ``message``, ...).
    ``payload_hash`` is the hash of the canonical payload of a job submitted with an
    idempotency key (None otherwise, and for rows stored before hashes were kept)."""

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
    payload_hash: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


class JobStore(Protocol):
    """Where jobs live.  ``now``: the caller's wall clock (see the module docstring)."""

    async def setup(self) -> None:
        """Create (or migrate) the tables if needed."""

    async def id_key(self) -> bytes:
        """The deployment's secret for signing job ids: made once by the first
        ``setup`` and kept in the database, so every instance signs alike."""

    async def insert(self, record: JobRecord) -> tuple[JobRecord, bool]:
        """Store a new queued job; committed when this returns.  Returns the row as
        stored and True, or -- when a job with this id exists already (an idempotent
        resubmission) -- that job as it is now and False, writing nothing."""

    async def get(self, job_id: str) -> JobRecord | None:
        """The job, or None."""

    async def claim(self, owner: str, now: float, lease_seconds: float) -> JobRecord | None:
        """Take the oldest runnable job (queued and available, or running with its lease
        run out): mark it running for ``owner`` for ``lease_seconds`` and count the
        attempt.  None if there is none."""

    async def renew(self, job_id: str, owner: str, now: float, lease_seconds: float) -> bool:
        """Extend ``owner``'s lease to ``lease_seconds`` from now; False if the job is no
        longer ``owner``'s."""

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

    async def release(self, job_id: str, owner: str, now: float, delay: float) -> bool:
        """Put ``owner``'s running job back in the queue, runnable ``delay`` seconds from
        now; the attempt does not count (the job was refused or stopped, it did not
        crash)."""

    async def recover(self, is_dead: Callable[[str], bool]) -> int:
        """Requeue running jobs whose owner ``is_dead``; return how many."""

    async def counts(self) -> dict[str, int]:
        """Jobs per status."""

    async def next_delay(self, now: float) -> float | None:
        """Seconds until the earliest queued job is runnable (0 if one is now; None:
        none queued)."""

    async def purge_horizon(
        self, retain_seconds: float | None, max_finished: int | None, now: float
    ) -> float | None:
        """The ``finished_at`` at or before which finished jobs are past the retention
        policy: older than ``retain_seconds``, or not among the newest
        ``max_finished`` finished jobs.  None when nothing is."""

    async def purge(
        self, horizon: float, limit: int, after: PurgeCursor | None = None
    ) -> tuple[int, PurgeCursor | None]:
        """Delete at most ``limit`` finished jobs that finished at or before
        ``horizon``, oldest first in (``finished_at``, row key) order and past
        ``after`` in it, skipping rows another transaction holds; return how many and
        the place of the last one deleted (None if none was).  One short statement:
        call it again with that place as ``after`` for the next batch, so each batch
        starts where the last one ended instead of stepping again over the index
        entries of the rows already deleted."""


# The column order every SQL backend selects, and the decoding of such a row.
COLUMNS = (
    "id, status, payload, result, error, attempts, created_at, started_at, finished_at,"
    " lease_owner, lease_expires, available_at, payload_hash"
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
        payload_hash=row[12],
    )
