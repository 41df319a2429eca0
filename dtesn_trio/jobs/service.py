"""``open_job_service``: durable jobs, claimed from a ``JobStore`` by claimer tasks.

Life of a job: ``submit`` inserts a queued row (committed before it returns, so an HTTP
202 always follows a commit) and wakes a claimer; the claimer takes the row with a lease,
runs ``process(payload)`` while renewing the lease, and records the outcome with a write
that succeeds only if the row is still running under its own lease -- so an outcome is
recorded exactly once even if a lease ran out and another process took the job over.

Start-up requeues the jobs left running by a process that is gone: an owner in this
PID domain (same host, boot and PID namespace: ``_pid_domain``) whose PID is not alive
(or, for this process, a service that is closed).  Jobs of owners anywhere else --
other hosts, other containers -- are taken over when their lease runs out; a running
service does the same for a sibling that died (SIGKILL, OOM, power loss), so the
longest a dead instance's job waits is ``jobs.lease_seconds`` plus one poll interval.
Leases are timed by the store's clock: PostgreSQL's ``now()``, one clock for every
instance (the instance's own ``wall_clock`` does not matter); SQLite, on one host, by
``wall_clock``.

Retention: a sweeper task deletes finished jobs older than ``jobs.retain_finished``
and beyond the newest ``jobs.max_finished_rows``, every ``jobs.sweep_interval``, in
batches of ``jobs.sweep_batch`` rows (one short statement each), paced so that its
statements fill at most ``jobs.sweep_duty`` of the sweep's time.  Job ids are signed
with a key kept in the store, so ``issued`` tells a purged job's id from one that
never existed without keeping anything of the deleted row.

Errors: a transient refusal (overloaded, rate limited, circuit open, backend down)
puts the job back with a delay; ``ShuttingDown`` puts it back and stops that claimer; any
other ``DTESNError`` fails the job with its error body; an unexpected exception is logged
and fails the job with ``internal_error``.  When the store itself fails
(``BackendUnavailable``: PostgreSQL went away), the claimer logs it, leaves the job to
its lease and carries on.  Cancellation records nothing: on a graceful
stop the lease is released (shielded, bounded) so the job is runnable at once; on a
hard stop the row stays leased and the next start requeues it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import logging
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
import trio

from dtesn_trio.errors import (
    BackendUnavailable,
    CircuitOpen,
    DTESNError,
    IdempotencyConflict,
    Overloaded,
    RateLimited,
    ShuttingDown,
)
from dtesn_trio.jobs.config import JobsConfig
from dtesn_trio.jobs.store import JobRecord, JobStore, PurgeCursor

__all__ = ["JobService", "JobServiceStatistics", "ProcessFn", "SweepReport", "open_job_service"]

logger = logging.getLogger("dtesn_trio.jobs")

ProcessFn = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

_TRANSIENT = (Overloaded, RateLimited, CircuitOpen, BackendUnavailable)
_RELEASE_GRACE = 2.0
# A job id is 32 hex digits: a nonce (random, or derived from the idempotency key) and
# a MAC of it under the store's id key.
_NONCE_HEX = 20
_ID_HEX = 32
_canonical = msgspec.json.Encoder(order="sorted")


def payload_hash(payload: dict[str, Any]) -> str:
    """The hash of ``payload``'s canonical JSON (keys sorted): equal payloads, equal
    hashes, whatever the order the client wrote the keys in."""
    return hashlib.sha256(_canonical.encode(payload)).hexdigest()


# Owners of the job services open in this process.  Deliberately process-wide, not a
# RunVar: a job row is owned by a process (the SQLite file may be shared by several
# trio runs), and start-up must tell "closed service of this process" from "live one".
_LIVE_OWNERS: set[str] = set()


def _pid_domain() -> str:
    """Where this process's PID means something: the host name, plus the kernel's boot
    id and the PID namespace when Linux tells us.

    A hostname alone is not enough to trust a PID check: containers on one machine
    (or on several, with a fixed ``hostname:``) share a name while each has its own
    PID space -- often PID 1 each.  Judged by name only, an instance starting in one
    would see a live sibling's PID as dead (or as itself) and requeue jobs that are
    still running.  Owners from another domain are left to their leases.
    """
    parts = [socket.gethostname().replace(":", "_").replace("/", "_") or "host"]
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            parts.append(f.read().strip()[:8])
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        pass  # not Linux (or no /proc): the host name is all we have
    return "/".join(parts)


_HOST = _pid_domain()


def _new_owner() -> str:
    return f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:12]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def owner_is_dead(owner: str) -> bool:
    """Whether the claimer ``owner`` certainly no longer runs (see the module docstring)."""
    host, _, rest = owner.partition(":")
    pid_text, _, _token = rest.partition(":")
    if host != _HOST or not pid_text.isdigit():
        return False  # another machine or container: its lease decides
    pid = int(pid_text)
    if pid == os.getpid():
        return owner not in _LIVE_OWNERS
    return not _pid_alive(pid)


@dataclasses.dataclass(frozen=True, slots=True)
class JobServiceStatistics:
    """Counters of this service since it opened (this process only)."""

    owner: str
    workers: int
    busy: int
    submitted: int
    claimed: int
    succeeded: int
    failed: int
    retried: int
    lost_leases: int
    recovered: int
    sweeps: int
    purged: int


@dataclasses.dataclass(frozen=True, slots=True)
class SweepReport:
    """One sweep: when it started (Trio's clock), the rows it deleted, the statements."""

    started_at: float
    deleted: int
    batches: int


def sweep_pause(config: JobsConfig, took: float) -> float:
    """The sweeper's pause after a purge statement that took ``took`` seconds: long
    enough that statements fill at most ``jobs.sweep_duty`` of the sweep's time (so
    when the database is slow -- loaded by claimers, or by a busy machine -- the sweep
    slows down with it instead of taking a larger share), and at least
    ``jobs.sweep_pause``."""
    return max(config.sweep_pause, took * (1.0 - config.sweep_duty) / config.sweep_duty)


class JobService:
    """Submit and look up durable jobs.  Made by ``open_job_service`` only."""

    def __init__(
        self,
        store: JobStore,
        process: ProcessFn,
        config: JobsConfig,
        owner: str,
        wall_clock: Callable[[], float],
        id_key: bytes,
    ) -> None:
        self.config = config
        self.owner = owner
        self._store = store
        self._process = process
        self._now = wall_clock
        self._id_key = id_key
        self._wake = trio.Event()
        self._swept = trio.Event()
        self._last_sweep: SweepReport | None = None
        self._sweeps = 0
        self._purged = 0
        self._busy = 0
        self._submitted = 0
        self._claimed = 0
        self._succeeded = 0
        self._failed = 0
        self._retried = 0
        self._lost_leases = 0
        self._recovered = 0

    # ------------------------------------------------------------------ public API

    async def submit(
        self, payload: dict[str, Any], *, idempotency_key: str | None = None
    ) -> JobRecord:
        """Store a new job and wake a claimer; the row is committed when this returns.
        ``enqueue`` without its second answer."""
        record, _ = await self.enqueue(payload, idempotency_key=idempotency_key)
        return record

    async def enqueue(
        self, payload: dict[str, Any], *, idempotency_key: str | None = None
    ) -> tuple[JobRecord, bool]:
        """Store a new job and wake a claimer; return it and whether this call stored
        it.  The row is committed when this returns.

        With an ``idempotency_key``, the job id is derived from the key, so submitting
        again with the same key and the same payload -- a client retrying after a lost
        answer, on this instance or another -- returns the job stored the first time
        (as it is now, and False) instead of adding a second one.  The same key with a
        different payload raises ``IdempotencyConflict``.  A key is free again once its
        job has been purged (``jobs.retain_finished``).
        """
        while True:
            if idempotency_key is None:
                nonce, digest = secrets.token_hex(_NONCE_HEX // 2), None
            else:
                nonce = hashlib.sha256(idempotency_key.encode()).hexdigest()[:_NONCE_HEX]
                digest = payload_hash(payload)
            record = JobRecord(
                id=self._sign(nonce),
                status="queued",
                payload=payload,
                created_at=self._now(),
                payload_hash=digest,
            )
            stored, created = await self._store.insert(record)
            if created:
                self._submitted += 1
                self._wake_claimers()
                return stored, True
            if idempotency_key is not None:
                # Rows stored before hashes were kept have none: trust the key.
                if stored.payload_hash not in (None, digest):
                    raise IdempotencyConflict(
                        f"Idempotency-Key {idempotency_key!r} was used for job {stored.id}"
                        " with a different payload; a new job needs a new key",
                        field="Idempotency-Key",
                    )
                return stored, False
            # Two random nonces collided (80 bits): draw again.

    def _sign(self, nonce: str) -> str:
        mac = hmac.new(self._id_key, nonce.encode(), hashlib.sha256).hexdigest()
        return nonce + mac[: _ID_HEX - _NONCE_HEX]

    def issued(self, job_id: str) -> bool:
        """Whether ``job_id`` is an id this deployment made (signed with the store's id
        key): a job that ``get`` no longer finds was then deleted -- purged by the
        retention policy -- rather than never submitted."""
        if len(job_id) != _ID_HEX:
            return False
        return hmac.compare_digest(self._sign(job_id[:_NONCE_HEX]), job_id)

    def retention(self) -> str:
        """The retention policy in words, for messages about expired jobs."""
        config = self.config
        rules = []
        if config.retain_finished is not None:
            rules.append(f"for {config.retain_finished:g} s (jobs.retain_finished)")
        if config.max_finished_rows is not None:
            rules.append(
                f"while among the newest {config.max_finished_rows} (jobs.max_finished_rows)"
            )
        if not rules:
            return "finished jobs are kept (no retention limit is set now)"
        return "finished jobs are kept " + " and ".join(rules)

    async def get(self, job_id: str) -> JobRecord | None:
        """The job ``job_id`` as stored now, or None."""
        return await self._store.get(job_id)

    async def counts(self) -> dict[str, int]:
        """Jobs per status in the store (all processes)."""
        return await self._store.counts()

    def statistics(self) -> JobServiceStatistics:
        return JobServiceStatistics(
            owner=self.owner,
            workers=self.config.workers,
            busy=self._busy,
            submitted=self._submitted,
            claimed=self._claimed,
            succeeded=self._succeeded,
            failed=self._failed,
            retried=self._retried,
            lost_leases=self._lost_leases,
            recovered=self._recovered,
            sweeps=self._sweeps,
            purged=self._purged,
        )

    def get_stats(self) -> dict[str, Any]:
        return dataclasses.asdict(self.statistics())

    # ------------------------------------------------------------------ claimers

    def _wake_claimers(self) -> None:
        self._wake.set()
        self._wake = trio.Event()

    async def _claimer(self) -> None:
        while True:
            # Taken before the query: a submit that commits while we query sets this
            # very event, so its wake-up is never lost.
            wake = self._wake
            try:
                job = await self._store.claim(self.owner, self._now(), self.config.lease_seconds)
            except DTESNError as exc:
                logger.warning("job claim failed: %s", exc)
                job = None
            if job is None:
                with trio.move_on_after(await self._idle_wait()):
                    await wake.wait()
                continue
            self._claimed += 1
            try:
                if not await self._run(job):
                    return
            except DTESNError as exc:
                # The store went away while recording the outcome (``_run`` already
                # tried to give the job back).  The job's lease runs out and it is
                # claimed again; this claimer carries on instead of taking the
                # service (and the server) down with it.
                logger.warning("job %s: could not record its outcome: %s", job.id, exc)
                with trio.move_on_after(self.config.retry_delay):
                    await self._wake.wait()

    async def _idle_wait(self) -> float:
        """Sleep no longer than the poll interval, nor past a delayed job's time."""
        try:
            delay = await self._store.next_delay(self._now())
        except DTESNError:
            delay = None
        wait = self.config.poll_interval
        if delay is not None:
            wait = min(wait, delay + 0.001)
        return wait

    async def _run(self, job: JobRecord) -> bool:
        """Run one claimed job; False when the claimer should stop (shutting down)."""
        if job.attempts > self.config.max_attempts:
            poisoned = {
                "code": "too_many_attempts",
                "message": f"the job was started {job.attempts - 1} times without finishing",
            }
            await self._finish(job, error=poisoned)
            return True
        self._busy += 1
        released = False
        try:
            async with trio.open_nursery() as nursery:
                work = trio.CancelScope()
                nursery.start_soon(self._keep_lease, job, work)
                result: dict[str, Any] | None = None
                error: DTESNError | None = None
                failure: dict[str, Any] | None = None
                with work:
                    try:
                        result = await self._process(job.payload)
                    except DTESNError as exc:
                        error = exc
                    except Exception:
                        logger.exception("job %s failed with an unexpected error", job.id)
                        failure = {"code": "internal_error", "message": "internal error"}
                nursery.cancel_scope.cancel()
            if work.cancelled_caught:
                return True  # lease lost: the new owner records the outcome
            if isinstance(error, ShuttingDown):
                released = await self._release(job, 0.0)
                return False
            if isinstance(error, _TRANSIENT):
                delay = error.retry_after or self.config.retry_delay
                released = await self._release(job, delay)
                return True
            if error is not None:
                failure = error.to_dict()
            await self._finish(job, result=result, error=failure)
            released = True
            return True
        finally:
            self._busy -= 1
            if not released:
                # Cancelled or failed before recording anything: give the job back so
                # it runs again at once instead of when the lease runs out.
                with trio.move_on_after(_RELEASE_GRACE, shield=True):
                    try:
                        await self._store.release(job.id, self.owner, self._now(), 0.0)
                    except DTESNError as exc:
                        logger.warning("could not release job %s: %s", job.id, exc)

    async def _release(self, job: JobRecord, delay: float) -> bool:
        self._retried += 1
        await self._store.release(job.id, self.owner, self._now(), delay)
        if delay <= 0:
            self._wake_claimers()
        return True

    async def _finish(
        self,
        job: JobRecord,
        *,
        result: dict[str, Any] | None = None,
        error: dict[str, Any] | None = None,
    ) -> None:
        recorded = await self._store.finish(
            job.id, self.owner, self._now(), result=result, error=error
        )
        if not recorded:
            self._lost_leases += 1
            logger.warning("job %s: lease lost before its outcome was recorded", job.id)
        elif error is None:
            self._succeeded += 1
        else:
            self._failed += 1

    async def _keep_lease(self, job: JobRecord, work: trio.CancelScope) -> None:
        interval = self.config.lease_seconds / 3
        while True:
            await trio.sleep(interval)
            try:
                kept = await self._store.renew(
                    job.id, self.owner, self._now(), self.config.lease_seconds
                )
            except DTESNError as exc:
                logger.warning("job %s: lease renewal failed: %s", job.id, exc)
                continue
            if not kept:
                self._lost_leases += 1
                logger.warning("job %s: lease lost; abandoning the run", job.id)
                work.cancel()
                return

    # ------------------------------------------------------------------ retention

    async def sweep(self) -> SweepReport:
        """Delete the finished jobs the retention policy no longer keeps, now: one
        batch of ``jobs.sweep_batch`` per statement, each starting where the last one
        ended, and between two a pause of ``sweep_pause(...)``."""
        started = trio.current_time()
        config = self.config
        horizon = await self._store.purge_horizon(
            config.retain_finished, config.max_finished_rows, self._now()
        )
        deleted = batches = 0
        after: PurgeCursor | None = None
        while horizon is not None:
            t0 = trio.current_time()
            n, after = await self._store.purge(horizon, config.sweep_batch, after)
            took = trio.current_time() - t0
            deleted += n
            batches += 1
            self._purged += n
            if n < config.sweep_batch:
                break
            await trio.sleep(sweep_pause(config, took))
        if horizon is None:
            await trio.lowlevel.checkpoint()
        return SweepReport(started, deleted, batches)

    async def wait_swept(self) -> SweepReport:
        """Wait for the sweeper task's next sweep to end (one in progress counts);
        what it did.  A sweep that failed (the store was down) reports nothing
        deleted.  With neither retention limit set there is no sweeper: this waits
        for ever."""
        await self._swept.wait()
        assert self._last_sweep is not None
        return self._last_sweep

    async def _sweeper(self) -> None:
        """Sweep at once, then every ``sweep_interval`` on a fixed schedule."""
        interval = self.config.sweep_interval
        start = trio.current_time()
        while True:
            now = trio.current_time()
            try:
                report = await self.sweep()
            except DTESNError as exc:
                logger.warning("job retention sweep failed: %s", exc)
                report = SweepReport(now, 0, 0)
            if report.deleted:
                logger.info("purged %d finished jobs", report.deleted)
            self._sweeps += 1
            self._last_sweep = report
            self._swept.set()
            self._swept = trio.Event()
            # The next slot of the schedule after now (a long sweep skips slots).
            slots = math.floor((trio.current_time() - start) / interval) + 1
            await trio.sleep_until(start + slots * interval)


@asynccontextmanager
async def open_job_service(
    store: JobStore,
    process: ProcessFn,
    config: JobsConfig | None = None,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[JobService]:
    """Set up ``store``, requeue jobs of dead owners, and run ``config.workers`` claimers.

    Leaving the block cancels the claimers and the retention sweeper; a job in
    progress is released (bounded, shielded) so it is runnable again at once.
    ``wall_clock`` is this instance's time, given to the store (SQLite times its rows
    by it; PostgreSQL by its server's clock).
    """
    config = config or JobsConfig()
    await store.setup()
    owner = _new_owner()
    _LIVE_OWNERS.add(owner)
    try:
        service = JobService(store, process, config, owner, wall_clock, await store.id_key())
        service._recovered = await store.recover(owner_is_dead)
        if service._recovered:
            logger.info("requeued %d jobs left by stopped processes", service._recovered)
        async with trio.open_nursery() as nursery:
            for _ in range(config.workers):
                nursery.start_soon(service._claimer)
            if config.retain_finished is not None or config.max_finished_rows is not None:
                nursery.start_soon(service._sweeper)
            try:
                yield service
            finally:
                nursery.cancel_scope.cancel()
    finally:
        _LIVE_OWNERS.discard(owner)
