"""``ConnectionPoolConfig``: the pool's policy, frozen and validated on construction."""

from __future__ import annotations

from dataclasses import dataclass

from dtesn_trio import _checks

__all__ = ["ConnectionPoolConfig"]


@dataclass(frozen=True, slots=True)
class ConnectionPoolConfig:
    """How many connections a pool keeps, how long it waits, and when it retires them.

    The first nine fields and their defaults are the seed's; every one of them is read.
    Times are seconds.  ``None`` turns an optional limit off.

    - ``max_connections`` / ``min_connections``: the pool never holds more than the first
      (open + being created) and keeps at least the second open while the backend is up.
    - ``connection_timeout``: bound on one connect attempt.
    - ``idle_timeout``: an idle connection unused this long is closed (down to the minimum).
    - ``max_retries`` / ``retry_delay``: a connect that fails is retried this many times,
      after ``retry_delay * 2**i`` (jittered) seconds; the same delay starts the back-off
      with which the pool refills itself while the backend is down.
    - ``enable_keepalive`` / ``keepalive_interval``: idle connections are checked this often.
    - ``max_concurrent_creates``: connects in flight at once.
    - ``max_lifetime``: a connection is retired (when idle, never in use) after this age,
      shortened at random by up to ``lifetime_jitter`` (a fraction) so that connections
      opened together do not all expire together.
    - ``max_waiting``: waiters beyond this get ``Overloaded`` at once (``None``: no cap).
    - ``acquire_timeout``: bound on the wait for a connection (``None``: only the caller's
      own cancel scope bounds it).  See ``ConnectionPool.connection`` for which error.
    - ``leak_detection_threshold``: a connection held longer than this is logged with the
      stack of the task that acquired it.
    - ``close_grace``: bound on closing connections when the pool stops.
    - ``validation_timeout``: bound on one ``check()`` (on checkout and for keepalive).
    - ``validation_bypass``: a connection used within this window is handed out unchecked.
    - ``reconnect_max_delay`` / ``backoff_jitter``: cap and jitter (a fraction) of the
      refill back-off.
    """

    max_connections: int = 500
    min_connections: int = 50
    connection_timeout: float = 15.0
    idle_timeout: float | None = 180.0
    max_retries: int = 3
    retry_delay: float = 0.05
    enable_keepalive: bool = True
    keepalive_interval: float = 30.0
    max_concurrent_creates: int = 50
    max_lifetime: float | None = 1800.0
    lifetime_jitter: float = 0.05
    max_waiting: int | None = 1000
    acquire_timeout: float | None = 15.0
    leak_detection_threshold: float | None = None
    close_grace: float = 5.0
    validation_timeout: float = 5.0
    validation_bypass: float = 0.5
    reconnect_max_delay: float = 10.0
    backoff_jitter: float = 0.1

    def __post_init__(self) -> None:
        p = "pool."
        _checks.integer(p + "max_connections", self.max_connections, minimum=1)
        _checks.integer(p + "min_connections", self.min_connections, minimum=0)
        _checks.at_least(
            p + "max_connections",
            self.max_connections,
            p + "min_connections",
            self.min_connections,
        )
        _checks.positive(p + "connection_timeout", self.connection_timeout)
        if self.idle_timeout is not None:
            _checks.positive(p + "idle_timeout", self.idle_timeout)
        _checks.integer(p + "max_retries", self.max_retries, minimum=0)
        _checks.positive(p + "retry_delay", self.retry_delay)
        if not isinstance(self.enable_keepalive, bool):
            raise ValueError(
                f"{p}enable_keepalive must be true or false (got {self.enable_keepalive!r})"
            )
        _checks.positive(p + "keepalive_interval", self.keepalive_interval)
        _checks.integer(p + "max_concurrent_creates", self.max_concurrent_creates, minimum=1)
        if self.max_lifetime is not None:
            _checks.positive(p + "max_lifetime", self.max_lifetime)
        _checks.in_range(p + "lifetime_jitter", self.lifetime_jitter, 0.0, 0.5)
        if self.max_waiting is not None:
            _checks.integer(p + "max_waiting", self.max_waiting, minimum=0)
        if self.acquire_timeout is not None:
            _checks.positive(p + "acquire_timeout", self.acquire_timeout)
        if self.leak_detection_threshold is not None:
            _checks.positive(p + "leak_detection_threshold", self.leak_detection_threshold)
        _checks.positive(p + "close_grace", self.close_grace)
        _checks.positive(p + "validation_timeout", self.validation_timeout)
        _checks.non_negative(p + "validation_bypass", self.validation_bypass)
        _checks.positive(p + "reconnect_max_delay", self.reconnect_max_delay)
        _checks.in_range(p + "backoff_jitter", self.backoff_jitter, 0.0, 0.5)
