"""Live sessions: a series fed chunk by chunk, the reservoir state carried between."""

from dtesn_trio.sessions.config import SessionsConfig
from dtesn_trio.sessions.manager import (
    SessionInfo,
    SessionManager,
    SessionsStatistics,
    StepResult,
    open_sessions,
)
from dtesn_trio.sessions.models import BuiltinModelSource, ModelSource, ModelVersion, parse_ref
from dtesn_trio.sessions.stepper import StepItem, StepOutput, run_steps
from dtesn_trio.sessions.store import (
    PostgresSessionStore,
    SessionSnapshot,
    SessionStore,
    SQLiteSessionStore,
)

__all__ = [
    "BuiltinModelSource",
    "ModelSource",
    "ModelVersion",
    "PostgresSessionStore",
    "SQLiteSessionStore",
    "SessionInfo",
    "SessionManager",
    "SessionSnapshot",
    "SessionStore",
    "SessionsConfig",
    "SessionsStatistics",
    "StepItem",
    "StepOutput",
    "StepResult",
    "open_sessions",
    "parse_ref",
    "run_steps",
]
