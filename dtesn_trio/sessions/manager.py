"""``open_sessions``: live series, each carrying its reservoir state from chunk to chunk.

A session pins one model version when it opens (``ModelSource.resolve``) and holds the
reservoir's state after its last chunk.  ``step`` runs a chunk through the runtime
(``Runtime.submit_batched``): the same admission, priorities and deadlines as
``process``, and batched with the chunks of every other session of the same model
version that are queued at the same time (their states stacked into one matrix).

Order: a session runs one chunk at a time.  A chunk that arrives while the previous
one is still running is refused with ``SessionBusy`` (409) and not applied, rather
than queued behind it: two requests sent at once reach the server in either order, so
waiting would apply them in an order the client never chose.  A chunk refused or
failed for any reason (bad input, overload, deadline, shutdown) leaves the state as
it was, so the client can send it again.

Ending: ``end`` (``DELETE``), or no step for ``idle_ttl`` seconds (a sweeper task of
this nursery; a step in flight keeps a session alive).  A chunk to an ended session is
``SessionNotFound`` (404) saying how it ended, for the last ``remember_ended`` ids.

Restart: with a ``store``, a graceful stop writes every live session (its state as of
its last answered chunk) to the database, and the next start restores them all (with
a fresh idle TTL); a chunk whose batch finishes after that write is answered
``ShuttingDown`` and not applied, so a client never sees a chunk the restored state
lacks.  A restored session whose model version no longer resolves is ``SessionLost``
(410, naming the session and why).  A crash writes nothing: its sessions' ids are
then unknown (404).
"""

from __future__ import annotations

import logging
import math
import secrets
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Hashable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import trio

from dtesn_trio.dtesn.encoding import FloatArray, encode_input
from dtesn_trio.errors import (
    DTESNError,
    InvalidRequest,
    ModelNotFound,
    Overloaded,
    SessionBusy,
    SessionLost,
    SessionNotFound,
    ShuttingDown,
)
from dtesn_trio.sessions.config import MAX_WASHOUT, SessionsConfig
from dtesn_trio.sessions.models import DEFAULT_MODEL, ModelSource, ModelVersion
from dtesn_trio.sessions.stepper import StepItem, StepOutput, run_steps
from dtesn_trio.sessions.store import SessionSnapshot, SessionStore

__all__ = [
    "SessionInfo",
    "SessionManager",
    "SessionsStatistics",
    "StepResult",
    "open_sessions",
]

log = logging.getLogger("dtesn_trio.sessions")


class _Runtime(Protocol):
    async def submit_batched(
        self,
        item: Any,
        run: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        group: Hashable = None,
        priority: int = 2,
        deadline: float | None = None,
    ) -> Any: ...


@dataclass(eq=False)
class _Session:
    id: str
    version: ModelVersion
    washout: int
    state: FloatArray
    last_used: float
    position: int = 0
    busy: bool = False


@dataclass(frozen=True)
class SessionInfo:
    """A session as a client sees it; ``model`` is ``name@version``."""

    session_id: str
    model: str
    washout: int
    position: int
    """Steps run so far."""
    busy: bool
    expires_in: float
    """Seconds of idleness left before the TTL ends it (the full TTL while busy)."""


@dataclass(frozen=True)
class StepResult:
    """One chunk's answer.

    ``predictions``: the readout's output for each step of the chunk past the washout
    (``steps - skipped`` rows; ``None`` when the model has no readout); the first of
    them is the session's step ``first_prediction`` (0-based, counted from the
    session's start).  ``state``: the reservoir state the next chunk starts from.
    """

    session_id: str
    model: str
    steps: int
    position: int
    predictions: FloatArray | None
    first_prediction: int | None
    state: FloatArray
    batch_size: int
    timings: dict[str, float]


@dataclass(frozen=True)
class SessionsStatistics:
    live: int
    busy: int
    opened: int
    ended: int
    expired: int
    restored: int
    lost: int
    steps: int
    refused_busy: int


def _ref(version: ModelVersion) -> str:
    return f"{version.name}@{version.version}"


