"""One exception hierarchy for the whole runtime.

Every error carries a stable ``code`` string, the HTTP status the server maps it to,
and, where it helps the caller, ``retry_after`` seconds.  The HTTP layer maps these
errors and nothing else; anything outside this hierarchy is a bug (HTTP 500).
"""

from __future__ import annotations

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "DTESNError",
    "DeadlineExceeded",
    "EngineError",
    "IdempotencyConflict",
    "InvalidRequest",
    "ModelNotFound",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "SessionBusy",
    "SessionLost",
    "SessionNotFound",
    "ShuttingDown",
    "Unauthorized",
]


class DTESNError(Exception):
    """Base of every error the runtime raises on purpose."""

    code: str = "error"
    http_status: int = 500

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after = retry_after
        self.field = field

    def to_dict(self) -> dict[str, object]:
        """The JSON error body: ``{"code", "message", "field"?, "retry_after"?}``."""
        body: dict[str, object] = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        if self.retry_after is not None:
            body["retry_after"] = round(self.retry_after, 3)
        return body

    def __repr__(self) -> str:
        extra = ""
        if self.retry_after is not None:
            extra += f", retry_after={self.retry_after:.3f}"
        if self.field is not None:
            extra += f", field={self.field!r}"
        return f"{type(self).__name__}({self.message!r}{extra})"


class InvalidRequest(DTESNError):
    """A field has the wrong type, size or value; ``field`` names it."""

    code = "invalid_request"
    http_status = 422


class Unauthorized(DTESNError):
    """The API key is missing or wrong."""

    code = "unauthorized"
    http_status = 401


class PayloadTooLarge(DTESNError):
    """The request body is over the configured limit."""

    code = "payload_too_large"
    http_status = 413


class IdempotencyConflict(DTESNError):
    """An ``Idempotency-Key`` already names a job with another payload (409): the
    first job is kept; a new job needs a new key."""

    code = "idempotency_conflict"
    http_status = 409


class ModelNotFound(DTESNError):
    """A model reference (``name`` or ``name@version``) names no model or version (404);
    ``field`` names the request field that held it."""

    code = "model_not_found"
    http_status = 404


class SessionNotFound(DTESNError):
    """No live session has this id (never opened, ended by ``DELETE``, or idle past
    its TTL): 404.  ``field`` is ``"session_id"``."""

    code = "session_not_found"
    http_status = 404


class SessionLost(DTESNError):
    """The session existed on an earlier run of this server and its state was not kept
    (410): open a new session and replay the series."""

    code = "session_lost"
    http_status = 410


class SessionBusy(DTESNError):
    """A chunk arrived while the session's previous chunk was still running (409): the
    chunk was not applied; send it again once the previous answer arrived."""

    code = "session_busy"
    http_status = 409


class RateLimited(DTESNError):
    """The rate limit was hit; try again after ``retry_after`` seconds."""

    code = "rate_limited"
    http_status = 429


class Overloaded(DTESNError):
    """Queue full, concurrency limit reached, or the deadline cannot be met."""

    code = "overloaded"
    http_status = 503


class CircuitOpen(DTESNError):
    """The circuit breaker for the engine or a backend is open."""

    code = "circuit_open"
    http_status = 503


class BackendUnavailable(DTESNError):
    """Redis or the database could not be reached after the configured retries."""

    code = "backend_unavailable"
    http_status = 503


class DeadlineExceeded(DTESNError):
    """The request's deadline passed before it could be answered."""

    code = "deadline_exceeded"
    http_status = 504


class ShuttingDown(DTESNError):
    """The runtime is stopping and takes no new work."""

    code = "shutting_down"
    http_status = 503


class EngineError(DTESNError):
    """The engine failed on an input that passed validation: the server's fault (500).

    Only that input fails (its batch neighbours are run again without it); the cause is
    logged with its traceback and never sent to the client.  Also raised, naming the
    engine and the counts, for a ``process_batch`` that returns the wrong number of
    outputs, and for an engine worker process that died mid-call.
    """

    code = "engine_error"
    http_status = 500
