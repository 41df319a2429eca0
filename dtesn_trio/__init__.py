"""dtesn-trio: a Trio-native structured-concurrency runtime for request-processing servers."""

from dtesn_trio._version import __version__
from dtesn_trio.errors import (
    BackendUnavailable,
    CircuitOpen,
    DeadlineExceeded,
    DTESNError,
    InvalidRequest,
    Overloaded,
    PayloadTooLarge,
    RateLimited,
    ShuttingDown,
    Unauthorized,
)

__all__ = [
    "BackendUnavailable",
    "CircuitOpen",
    "DTESNError",
    "DeadlineExceeded",
    "InvalidRequest",
    "Overloaded",
    "PayloadTooLarge",
    "RateLimited",
    "ShuttingDown",
    "Unauthorized",
    "__version__",
]
