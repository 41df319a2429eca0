"""``ServerConfig``: how the HTTP layer listens, authenticates and bounds requests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dtesn_trio import _checks

__all__ = ["ServerConfig"]

MiB = 1024 * 1024
MAX_BATCH_INPUTS = 100
MAX_DEADLINE_MS = 3_600_000
MAX_GC_GEN0 = 1_000_000


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """The ``[server]`` section.  Times are seconds.

    - ``host`` / ``port``: where to listen (port 0 picks a free port).
    - ``api_keys``: Bearer tokens accepted; empty means no authentication.  Also read
      from ``DTESN_API_KEYS`` (comma-separated).
    - ``max_body_size``: request bodies over this many bytes get 413, counted while the
      body is read.
    - ``max_input_length``: characters of a text input, or rows of a numeric one.
    - ``max_batch_inputs``: inputs of one ``/v1/process/batch`` request.
    - ``max_deadline_ms``: the largest ``deadline_ms`` a request may ask for.
    - ``default_deadline_ms``: the deadline of a request that sends no ``deadline_ms``
      (``None``: none; it then waits as long as the queue's timeout lets it).  Keep it
      below the clients' own timeout: an answer after the client gave up is work done
      for nobody (README, "Under load").
    - ``metrics_require_auth``: whether ``/metrics`` needs an API key too.
    - ``docs``: serve ``/openapi.json`` and ``/docs``.
    - ``graceful_timeout``: how long hypercorn waits for open requests after a graceful
      stop; ``None`` means the runtime's ``shutdown_grace`` plus ``response_margin``.
    - ``response_margin``: time left after the drain deadline to write the 503s.
    - ``body_timeout``: seconds a client has, from the start of its request, to send
      the whole body; a slower one (a slow-loris) gets 408 ``body_timeout`` and its
      connection closed, instead of holding a connection and a task forever.
      (Slow *headers* are bounded by hypercorn's ``keep_alive_timeout``.)
    - ``http``: the HTTP server: ``"lean"`` (ours: one task per connection, llhttp
      parsing; a request costs it a fraction of what it costs hypercorn, which decides
      what a storm of clients leaves for the work) or ``"hypercorn"`` (its Trio worker).
    - ``keep_alive_timeout``: seconds an idle connection (or one sending its headers)
      is kept.  ``backlog``: the listen queue (the kernel caps it at
      ``net.core.somaxconn``); a storm of new connections beyond it is refused by the
      kernel.
    - ``max_in_flight``: requests to ``/v1/process`` and ``/v1/process/batch`` in
      progress at once.  The others wait for a slot until their deadline, and one that
      waits out its deadline is answered 504 without costing the engine anything.  A
      slot that frees goes to the oldest behind the read gate (``max_waiting``), else to
      the newest (it has the most of its deadline left).  ``None``: no limit.  Other
      routes never wait here.
    - ``max_waiting``: with the lean server, how many requests for the work it reads
      beyond ``max_in_flight``.  A connection whose request finds ``max_in_flight +
      max_waiting`` requests read is not read: its request waits in the kernel (costing
      nothing) and is read in turn when one of those finishes: first come first
      served, newest first once the oldest has waited a third of ``max_unread_wait``.
      ``None``: read every request as it arrives (hypercorn always does).
    - ``max_unread_wait``: seconds a request may wait unread; then it is read and
      answered 503 ``overloaded`` (not started), before its client gives up.
    - ``access_log``: log one line per request (with its request id).
    - ``reuse_port``: bind with ``SO_REUSEPORT`` (Linux, BSD), so that several
      ``dtesn-trio serve`` processes on one host listen on the same port and the kernel
      spreads connections over them -- N instances without a local load balancer.
    - ``gc_freeze``: ``gc.freeze()`` once the runtime is ready, so the objects of
      start-up (imports, model, app) are never scanned by the cyclic GC again.
    - ``gc_threshold``: ``gc.set_threshold(gen0, gen1, gen2)`` once the runtime is
      ready (``"50000,10,100"`` from text, ``[50000, 10, 100]`` in TOML), or
      ``"default"`` to keep the interpreter's (CPython: 700, 10, 10).
      Both apply to the whole process while ``serve`` runs and are restored after;
      docs/RELIABILITY.md ("Concurrency") has the measurements behind the defaults.
    - ``debug_memory``: allow ``GET /v1/stats?gc=1``, which runs a full garbage
      collection before reporting ``memory``, so that ``allocated_blocks`` counts live
      objects only, not cyclic garbage still waiting for the collector (up to a quarter
      of the heap).  The collection blocks the event loop (tens of ms): for endurance
      measurements (``benchmarks/soak_endurance.py``), not for production.
    """

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    max_body_size: int = 1 * MiB
    max_input_length: int = 16_384
    max_batch_inputs: int = 100
    max_deadline_ms: int = 600_000
    default_deadline_ms: int | None = 2_500
    metrics_require_auth: bool = False
    docs: bool = True
    graceful_timeout: float | None = None
    response_margin: float = 2.0
    body_timeout: float = 30.0
    http: Literal["lean", "hypercorn"] = "lean"
    keep_alive_timeout: float = 5.0
    backlog: int = 4096
    max_in_flight: int | None = 256
    max_waiting: int | None = 64
    max_unread_wait: float = 3.0
    access_log: bool = False
    reuse_port: bool = False
    gc_freeze: bool = True
    gc_threshold: tuple[int, int, int] | Literal["default"] = (2_000, 10, 250)
    debug_memory: bool = False

    def __post_init__(self) -> None:
        p = "server."
        if not isinstance(self.host, str) or not self.host:
            raise ValueError(f"{p}host must be a non-empty string (got {self.host!r})")
        _checks.integer(p + "port", self.port, minimum=0)
        if self.port > 65535:
            raise ValueError(f"{p}port must be <= 65535 (got {self.port!r})")
        if not isinstance(self.api_keys, tuple) or not all(
            isinstance(k, str) for k in self.api_keys
        ):
            raise ValueError(f"{p}api_keys must be a tuple of strings (got {self.api_keys!r})")
        for key in self.api_keys:
            if len(key) < 8 or not key.isascii() or not key.isprintable() or " " in key:
                # Never echo a key into a log line or an error message.
                raise ValueError(
                    f"{p}api_keys: every key must be >= 8 printable ASCII characters without spaces"
                )
        _checks.integer(p + "max_body_size", self.max_body_size, minimum=1)
        _checks.integer(p + "max_input_length", self.max_input_length, minimum=1)
        # The request models carry the hard ceilings (and the OpenAPI document shows
        # them); the config may only lower them.
        _checks.integer(p + "max_batch_inputs", self.max_batch_inputs, minimum=1)
        _checks.in_range(p + "max_batch_inputs", self.max_batch_inputs, 1, MAX_BATCH_INPUTS)
        _checks.integer(p + "max_deadline_ms", self.max_deadline_ms, minimum=1)
        _checks.in_range(p + "max_deadline_ms", self.max_deadline_ms, 1, MAX_DEADLINE_MS)
        if self.default_deadline_ms is not None:
            _checks.integer(p + "default_deadline_ms", self.default_deadline_ms, minimum=1)
            _checks.in_range(
                p + "default_deadline_ms", self.default_deadline_ms, 1, self.max_deadline_ms
            )
        for name in (
            "metrics_require_auth",
            "docs",
            "access_log",
            "reuse_port",
            "gc_freeze",
            "debug_memory",
        ):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{p}{name} must be true or false (got {getattr(self, name)!r})")
        if self.graceful_timeout is not None:
            _checks.positive(p + "graceful_timeout", self.graceful_timeout)
        _checks.non_negative(p + "response_margin", self.response_margin)
        _checks.positive(p + "body_timeout", self.body_timeout)
        _checks.one_of(p + "http", self.http, ("lean", "hypercorn"))
        _checks.positive(p + "keep_alive_timeout", self.keep_alive_timeout)
        _checks.integer(p + "backlog", self.backlog, minimum=1)
        if self.max_in_flight is not None:
            _checks.integer(p + "max_in_flight", self.max_in_flight, minimum=1)
        if self.max_waiting is not None:
            _checks.integer(p + "max_waiting", self.max_waiting, minimum=0)
        _checks.positive(p + "max_unread_wait", self.max_unread_wait)
        if self.gc_threshold != "default":
            _check_gc_threshold(p + "gc_threshold", self.gc_threshold)


def _check_gc_threshold(field: str, value: object) -> None:
    if not (isinstance(value, tuple) and len(value) == 3):
        raise ValueError(
            f'{field} must be "default" or three integers gen0,gen1,gen2 (got {value!r})'
        )
    for name, item in zip(("gen0", "gen1", "gen2"), value, strict=True):
        _checks.integer(f"{field} {name}", item)
        if item < 1:
            # gc.set_threshold(0) turns automatic collection off: not a tuning.
            raise ValueError(f"{field} {name} must be >= 1 (got {item!r})")
    if value[0] > MAX_GC_GEN0:
        # gen0 is how many net allocations a young collection waits for, and scans:
        # past this a "young" pause is as long as the full ones we avoid.
        raise ValueError(f"{field} gen0 must be <= {MAX_GC_GEN0} (got {value[0]!r})")
