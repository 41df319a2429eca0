"""``JobsConfig``: the durable job store and its claimers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtesn_trio import _checks

__all__ = ["JobsConfig"]


@dataclass(frozen=True, slots=True)
class JobsConfig:
    """The ``[jobs]`` section.  Times are seconds.

    - ``enabled``: open the job store and ``POST /v1/jobs``.
    - ``backend``: ``"sqlite"`` (embedded, the default) or ``"postgres"``.
    - ``sqlite_path``: the database file of the SQLite backend.
    - ``workers``: claimers in this process, each running one job at a time (0: this
      process only accepts jobs; others run them).
    - ``lease_seconds``: a claimed job belongs to its claimer this long; the claimer
      renews the lease every third of it, and a job whose lease ran out (its process
      died) is claimed again.
    - ``poll_interval``: the safety-net poll for jobs submitted by other processes or
      whose retry delay ran out (submissions in this process wake a claimer at once).
    - ``max_attempts``: a job claimed this many times without finishing is failed (a
      poison job must not kill every restart).
    - ``retry_delay``: how long a job waits after a transient error (overloaded, rate
      limited, shutting down) when the error gives no ``retry_after``.
    - ``retain_finished``: a finished job (succeeded or failed) is deleted this long
      after it finished (None: kept however old); its idempotency key is then free.
    - ``max_finished_rows``: at most about this many finished jobs are kept, the
      newest (None: no limit).  Jobs that finished at the same instant go together.
    - ``sweep_interval``: how often the sweeper deletes what the two limits above
      allow; it deletes ``sweep_batch`` rows per statement, so claimers never wait long
      behind it, and pauses between statements so that they fill at most
      ``sweep_duty`` (0 < duty <= 1) of its time: after a statement that took t
      seconds, t x (1 - duty) / duty, and at least ``sweep_pause``.
    """

    enabled: bool = True
    backend: Literal["sqlite", "postgres"] = "sqlite"
    sqlite_path: str = "dtesn-jobs.db"
    workers: int = 2
    lease_seconds: float = 30.0
    poll_interval: float = 1.0
    max_attempts: int = 5
    retry_delay: float = 1.0
    retain_finished: float | None = 7 * 86400.0
    max_finished_rows: int | None = 1_000_000
    sweep_interval: float = 60.0
    sweep_batch: int = 1000
    sweep_pause: float = 0.05
    sweep_duty: float = 0.25

    def __post_init__(self) -> None:
        p = "jobs."
        if not isinstance(self.enabled, bool):
            raise ValueError(f"{p}enabled must be true or false (got {self.enabled!r})")
        _checks.one_of(p + "backend", self.backend, ("sqlite", "postgres"))
        if not isinstance(self.sqlite_path, str) or not self.sqlite_path:
            raise ValueError(f"{p}sqlite_path must be a non-empty path (got {self.sqlite_path!r})")
        _checks.integer(p + "workers", self.workers, minimum=0)
        _checks.positive(p + "lease_seconds", self.lease_seconds)
        _checks.positive(p + "poll_interval", self.poll_interval)
        _checks.integer(p + "max_attempts", self.max_attempts, minimum=1)
        _checks.non_negative(p + "retry_delay", self.retry_delay)
        if self.retain_finished is not None:
            _checks.positive(p + "retain_finished", self.retain_finished)
        if self.max_finished_rows is not None:
            _checks.integer(p + "max_finished_rows", self.max_finished_rows, minimum=0)
        _checks.positive(p + "sweep_interval", self.sweep_interval)
        _checks.integer(p + "sweep_batch", self.sweep_batch, minimum=1)
        _checks.non_negative(p + "sweep_pause", self.sweep_pause)
        _checks.positive(p + "sweep_duty", self.sweep_duty)
        _checks.in_range(p + "sweep_duty", self.sweep_duty, 0.0, 1.0)
