"""Durable jobs: ``JobsConfig``, the ``JobStore`` protocol, ``SQLiteJobStore`` and
``open_job_service`` / ``JobService``."""

from dtesn_trio.jobs.config import JobsConfig
from dtesn_trio.jobs.postgres import PostgresJobStore
from dtesn_trio.jobs.service import (
    JobService,
    JobServiceStatistics,
    ProcessFn,
    SweepReport,
    open_job_service,
    owner_is_dead,
)
from dtesn_trio.jobs.sqlite import SQLiteJobStore
from dtesn_trio.jobs.store import JobRecord, JobStatus, JobStore, PurgeCursor

__all__ = [
    "JobRecord",
    "JobService",
    "JobServiceStatistics",
    "JobStatus",
    "JobStore",
    "JobsConfig",
    "PostgresJobStore",
    "ProcessFn",
    "PurgeCursor",
    "SQLiteJobStore",
    "SweepReport",
    "open_job_service",
    "owner_is_dead",
]
