"""Recording outcomes: counts that add up, HDR latency histograms, per-second series.

Every request the generator sends is counted once in ``sent`` and, when it ends, once in
exactly one of ``answered`` (any HTTP status; ``ok`` when 2xx) or ``failed`` (no HTTP
response: connection error, protocol error, client timeout). A run cut short counts the
requests it abandoned as ``unfinished``, so ``sent == answered + failed + unfinished``
always, and ``unfinished == 0`` for a run that finished.
"""

from __future__ import annotations

import base64
import zlib
from array import array
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

if TYPE_CHECKING:  # hdrhistogram is the soak extra's: imported when a histogram is made
    from hdrh.histogram import HdrHistogram

__all__ = [
    "LatencySummary",
    "LoadResult",
    "Outcome",
    "Recorder",
    "RecorderStatistics",
    "SeriesPoint",
]

# Latencies are recorded in microseconds, from 1 µs to one hour, 3 significant digits.
_LOWEST_US = 1
_HIGHEST_US = 3_600_000_000
_DIGITS = 3
_PERCENTILES = (50.0, 90.0, 99.0, 99.9)


def _new_histogram() -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram(_LOWEST_US, _HIGHEST_US, _DIGITS)


def _decode_histogram(encoded: str) -> HdrHistogram:
    from hdrh.histogram import HdrHistogram

    return HdrHistogram.decode(encoded.encode("ascii"))


def count_at_or_below(hist: HdrHistogram, limit_ms: float) -> int:
    """How many recorded latencies are <= ``limit_ms`` (to the histogram's precision)."""
    limit_us = limit_ms * 1000.0
    total = 0
    for item in hist.get_recorded_iterator():
        if item.value_iterated_to > limit_us:
            break
        total += item.count_at_value_iterated_to
    return total


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one request ended: HTTP ``status`` (0 = no HTTP response) and an error ``code``.

    ``code`` is the server's ``error.code`` for an HTTP error, or the client's failure
    kind (``timeout``, ``connect_error``, ``connection_closed``, ``protocol_error``) when
    there was no response; empty for a success.
    """

    status: int
    code: str = ""

    OK: ClassVar[Outcome]
    TIMEOUT: ClassVar[Outcome]

    @property
    def ok(self) -> bool:
        """A 2xx answer."""
        return 200 <= self.status < 300

    @property
    def answered(self) -> bool:
        """The server sent an HTTP response (of any status)."""
        return self.status > 0

    @property
    def key(self) -> str:
        """``"200"``, ``"503 overloaded"`` or ``"timeout"``: how reports group outcomes."""
        if self.status == 0:
            return self.code or "failed"
        if self.code:
            return f"{self.status} {self.code}"
        return str(self.status)


Outcome.OK = Outcome(200)
Outcome.TIMEOUT = Outcome(0, "timeout")


@dataclass(frozen=True, slots=True)
class RecorderStatistics:
    """Live counters of a recorder (what the progress display shows)."""

    elapsed: float
    sent: int
    answered: int
    failed: int
    ok: int
    unfinished: int
    in_flight: int
    by_outcome: Mapping[str, int]
    recent_p50_ms: float | None
    recent_p99_ms: float | None
    recent_rate: float


@dataclass(slots=True)
class _Bucket:
    sent: int = 0
    answered: int = 0
    ok: int = 0
    failed: int = 0
    in_flight_max: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    latencies_ms: array[float] = field(default_factory=lambda: array("d"))


@dataclass(frozen=True, slots=True)
class LatencySummary:
    """Latency percentiles (milliseconds) of a set of requests."""

    count: int
    min_ms: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float

    @classmethod
    def of(cls, hist: HdrHistogram) -> LatencySummary | None:
        """The summary of an HDR histogram in µs; None when it is empty."""
        count = hist.get_total_count()
        if count == 0:
            return None
        p = hist.get_percentile_to_value_dict(list(_PERCENTILES))
        return cls(
            count=count,
            min_ms=hist.get_min_value() / 1000.0,
            mean_ms=round(hist.get_mean_value() / 1000.0, 3),
            p50_ms=p[50.0] / 1000.0,
            p90_ms=p[90.0] / 1000.0,
            p99_ms=p[99.0] / 1000.0,
            p999_ms=p[99.9] / 1000.0,
            max_ms=hist.get_max_value() / 1000.0,
        )

    def to_dict(self) -> dict[str, float]:
        """The summary as JSON numbers."""
        return {
            "count": self.count,
            "min": self.min_ms,
            "mean": self.mean_ms,
            "p50": self.p50_ms,
            "p90": self.p90_ms,
            "p99": self.p99_ms,
            "p99.9": self.p999_ms,
            "max": self.max_ms,
        }


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One time bucket: ``t`` is its start in seconds from the start of the run."""

    t: float
    sent: int
    answered: int
    ok: int
    failed: int
    in_flight_max: int
    by_outcome: Mapping[str, int]
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    max_ms: float | None

    def to_dict(self) -> dict[str, Any]:
        """The point as JSON values."""
        return {
            "t": self.t,
            "sent": self.sent,
            "answered": self.answered,
            "ok": self.ok,
            "failed": self.failed,
            "in_flight_max": self.in_flight_max,
            "by_outcome": dict(self.by_outcome),
            "latency_ms": {
                "p50": self.p50_ms,
                "p90": self.p90_ms,
                "p99": self.p99_ms,
                "max": self.max_ms,
            },
        }