class SessionManager:
    """The live sessions of one runtime; create it with ``open_sessions``."""

    def __init__(
        self,
        runtime: _Runtime,
        config: SessionsConfig,
        models: ModelSource,
        clock: Callable[[], float] = trio.current_time,
    ) -> None:
        self.runtime = runtime
        self.config = config
        self.models = models
        self._clock = clock
        # in order of last activity: the first is the next to reach its idle TTL
        self._sessions: OrderedDict[str, _Session] = OrderedDict()
        self._ended: OrderedDict[str, DTESNError] = OrderedDict()
        self._wake = trio.Event()
        self._closed = False
        self._counts = dict.fromkeys(
            ("opened", "ended", "expired", "restored", "lost", "steps", "refused_busy"), 0
        )

    # ------------------------------------------------------------------ the API
    async def open(self, model: str | None = None, *, washout: int = 0) -> SessionInfo:
        """A new session on ``model`` (``name`` or ``name@version``; ``None``: the
        built-in model), whose first ``washout`` steps give no prediction."""
        await trio.lowlevel.checkpoint()
        if (
            not isinstance(washout, int)
            or isinstance(washout, bool)
            or not 0 <= washout <= MAX_WASHOUT
        ):
            raise InvalidRequest(
                f"washout must be an integer between 0 and {MAX_WASHOUT} (got {washout!r})",
                field="washout",
            )
        if self._closed:
            raise ShuttingDown("the server is shutting down; open the session later")
        # "default@0" (how a session names the built-in model) is the built-in model
        # whatever the source: a registry numbers its own versions from 1
        builtin = model == f"{DEFAULT_MODEL}@0"
        version = await self.models.resolve(None if builtin else model)
        if len(self._sessions) >= self.config.max_sessions:
            raise Overloaded(
                f"this server holds its maximum of {self.config.max_sessions} live sessions",
                retry_after=1.0,
            )
        session_id = secrets.token_hex(16)
        state = np.zeros(version.model.config.reservoir_size)
        self._add(_Session(session_id, version, washout, state, self._clock()))
        self._counts["opened"] += 1
        return self._info(self._sessions[session_id])

    def get(self, session_id: str) -> SessionInfo:
        """The live session ``session_id``, or its ``SessionNotFound`` / ``SessionLost``."""
        return self._info(self._lookup(session_id))

    async def end(self, session_id: str) -> SessionInfo:
        """End the session (a chunk still running is answered; its state is dropped)."""
        await trio.lowlevel.checkpoint()
        session = self._lookup(session_id)
        info = self._info(session)
        self._remove(
            session,
            SessionNotFound(f"session {session_id!r} was ended by DELETE", field="session_id"),
        )
        self._counts["ended"] += 1
        return info

    async def step(
        self,
        session_id: str,
        chunk: Any,
        *,
        priority: int = 2,
        deadline: float | None = None,
    ) -> StepResult:
        """Run the next chunk (text, or ``T × input_dim`` numbers) of the session."""
        session = self._lookup(session_id)
        if self._closed:
            await trio.lowlevel.checkpoint()
            raise ShuttingDown("the server is shutting down", retry_after=1.0)
        if session.busy:
            self._counts["refused_busy"] += 1
            await trio.lowlevel.checkpoint()
            raise SessionBusy(
                f"session {session_id!r} is still running its previous chunk; this chunk"
                " was not applied: send it again once the previous answer arrived",
                field="session_id",
                retry_after=0.0,
            )
        model = session.version.model
        enc = encode_input(chunk, model.config.input_dim, field="input")
        skip = max(0, min(enc.steps, session.washout - session.position))
        item = StepItem(model, session.state, enc, skip)
        group = ("dtesn-session", session.version.name, session.version.version, id(model))
        self._begin(session)
        try:
            outcome = await self.runtime.submit_batched(
                item, run_steps, group=group, priority=priority, deadline=deadline
            )
        finally:
            session.busy = False
            session.last_used = self._clock()
        if self._closed:
            raise ShuttingDown(
                f"the server is stopping: this chunk of session {session_id!r} was not"
                " applied (the session is kept as before it); send it again after the"
                " restart",
                retry_after=1.0,
            )
        out: StepOutput = outcome.output
        position = session.position
        session.state = out.state
        session.position = position + enc.steps
        self._counts["steps"] += enc.steps
        predictions = out.predictions
        return StepResult(
            session_id=session_id,
            model=_ref(session.version),
            steps=enc.steps,
            position=session.position,
            predictions=predictions,
            first_prediction=(
                position + skip if predictions is not None and predictions.shape[0] else None
            ),
            state=out.state,
            batch_size=outcome.batch_size,
            timings=outcome.timings,
        )

    def statistics(self) -> SessionsStatistics:
        return SessionsStatistics(
            live=len(self._sessions),
            busy=sum(1 for s in self._sessions.values() if s.busy),
            **self._counts,
        )

    # ------------------------------------------------------------------ state
    def _lookup(self, session_id: str) -> _Session:
        session = self._sessions.get(session_id)
        if session is not None:
            return session
        gone = self._ended.get(session_id)
        if gone is not None:
            raise type(gone)(gone.message, field="session_id")
        raise SessionNotFound(
            f"no live session with id {session_id!r} (never opened here, or ended by a"
            " server crash)",
            field="session_id",
        )

    def _add(self, session: _Session) -> None:
        self._sessions[session.id] = session
        if len(self._sessions) == 1:
            self._wake.set()

    def _begin(self, session: _Session) -> None:
        session.busy = True
        session.last_used = self._clock()
        self._sessions.move_to_end(session.id)

    def _remove(self, session: _Session, why: DTESNError) -> None:
        del self._sessions[session.id]
        self._forget(session.id, why)

    def _forget(self, session_id: str, why: DTESNError) -> None:
        if self.config.remember_ended == 0:
            return
        self._ended[session_id] = why
        while len(self._ended) > self.config.remember_ended:
            self._ended.popitem(last=False)

    def _expire_due(self, now: float) -> float:
        """End the sessions idle past the TTL; return when the next one is due."""
        ttl = self.config.idle_ttl
        while self._sessions:
            session = next(iter(self._sessions.values()))
            due = session.last_used + ttl
            if due > now:
                return due
            if session.busy:  # a chunk in flight is activity: look again a TTL later
                session.last_used = now
                self._sessions.move_to_end(session.id)
                continue
            self._remove(
                session,
                SessionNotFound(
                    f"session {session.id!r} was ended after {ttl:g} s without a chunk"
                    " (sessions.idle_ttl)",
                    field="session_id",
                ),
            )
            self._counts["expired"] += 1
        return math.inf

    def _info(self, session: _Session) -> SessionInfo:
        left = self.config.idle_ttl
        if not session.busy:
            left = max(0.0, session.last_used + left - self._clock())
        return SessionInfo(
            session.id,
            _ref(session.version),
            session.washout,
            session.position,
            session.busy,
            left,
        )

    def _snapshots(self) -> list[SessionSnapshot]:
        return [
            SessionSnapshot(s.id, s.version.name, s.version.version, s.washout, s.position, s.state)
            for s in self._sessions.values()
        ]

    async def _restore(self, snapshot: SessionSnapshot) -> None:
        ref = f"{snapshot.model}@{snapshot.version}"
        try:
            # the built-in model is version 0, which a registry names only as "default"
            builtin = (snapshot.model, snapshot.version) == (DEFAULT_MODEL, 0)
            version = await self.models.resolve(None if builtin else ref)
            size = version.model.config.reservoir_size
            if snapshot.state.shape != (size,):
                raise ModelNotFound(f"model {ref} now has {size} units, not {snapshot.state.size}")
        except DTESNError as exc:
            self._forget(
                snapshot.id,
                SessionLost(
                    f"session {snapshot.id!r} was saved at the last restart but cannot be"
                    f" restored: {exc.message}; open a new session and replay the series",
                    field="session_id",
                ),
            )
            self._counts["lost"] += 1
            return
        session = _Session(
            snapshot.id,
            version,
            snapshot.washout,
            snapshot.state,
            self._clock(),
            snapshot.position,
        )
        self._add(session)
        self._counts["restored"] += 1

    # ------------------------------------------------------------------ tasks
    async def _sweep(self) -> None:
        while True:
            if not self._sessions:
                self._wake = trio.Event()
                await self._wake.wait()
            # a session opened or touched later is due later: sleeping until the
            # earliest due time misses no one
            await trio.sleep_until(self._expire_due(self._clock()))
            self._expire_due(self._clock())


