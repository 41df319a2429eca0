"""The report: counts, HDR percentiles, the per-second series, the SLO verdict, and the
files (report.json, valid PNGs, report.html showing them)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from dtesn_trio.soak.recorder import LoadResult, Outcome, Recorder
from dtesn_trio.soak.report import SLO, build_report, check_slo, write_report
from dtesn_trio.soak.sampler import headlines
from dtesn_trio.soak.targets import flatten, parse_prometheus

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk; fails unless the file is a PNG."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path.name} is not a PNG"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR"
    assert length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data.endswith(b"IEND\xaeB`\x82"), f"{path.name} is truncated"
    return width, height


def check_report_files(directory: Path) -> dict[str, Any]:
    """report.json parses, every plot is a valid non-trivial PNG that report.html shows."""
    report = json.loads((directory / "report.json").read_text())
    html = (directory / "report.html").read_text()
    assert report["plots"], "no plots"
    for name in report["plots"]:
        width, height = png_size(directory / name)
        assert width >= 400
        assert height >= 200
        assert f'src="{name}"' in html
    c = report["counts"]
    assert c["sent"] == c["answered"] + c["failed"] + c["unfinished"]
    return report


def _synthetic() -> LoadResult:
    """1000 requests over 10 s: latencies 1..1000 ms, every 10th a 503, 5 timeouts."""
    rec = Recorder()
    rec.start(100.0)
    for i in range(1000):
        intended = 100.0 + i / 100
        rec.on_send(intended)
        if i % 200 == 199:
            outcome = Outcome.TIMEOUT
        elif i % 10 == 9:
            outcome = Outcome(503, "overloaded")
        else:
            outcome = Outcome.OK
        rec.on_done(intended, intended + (i + 1) / 1000, i % 3, outcome)
    rec.finish(110.0)
    return rec.result()


def test_counts_rates_and_percentiles() -> None:
    report = build_report(_synthetic(), target={"kind": "test"}, load={"mode": "open"})
    assert report["counts"] == {
        "sent": 1000,
        "answered": 995,
        "failed": 5,
        "unfinished": 0,
        "ok": 900,
        "errors": 100,
    }
    assert report["error_rate"] == 0.1
    assert report["goodput_within_deadline"] is None
    assert report["latency_ms"]["refused"]["count"] == 95
    assert report["by_priority"]["0"]["ok_latency_ms"]["count"] == 300
    assert report["offered_rate"] == 100.0
    assert report["goodput"] == 90.0
    lat = report["latency_ms"]["all"]
    assert lat["count"] == 1000
    assert lat["p50"] == pytest.approx(500, rel=0.002)
    assert lat["p99"] == pytest.approx(990, rel=0.002)
    assert lat["max"] == pytest.approx(1000, rel=0.002)
    assert set(report["by_priority"]) == {"0", "1", "2"}
    assert sum(p["count"] for p in report["by_priority"].values()) == 1000
    assert {k: v["count"] for k, v in report["by_status"].items()} == {
        "200": 900,
        "503 overloaded": 95,
        "timeout": 5,
    }
    series = report["timeseries"]
    assert len(series) == 11  # completions run into the 11th second
    assert sum(p["sent"] for p in series) == 1000
    assert sum(p["answered"] + p["failed"] for p in series) == 1000
    assert series[0]["sent"] == 100


def test_goodput_within_deadline_counts_ok_answers_in_time() -> None:
    # ok answers with latency <= 500.5 ms: i < 500, minus the 50 refused or timed out.
    report = build_report(_synthetic(), target={}, load={"deadline_ms": 500.5})
    assert report["goodput_within_deadline"] == 45.0
    report = build_report(_synthetic(), target={}, load={"deadline_ms": 10_000})
    assert report["goodput_within_deadline"] == report["goodput"] == 90.0


def test_a_late_generator_is_reported() -> None:
    rec = Recorder()
    rec.start(0.0)
    for i in range(100):
        intended = i / 100
        rec.on_send(intended, intended + (0.05 if i % 10 == 0 else 0.0001))
        rec.on_done(intended, intended + 0.01, 2, Outcome.OK)
    rec.finish(1.0)
    report = build_report(rec.result(), target={}, load={})
    assert report["client"]["send_lag_ms"]["p99"] == pytest.approx(50, rel=0.01)
    assert report["warnings"][0].startswith("the load generator sent late (p99 50.")
    on_time = Recorder()
    on_time.start(0.0)
    on_time.on_send(0.0, 0.0001)
    on_time.on_done(0.0, 0.01, 2, Outcome.OK)
    assert build_report(on_time.result(), target={}, load={})["warnings"] == []


def test_slo_verdicts() -> None:
    report = build_report(_synthetic(), target={}, load={}, slo=SLO(p99_ms=2000))
    assert report["slo"]["passed"]
    (violation,) = check_slo(report, SLO(p99_ms=500))
    assert violation.startswith("p99 latency 990.")
    assert violation.endswith(" ms > 500 ms")
    assert check_slo(report, SLO(max_error_rate=0.05)) == ["error rate 0.1000 > 0.05"]
    assert check_slo(report, SLO(max_error_rate=0.1)) == []
    empty = Recorder()
    empty.start(0.0)
    empty.finish(1.0)
    empty_report = build_report(empty.result(), target={}, load={})
    assert check_slo(empty_report, SLO(p99_ms=1)) == ["no request was sent"]
    assert check_slo(empty_report, SLO()) == []
    with pytest.raises(ValueError, match=r"slo\.max_error_rate"):
        SLO(max_error_rate=2)


def test_files_are_written_and_valid(tmp_path: Path) -> None:
    samples = [
        {
            "t": float(i),
            "stats": {"load.current_limit": 10.0 + i, "queue.current_size": 2.0},
            "metrics": {"process_resident_memory_bytes": 1e8},
        }
        for i in range(5)
    ]
    for s in samples:
        s["headlines"] = headlines(s)
    report = build_report(
        _synthetic(),
        target={"kind": "http", "url": "http://x"},
        load={"mode": "open"},
        samples=samples,
        client={"cpu_ms_per_request": 0.25},
        slo=SLO(p99_ms=500),
    )
    paths = write_report(report, tmp_path / "out")
    assert {p.name for p in paths} >= {"report.json", "report.html", "latency.png"}
    written = check_report_files(tmp_path / "out")
    assert written["plots"] == [
        "latency.png",
        "throughput.png",
        "errors.png",
        "in_flight.png",
        "limiter.png",
    ]
    html = (tmp_path / "out" / "report.html").read_text()
    assert "SLO violated" in html
    assert "p99 latency 990." in html
    assert "ms &gt; 500 ms" in html
    assert written["target_samples"][0]["headlines"]["limiter_limit"] == 10.0
    summary = written["target_summary"]
    assert summary["limiter_limit"] == {"first": 10.0, "last": 14.0, "min": 10.0, "max": 14.0}
    assert summary["breaker_state"] is None
    assert summary["samples"] == 5
    assert "<h2>The target&#x27;s own view" in html or "The target's own view" in html


def test_a_truncated_png_is_caught(tmp_path: Path) -> None:
    bad = tmp_path / "x.png"
    bad.write_bytes(b"GIF89a" + bytes(30))
    with pytest.raises(AssertionError, match="not a PNG"):
        png_size(bad)


def test_wire_round_trip_and_merge() -> None:
    a = _synthetic()
    a.send_lag.record_value(1234)
    b = LoadResult.from_wire(json.loads(json.dumps(a.to_wire())))
    assert b.send_lag.get_max_value() == a.send_lag.get_max_value()
    assert (b.sent, b.ok, b.failed) == (a.sent, a.ok, a.failed)
    assert b.merged().get_value_at_percentile(99) == a.merged().get_value_at_percentile(99)
    both = LoadResult.merge([a, b])
    assert both.sent == 2000
    assert both.merged().get_total_count() == 2000
    assert sum(p.sent for p in both.series()) == 2000
    assert [p.p99_ms for p in both.series()] == [p.p99_ms for p in a.series()]


def test_headlines_flatten_and_prometheus() -> None:
    stats = flatten(
        {
            "load": {"effective_capacity": 32, "concurrent_requests": 3},
            "queue": {"total_queued_requests": 7, "levels": [1, 2]},
            "breaker": {"engine": {"state": "closed"}},
            "loop": {"max_step_ms": 4.5},
            "ok": True,
        }
    )
    assert stats["queue.levels.1"] == 2.0
    assert stats["ok"] == 1.0
    text = (
        "# TYPE dtesn_queue_depth gauge\n"
        'dtesn_queue_depth{priority="0"} 2\n'
        'dtesn_queue_depth{priority="1"} 3\n'
        "# TYPE process_resident_memory_bytes gauge\n"
        "process_resident_memory_bytes 1.5e+08\n"
        "# TYPE lat histogram\n"
        'lat_bucket{le="0.1"} 1\nlat_count 1\nlat_sum 0.05\n'
    )
    metrics = parse_prometheus(text)
    assert metrics["dtesn_queue_depth{priority=0}"] == 2.0
    assert not any("_bucket" in k for k in metrics)
    h = headlines({"stats": stats, "metrics": metrics})
    assert h == {
        "rss_bytes": 1.5e8,
        "queue_depth": 7.0,
        "limiter_limit": 32.0,
        "limiter_in_flight": 3.0,
        "breaker_state": "closed",
        "max_step_ms": 4.5,
    }
    # Without the stats, the queue depth comes from the metrics, summed over levels.
    assert headlines({"metrics": metrics})["queue_depth"] == 5.0
