"""Task- and connection-owning structures: the connection pool and the priority batch queue."""

from dtesn_trio.nurseries.adaptive_timeout import AdaptiveTimeout, AdaptiveTimeoutStatistics
from dtesn_trio.nurseries.queue import (
    AsyncRequestQueue,
    BatchDoneCallback,
    BatchQueueStatistics,
    PriorityBatchQueue,
    ProcessBatch,
    open_batch_queue,
)
from dtesn_trio.nurseries.queue_config import BatchQueueConfig, TimeoutAction

__all__ = [
    "AdaptiveTimeout",
    "AdaptiveTimeoutStatistics",
    "AsyncRequestQueue",
    "BatchDoneCallback",
    "BatchQueueConfig",
    "BatchQueueStatistics",
    "PriorityBatchQueue",
    "ProcessBatch",
    "TimeoutAction",
    "open_batch_queue",
]
