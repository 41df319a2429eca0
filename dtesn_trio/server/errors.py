"""The one place where errors become HTTP responses (DESIGN.md's table).

``DTESNError`` subclasses map to their ``http_status`` with the body
``{"error": {"code", "message", "field"?, "retry_after"?}}`` and ``Retry-After`` on every
429 and 503; anything else is a bug: the caller logs it and sends ``internal_error()``.
"""

from __future__ import annotations

import math
import re

import msgspec

from dtesn_trio.errors import DTESNError, InvalidRequest, PayloadTooLarge

__all__ = [
    "BodyTimeout",
    "MalformedRequest",
    "error_headers",
    "error_response_parts",
    "internal_error_parts",
    "validation_error",
]

_DEFAULT_RETRY_AFTER = 1


class MalformedRequest(InvalidRequest):
    """The body is not JSON (or not UTF-8): 400, where a well-formed but invalid body
    is 422.  Same ``code``, so clients handle one code for both."""

    http_status = 400


class BodyTimeout(InvalidRequest):
    """The body did not arrive within ``server.body_timeout``: 408, and the connection
    is closed (the rest of the body is never read)."""

    code = "body_timeout"
    http_status = 408


class NotFound(DTESNError):
    """No such route or job."""

    code = "not_found"
    http_status = 404


class Gone(DTESNError):
    """A job this deployment stored and the retention policy has since deleted."""

    code = "expired"
    http_status = 410


class MethodNotAllowed(DTESNError):
    code = "method_not_allowed"
    http_status = 405


class NotReady(DTESNError):
    """``/readyz`` while the runtime is starting or its pools are down."""

    code = "not_ready"
    http_status = 503


def error_headers(exc: DTESNError) -> list[tuple[bytes, bytes]]:
    headers = [(b"content-type", b"application/json")]
    if exc.http_status in (429, 503):
        seconds = (
            _DEFAULT_RETRY_AFTER if exc.retry_after is None else max(1, math.ceil(exc.retry_after))
        )
        headers.append((b"retry-after", str(seconds).encode()))
    if isinstance(exc, BodyTimeout):
        headers.append((b"connection", b"close"))
    if exc.http_status == 401:
        headers.append((b"www-authenticate", b'Bearer realm="dtesn-trio"'))
    return headers


def error_response_parts(exc: DTESNError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """``(status, headers, body)`` for ``exc``."""
    body = msgspec.json.encode({"error": exc.to_dict()})
    return exc.http_status, error_headers(exc), body


def internal_error_parts() -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    body = b'{"error":{"code":"internal_error","message":"internal server error"}}'
    return 500, [(b"content-type", b"application/json")], body


_UNKNOWN = re.compile(r"unknown field `([^`]*)`")
_MISSING = re.compile(r"missing required field `([^`]*)`")
_AT = re.compile(r" - at `\$\.?([^`]*)`$")


def validation_error(exc: msgspec.ValidationError) -> InvalidRequest:
    """An ``InvalidRequest`` naming the field msgspec complained about."""
    text = str(exc)
    at = _AT.search(text)
    path = at.group(1) if at else ""
    message = _AT.sub("", text)
    name = _UNKNOWN.search(text) or _MISSING.search(text)
    if name is not None:
        key = name.group(1) or '""'  # an empty key is still a field to name
        field = f"{path}.{key}" if path else key
    else:
        field = path or None
    if field is not None:
        message = f"{field}: {message}"
    return InvalidRequest(message, field=field)


def too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"request body is larger than {limit} bytes")