@dataclass(frozen=True)
class LoadResult:
    """Everything a run measured, mergeable across worker processes."""

    duration: float
    bucket: float
    sent: int
    answered: int
    failed: int
    ok: int
    unfinished: int
    # (priority, outcome key) -> histogram of latencies in µs
    histograms: Mapping[tuple[int, str], HdrHistogram]
    buckets: Mapping[int, _Bucket]
    send_lag: HdrHistogram = field(default_factory=_new_histogram)

    def merged(self, *, priority: int | None = None, key: str | None = None) -> HdrHistogram:
        """One histogram of the requests matching ``priority`` and/or outcome ``key``."""
        out = _new_histogram()
        for (p, k), hist in self.histograms.items():
            if (priority is None or p == priority) and (key is None or k == key):
                out.add(hist)
        return out

    def ok_histogram(self, priority: int | None = None) -> HdrHistogram:
        """Latencies of the 2xx answers only (of one priority, if given)."""
        return self.status_histogram(lambda status: 200 <= status < 300, priority)

    def status_histogram(
        self, accept: Callable[[int], bool], priority: int | None = None
    ) -> HdrHistogram:
        """Latencies of the answers whose HTTP status ``accept`` takes (0 = no answer)."""
        out = _new_histogram()
        for (p, k), hist in self.histograms.items():
            if priority is not None and p != priority:
                continue
            head = k.split(" ", 1)[0]
            status = int(head) if head.isdigit() else 0
            if accept(status):
                out.add(hist)
        return out

    @property
    def priorities(self) -> list[int]:
        """The priorities that were sent, sorted."""
        return sorted({p for p, _ in self.histograms})

    @property
    def outcome_keys(self) -> list[str]:
        """The outcome keys seen, sorted (successes first)."""
        return sorted({k for _, k in self.histograms}, key=lambda k: (not k.startswith("2"), k))

    def series(self) -> list[SeriesPoint]:
        """The per-bucket time series, with empty buckets filled in."""
        if not self.buckets:
            return []
        last = max(self.buckets)
        points = []
        for i in range(last + 1):
            b = self.buckets.get(i) or _Bucket()
            lat = np.frombuffer(b.latencies_ms, dtype=np.float64) if b.latencies_ms else None
            if lat is not None and lat.size:
                p50, p90, p99 = (
                    float(v) for v in np.percentile(lat, [50, 90, 99], method="inverted_cdf")
                )
                mx: float | None = float(lat.max())
            else:
                p50 = p90 = p99 = mx = None  # type: ignore[assignment]
            points.append(
                SeriesPoint(
                    t=round(i * self.bucket, 6),
                    sent=b.sent,
                    answered=b.answered,
                    ok=b.ok,
                    failed=b.failed,
                    in_flight_max=b.in_flight_max,
                    by_outcome=dict(b.by_outcome),
                    p50_ms=p50,
                    p90_ms=p90,
                    p99_ms=p99,
                    max_ms=mx,
                )
            )
        return points

    # -- transport between worker processes --------------------------------------------

    def to_wire(self) -> dict[str, Any]:
        """A JSON-able form for sending a worker's result to the parent process."""
        return {
            "duration": self.duration,
            "bucket": self.bucket,
            "counts": [self.sent, self.answered, self.failed, self.ok, self.unfinished],
            "send_lag": self.send_lag.encode().decode("ascii"),
            "histograms": [
                [p, k, h.encode().decode("ascii")] for (p, k), h in self.histograms.items()
            ],
            "buckets": {
                str(i): [
                    b.sent,
                    b.answered,
                    b.ok,
                    b.failed,
                    b.in_flight_max,
                    b.by_outcome,
                    base64.b64encode(zlib.compress(b.latencies_ms.tobytes())).decode("ascii"),
                ]
                for i, b in self.buckets.items()
            },
        }

    @classmethod
    def from_wire(cls, data: Mapping[str, Any]) -> LoadResult:
        """Inverse of `to_wire`."""
        hists = {}
        for p, k, enc in data["histograms"]:
            hists[(int(p), str(k))] = _decode_histogram(enc)
        buckets = {}
        for i, (sent, answered, ok, failed, ifm, by, lat) in data["buckets"].items():
            arr = array("d")
            arr.frombytes(zlib.decompress(base64.b64decode(lat)))
            buckets[int(i)] = _Bucket(sent, answered, ok, failed, ifm, dict(by), arr)
        sent, answered, failed, ok, unfinished = data["counts"]
        send_lag = _decode_histogram(data["send_lag"])
        return cls(
            duration=float(data["duration"]),
            bucket=float(data["bucket"]),
            sent=sent,
            answered=answered,
            failed=failed,
            ok=ok,
            unfinished=unfinished,
            histograms=hists,
            buckets=buckets,
            send_lag=send_lag,
        )

    @classmethod
    def merge(cls, results: Iterable[LoadResult]) -> LoadResult:
        """Add the results of several workers that ran side by side."""
        results = list(results)
        if not results:
            raise ValueError("merge needs at least one result")
        hists: dict[tuple[int, str], HdrHistogram] = {}
        buckets: dict[int, _Bucket] = {}
        send_lag = _new_histogram()
        for r in results:
            send_lag.add(r.send_lag)
            for k, h in r.histograms.items():
                hists.setdefault(k, _new_histogram()).add(h)
            for i, b in r.buckets.items():
                m = buckets.setdefault(i, _Bucket())
                m.sent += b.sent
                m.answered += b.answered
                m.ok += b.ok
                m.failed += b.failed
                m.in_flight_max += b.in_flight_max
                for key, n in b.by_outcome.items():
                    m.by_outcome[key] = m.by_outcome.get(key, 0) + n
                m.latencies_ms.extend(b.latencies_ms)
        return cls(
            duration=max(r.duration for r in results),
            bucket=results[0].bucket,
            sent=sum(r.sent for r in results),
            answered=sum(r.answered for r in results),
            failed=sum(r.failed for r in results),
            ok=sum(r.ok for r in results),
            unfinished=sum(r.unfinished for r in results),
            histograms=hists,
            buckets=buckets,
            send_lag=send_lag,
        )


