"""The request id: accepted from ``X-Request-ID`` or generated, echoed, and in every
log line written while the request is handled (a context variable read by a logging
filter)."""

from __future__ import annotations

import contextvars
import itertools
import logging
import os

__all__ = ["RequestIDFilter", "current_request_id", "new_request_id", "request_id_var"]

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar(
    "dtesn_request_id", default="-"
)

_MAX_LEN = 128
# A random per-process prefix and a counter: unique across processes and restarts, and
# several times cheaper than uuid4() on the request path.
_PREFIX = os.urandom(8).hex()
_COUNTER = itertools.count(1)


def new_request_id(offered: bytes | None) -> str:
    """``offered`` if it is a sane id (1-128 printable ASCII, no spaces), else a new
    one (32 hex digits)."""
    if offered:
        try:
            text = offered.decode("ascii")
        except UnicodeDecodeError:
            text = ""
        if 0 < len(text) <= _MAX_LEN and text.isprintable() and " " not in text:
            return text
    return f"{_PREFIX}{next(_COUNTER):016x}"


def current_request_id() -> str:
    return request_id_var.get()


class RequestIDFilter(logging.Filter):
    """Adds ``record.request_id`` (``-`` outside a request); attach it to handlers."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = request_id_var.get()
        return True
