"""The seed's names, for code written against it; new code uses the names beside them.

- ``ConcurrencyManager`` is :class:`dtesn_trio.limits.Admission` (the seed's keywords work);
- ``AsyncRequestQueue`` is the seed's queue API over the priority batch queue;
- ``AsyncConnectionPool`` is :class:`dtesn_trio.nurseries.ConnectionPool`;
- ``DTESNProcessor`` is the seed's processor: the DTESN engine run by an executor.
"""

from dtesn_trio.dtesn.processor import DTESNProcessor, ProcessorStatistics
from dtesn_trio.executor import ProcessorConfig
from dtesn_trio.limits import ConcurrencyManager
from dtesn_trio.nurseries import AsyncRequestQueue, ConnectionPool

AsyncConnectionPool = ConnectionPool

__all__ = [
    "AsyncConnectionPool",
    "AsyncRequestQueue",
    "ConcurrencyManager",
    "DTESNProcessor",
    "ProcessorConfig",
    "ProcessorStatistics",
]