class Recorder:
    """Collects every request's outcome and latency. Synchronous: it never checkpoints.

    ``keep_records=True`` also keeps each request's (intended send, end, priority, outcome
    key) in ``records``, for tests and small runs.
    """

    def __init__(self, *, bucket: float = 1.0, keep_records: bool = False) -> None:
        if not bucket > 0:
            raise ValueError(f"bucket must be > 0 (got {bucket})")
        self.bucket = bucket
        self.t0: float | None = None
        self.t_end: float | None = None
        self.sent = 0
        self.answered = 0
        self.failed = 0
        self.ok = 0
        self.unfinished = 0
        self.in_flight = 0
        self.by_outcome: dict[str, int] = {}
        self._hists: dict[tuple[int, str], HdrHistogram] = {}
        self._buckets: dict[int, _Bucket] = {}
        self.records: list[tuple[float, float, int, str]] | None = [] if keep_records else None
        # How late requests left the generator (µs): if this grows, the client is the
        # bottleneck and the figures measure it, not the server.
        self.send_lag = _new_histogram()
        self._last_now = 0.0

    def start(self, t0: float) -> None:
        """Mark the start of the run (``trio.current_time()``)."""
        self.t0 = t0

    def finish(self, t_end: float) -> None:
        """Mark the end of the run."""
        self.t_end = t_end

    def _bucket(self, t: float) -> _Bucket:
        assert self.t0 is not None, "Recorder.start() was not called"
        i = max(0, int((t - self.t0) / self.bucket))
        b = self._buckets.get(i)
        if b is None:
            b = self._buckets[i] = _Bucket()
        return b

    def on_send(self, intended: float, now: float | None = None) -> None:
        """A request is due at ``intended`` and being sent at ``now``.

        ``now - intended`` is how late the generator itself is (its send lag).
        """
        if now is not None:
            lag_us = round((now - intended) * 1e6)
            self.send_lag.record_value(min(max(lag_us, _LOWEST_US), _HIGHEST_US))
        self.sent += 1
        self.in_flight += 1
        b = self._bucket(intended)
        b.sent += 1
        if self.in_flight > b.in_flight_max:
            b.in_flight_max = self.in_flight

    def on_done(self, intended: float, end: float, priority: int, outcome: Outcome | None) -> None:
        """The request due at ``intended`` ended at ``end`` (``None``: abandoned)."""
        self.in_flight -= 1
        self._last_now = end
        if outcome is None:
            self.unfinished += 1
            return
        latency = end - intended
        key = outcome.key
        b = self._bucket(end)
        if outcome.status:
            self.answered += 1
            b.answered += 1
            if 200 <= outcome.status < 300:
                self.ok += 1
                b.ok += 1
        else:
            self.failed += 1
            b.failed += 1
        self.by_outcome[key] = self.by_outcome.get(key, 0) + 1
        b.by_outcome[key] = b.by_outcome.get(key, 0) + 1
        b.latencies_ms.append(latency * 1000.0)
        hist = self._hists.get((priority, key))
        if hist is None:
            hist = self._hists[(priority, key)] = _new_histogram()
        us = round(latency * 1e6)
        hist.record_value(min(max(us, _LOWEST_US), _HIGHEST_US))
        if self.records is not None:
            self.records.append((intended, end, priority, key))

    def statistics(self, now: float) -> RecorderStatistics:
        """Counters and the latency of the last full bucket, for a live display."""
        assert self.t0 is not None, "Recorder.start() was not called"
        i = int((now - self.t0) / self.bucket)
        recent = self._buckets.get(i - 1) or self._buckets.get(i)
        p50 = p99 = None
        rate = 0.0
        if recent is not None:
            rate = recent.answered / self.bucket + recent.failed / self.bucket
            if recent.latencies_ms:
                lat = np.frombuffer(recent.latencies_ms, dtype=np.float64)
                p50, p99 = (float(v) for v in np.percentile(lat, [50, 99], method="inverted_cdf"))
        return RecorderStatistics(
            elapsed=now - self.t0,
            sent=self.sent,
            answered=self.answered,
            failed=self.failed,
            ok=self.ok,
            unfinished=self.unfinished,
            in_flight=self.in_flight,
            by_outcome=dict(self.by_outcome),
            recent_p50_ms=p50,
            recent_p99_ms=p99,
            recent_rate=rate,
        )

    def result(self) -> LoadResult:
        """The run's measurements (call after the run)."""
        assert self.t0 is not None, "Recorder.start() was not called"
        end = self.t_end if self.t_end is not None else self._last_now
        return LoadResult(
            duration=max(0.0, end - self.t0),
            bucket=self.bucket,
            sent=self.sent,
            answered=self.answered,
            failed=self.failed,
            ok=self.ok,
            unfinished=self.unfinished,
            histograms=dict(self._hists),
            buckets=dict(self._buckets),
            send_lag=self.send_lag,
        )