@asynccontextmanager
async def open_sessions(
    runtime: _Runtime,
    config: SessionsConfig | None = None,
    *,
    models: ModelSource,
    store: SessionStore | None = None,
) -> AsyncIterator[SessionManager]:
    """The session manager and its idle sweeper; with ``store`` (and
    ``config.persist``), sessions saved by the last graceful stop are restored first
    and the live ones are saved when the block ends."""
    config = config if config is not None else SessionsConfig()
    manager = SessionManager(runtime, config, models)
    persist = store if config.persist else None
    if persist is not None:
        await persist.setup()
        for snapshot in await persist.take():
            await manager._restore(snapshot)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(manager._sweep)
        try:
            yield manager
        finally:
            manager._closed = True
            nursery.cancel_scope.cancel()
            if persist is not None and manager._sessions:
                snapshots = manager._snapshots()
                with trio.move_on_after(config.persist_timeout, shield=True) as scope:
                    try:
                        await persist.save(snapshots)
                    except Exception as exc:
                        log.error("saving %d live sessions failed: %r", len(snapshots), exc)
                if scope.cancelled_caught:
                    log.error(
                        "saving %d live sessions took over %g s (sessions.persist_timeout):"
                        " they are lost",
                        len(snapshots),
                        config.persist_timeout,
                    )
