"""``SessionsConfig``: the ``[sessions]`` section."""

from __future__ import annotations

from dataclasses import dataclass

from dtesn_trio import _checks

__all__ = ["MAX_WASHOUT", "SessionsConfig"]

MAX_WASHOUT = 1_000_000
"""The largest ``washout`` a session may ask for."""


@dataclass(frozen=True)
class SessionsConfig:
    """Live sessions (``POST /v1/sessions``).  Times are seconds.

    - ``enabled``: serve sessions (they need the DTESN engine).
    - ``idle_ttl``: a session with no step for this long is ended (a step in flight
      keeps it alive).
    - ``max_sessions``: live sessions at most; opening one more is ``Overloaded``.
    - ``persist``: on a graceful stop, write every live session's state to the job
      store's database (when the job store is on) and restore it on the next start.
    - ``persist_timeout``: how long that write may take before the sessions are given
      up (logged).
    - ``remember_ended``: how many ended session ids are remembered, so that a chunk to
      one gets "ended by DELETE" or "idle past its TTL" rather than only "unknown".
    """

    enabled: bool = True
    idle_ttl: float = 600.0
    max_sessions: int = 10_000
    persist: bool = True
    persist_timeout: float = 30.0
    remember_ended: int = 10_000

    def __post_init__(self) -> None:
        _checks.positive("sessions.idle_ttl", self.idle_ttl)
        _checks.integer("sessions.max_sessions", self.max_sessions, minimum=1)
        _checks.positive("sessions.persist_timeout", self.persist_timeout)
        _checks.integer("sessions.remember_ended", self.remember_ended, minimum=0)
