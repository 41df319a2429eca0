"""The soak report: ``report.json``, PNG plots (matplotlib, Agg) and a one-page
``report.html``, plus the SLO verdict the exit code follows."""

from __future__ import annotations

import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dtesn_trio.soak.recorder import LatencySummary, LoadResult, count_at_or_below

__all__ = ["SLO", "build_report", "check_slo", "write_report"]

REPORT_VERSION = 1
LAG_WARNING_MS = 10.0  # send lag p99 above this: the generator itself was behind


@dataclass(frozen=True)
class SLO:
    """Service-level objectives a run must meet (None = not checked).

    ``p99_ms`` applies to the latency of every request sent (errors and timeouts included:
    a fast refusal is not a pass, and a timeout counts with its full wait);
    ``max_error_rate`` to the share of requests sent that did not get a 2xx answer.
    """

    p99_ms: float | None = None
    max_error_rate: float | None = None

    def __post_init__(self) -> None:
        if self.p99_ms is not None and not self.p99_ms > 0:
            raise ValueError(f"slo.p99_ms must be > 0 (got {self.p99_ms})")
        if self.max_error_rate is not None and not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"slo.max_error_rate must be in [0, 1] (got {self.max_error_rate})")


def _summary(hist: Any) -> dict[str, float] | None:
    s = LatencySummary.of(hist)
    return None if s is None else s.to_dict()


def _send_window(load: Mapping[str, Any], seconds: float, interrupted: bool) -> float:
    planned = load.get("duration_s")
    if interrupted or not isinstance(planned, int | float):
        return seconds
    return min(float(planned), seconds) if seconds > 0 else float(planned)


def _rate(n: int, seconds: float) -> float:
    return round(n / seconds, 3) if seconds > 0 else 0.0


def summarize_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per headline figure of the target's samples: first, last, min, max (numbers), or
    the states seen (strings); plus how many samples failed."""
    out: dict[str, Any] = {"samples": len(samples), "failed": sum("error" in s for s in samples)}
    names: list[str] = []
    for s in samples:
        names.extend(k for k in s.get("headlines", {}) if k not in names)
    for name in names:
        values = [s["headlines"].get(name) for s in samples if s.get("headlines")]
        numbers = [v for v in values if isinstance(v, int | float)]
        states = [v for v in values if isinstance(v, str)]
        if numbers:
            out[name] = {
                "first": numbers[0],
                "last": numbers[-1],
                "min": min(numbers),
                "max": max(numbers),
            }
        elif states:
            out[name] = {"states": sorted(set(states)), "last": states[-1]}
        else:
            out[name] = None
    return out


def check_slo(report: Mapping[str, Any], slo: SLO) -> list[str]:
    """The SLO violations of a report, each a sentence; empty when it passes."""
    violations = []
    sent = report["counts"]["sent"]
    if (slo.p99_ms is not None or slo.max_error_rate is not None) and sent == 0:
        return ["no request was sent"]
    if slo.p99_ms is not None:
        p99 = (report["latency_ms"]["all"] or {}).get("p99")
        if p99 is not None and p99 > slo.p99_ms:
            violations.append(f"p99 latency {p99:.1f} ms > {slo.p99_ms:g} ms")
    if slo.max_error_rate is not None:
        rate = report["error_rate"]
        if rate > slo.max_error_rate:
            violations.append(f"error rate {rate:.4f} > {slo.max_error_rate:g}")
    return violations


def build_report(
    result: LoadResult,
    *,
    target: Mapping[str, Any],
    load: Mapping[str, Any],
    samples: Sequence[Mapping[str, Any]] = (),
    client: Mapping[str, Any] | None = None,
    slo: SLO | None = None,
    started_at: str | None = None,
    interrupted: bool = False,
) -> dict[str, Any]:
    """The report as a JSON-able dict (see the README of the soak runner for its fields)."""
    seconds = result.duration
    deadline_ms = load.get("deadline_ms")
    failed_total = result.sent - result.ok - result.unfinished
    by_priority = {}
    for p in result.priorities:
        hist = result.merged(priority=p)
        ok_hist_count = sum(
            h.get_total_count()
            for (pp, k), h in result.histograms.items()
            if pp == p and k[:1] == "2" and k[:3].isdigit()
        )
        count = hist.get_total_count()
        by_priority[str(p)] = {
            "count": count,
            "rate": _rate(count, seconds),
            "ok": ok_hist_count,
            "errors": count - ok_hist_count,
            "latency_ms": _summary(hist),
            "ok_latency_ms": _summary(result.ok_histogram(p)),
        }
    by_outcome = {}
    for key in result.outcome_keys:
        hist = result.merged(key=key)
        count = hist.get_total_count()
        by_outcome[key] = {
            "count": count,
            "rate": _rate(count, seconds),
            "latency_ms": _summary(hist),
        }
    series = [p.to_dict() for p in result.series()]
    report: dict[str, Any] = {
        "version": REPORT_VERSION,
        "started_at": started_at,
        "interrupted": interrupted,
        "target": dict(target),
        "load": dict(load),
        "duration_s": round(seconds, 3),
        "counts": {
            "sent": result.sent,
            "answered": result.answered,
            "failed": result.failed,
            "unfinished": result.unfinished,
            "ok": result.ok,
            "errors": failed_total,
        },
        # Offered over the load's own window (a finished run's drain sends nothing).
        "offered_rate": _rate(result.sent, _send_window(load, seconds, interrupted)),
        "achieved_rate": _rate(result.answered + result.failed, seconds),
        "goodput": _rate(result.ok, seconds),
        "goodput_within_deadline": (
            None
            if deadline_ms is None
            else _rate(count_at_or_below(result.ok_histogram(), deadline_ms), seconds)
        ),
        "error_rate": round(failed_total / result.sent, 6) if result.sent else 0.0,
        "latency_ms": {
            "all": _summary(result.merged()),
            "ok": _summary(result.ok_histogram()),
            # Refusals (429 and 503): how fast the server says no matters under overload.
            "refused": _summary(result.status_histogram(lambda s: s in (429, 503))),
        },
        "by_priority": by_priority,
        "by_status": by_outcome,
        "timeseries": series,
        "target_summary": summarize_samples(samples),
        "target_samples": list(samples),
        "client": {**(client or {}), "send_lag_ms": _summary(result.send_lag)},
    }
    lag = report["client"]["send_lag_ms"]
    if lag is not None and lag["p99"] > LAG_WARNING_MS:
        report["warnings"] = [
            f"the load generator sent late (p99 {lag['p99']:.1f} ms behind schedule): "
            "it may be the bottleneck; try --workers"
        ]
    else:
        report["warnings"] = []
    slo = slo or SLO()
    violations = check_slo(report, slo)
    report["slo"] = {
        "p99_ms": slo.p99_ms,
        "max_error_rate": slo.max_error_rate,
        "violations": violations,
        "passed": not violations,
    }
    return report


# -- plots ------------------------------------------------------------------------------

_BREAKER_STATES = {"closed": 0.0, "half_open": 0.5, "half-open": 0.5, "open": 1.0}


def _gauge(value: Any) -> float:
    """A headline as a number to plot (breaker states mapped to 0 / 0.5 / 1), else NaN."""
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, str):
        return _BREAKER_STATES.get(value.lower(), math.nan)
    return math.nan


def _plot_files(report: Mapping[str, Any], directory: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    series = report["timeseries"]
    bucket = 1.0
    if len(series) >= 2:
        bucket = series[1]["t"] - series[0]["t"] or 1.0
    # Each bucket's figures are drawn at its middle.
    t = [p["t"] + bucket / 2 for p in series]
    samples = report["target_samples"]
    st = [s["t"] for s in samples]
    written: list[str] = []

    def save(fig: Any, name: str) -> None:
        # Fixed margins: tight_layout costs more than the drawing itself.
        height = fig.get_figheight()
        fig.subplots_adjust(
            left=0.09, right=0.98, bottom=0.5 / height + 0.02, top=1 - 0.35 / height, hspace=0.45
        )
        fig.savefig(directory / name, dpi=90)
        plt.close(fig)
        written.append(name)

    def no_data(ax: Any, text: str) -> None:
        ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="gray")

    # Latency percentiles over time.
    fig, ax = plt.subplots(figsize=(8, 3.6))
    for pct, style in (("p50", "-"), ("p90", "-"), ("p99", "-"), ("max", ":")):
        ys = [p["latency_ms"][pct] for p in series]
        ys = [math.nan if y is None else y for y in ys]
        ax.plot(t, ys, style, label=pct)
    if report["slo"]["p99_ms"]:
        ax.axhline(report["slo"]["p99_ms"], color="red", lw=0.8, ls="--", label="SLO p99")
    if any(p["latency_ms"]["p50"] for p in series):
        ax.set_yscale("log")
        ax.legend(loc="upper left", fontsize=8)
    else:
        no_data(ax, "no completed requests")
    ax.set_title("Latency (from intended send time) by completion second")
    ax.set_xlabel("seconds")
    ax.set_ylabel("ms")
    save(fig, "latency.png")

    # Throughput.
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(t, [p["sent"] / bucket for p in series], label="offered (sent)")
    ax.plot(t, [(p["answered"] + p["failed"]) / bucket for p in series], label="completed")
    ax.plot(t, [p["ok"] / bucket for p in series], label="ok (2xx)")
    ax.set_title("Throughput")
    ax.set_xlabel("seconds")
    ax.set_ylabel("requests/s")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "throughput.png")

    # Errors by outcome.
    fig, ax = plt.subplots(figsize=(8, 3.6))
    keys = sorted({k for p in series for k in p["by_outcome"] if not k.startswith("2")})
    bottom = [0.0] * len(series)
    for key in keys:
        ys = [p["by_outcome"].get(key, 0) / bucket for p in series]
        ax.bar(t, ys, width=bucket * 0.9, bottom=bottom, label=key)
        bottom = [b + y for b, y in zip(bottom, ys, strict=True)]
    if keys:
        ax.legend(loc="upper left", fontsize=8)
    else:
        no_data(ax, "no errors")
    ax.set_title("Errors by status and code")
    ax.set_xlabel("seconds")
    ax.set_ylabel("per second")
    save(fig, "errors.png")

    # In flight: the client's, and the server's own view if it reports one.
    fig, ax = plt.subplots(figsize=(8, 3.6))
    ax.plot(t, [p["in_flight_max"] for p in series], label="client in flight (max)")
    for name, label in (("limiter_in_flight", "server in flight"), ("queue_depth", "queue depth")):
        ys = [s["headlines"].get(name) for s in samples]
        if any(isinstance(y, float) for y in ys):
            ax.plot(st, [y if isinstance(y, float) else math.nan for y in ys], label=label)
    ax.set_title("In flight")
    ax.set_xlabel("seconds")
    ax.legend(loc="upper left", fontsize=8)
    save(fig, "in_flight.png")

    # The target's own gauges: limiter limit, breaker state, RSS, longest loop step.
    fig, axes = plt.subplots(4, 1, figsize=(8, 8.4), sharex=True)
    for ax, (name, title, scale) in zip(
        axes,
        (
            ("limiter_limit", "Adaptive limiter limit", 1.0),
            ("breaker_state", "Circuit breaker (0 closed, 0.5 half-open, 1 open)", 1.0),
            ("rss_bytes", "Server RSS (MiB)", 1 / 2**20),
            ("max_step_ms", "Longest event-loop step (ms)", 1.0),
        ),
        strict=True,
    ):
        ys = [_gauge(s["headlines"].get(name)) for s in samples]
        if any(not math.isnan(y) for y in ys):
            ax.plot(st, [y * scale for y in ys])
        else:
            no_data(ax, "not reported by the target")
        ax.set_title(title, fontsize=10)
    axes[-1].set_xlabel("seconds")
    save(fig, "limiter.png")
    return written


# -- html -------------------------------------------------------------------------------


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1e6 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return html.escape(str(v))


def _table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _latency_row(name: str, d: Mapping[str, Any]) -> list[Any]:
    lat = d.get("latency_ms") or {}
    return [
        name,
        d.get("count"),
        d.get("rate"),
        lat.get("p50"),
        lat.get("p90"),
        lat.get("p99"),
        lat.get("max"),
    ]


def render_html(report: Mapping[str, Any], plots: Sequence[str]) -> str:
    """The one-page HTML report showing the summary, tables and plots."""
    c = report["counts"]
    slo = report["slo"]
    verdict = (
        "<p class=pass>SLO met</p>"
        if slo["passed"]
        else "<p class=fail>SLO violated: " + html.escape("; ".join(slo["violations"])) + "</p>"
    )
    target = report["target"]
    title = f"dtesn-trio soak: {target.get('url') or target.get('kind')}"
    lat_all = report["latency_ms"]["all"] or {}
    summary = _table(
        [
            ["sent", c["sent"]],
            ["answered (any HTTP status)", c["answered"]],
            ["failed (no HTTP response)", c["failed"]],
            ["unfinished (run interrupted)", c["unfinished"]],
            ["ok (2xx)", c["ok"]],
            ["error rate", report["error_rate"]],
            ["offered rate /s", report["offered_rate"]],
            ["achieved rate /s", report["achieved_rate"]],
            ["goodput /s", report["goodput"]],
            ["goodput within deadline /s", report["goodput_within_deadline"]],
            [
                "p50 / p99 / max ms",
                f"{_fmt(lat_all.get('p50'))} / {_fmt(lat_all.get('p99'))} / {_fmt(lat_all.get('max'))}",
            ],
            ["client CPU ms per request", report["client"].get("cpu_ms_per_request")],
            ["client send lag p99 ms", (report["client"].get("send_lag_ms") or {}).get("p99")],
            ["duration s", report["duration_s"]],
        ],
        ["", "value"],
    )
    lat_header = ["", "count", "rate /s", "p50 ms", "p90 ms", "p99 ms", "max ms"]
    prio = _table(
        [_latency_row(f"priority {p}", d) for p, d in report["by_priority"].items()], lat_header
    )
    status = _table([_latency_row(k, d) for k, d in report["by_status"].items()], lat_header)
    load = _table([[k, v] for k, v in report["load"].items()], ["load", "value"])
    target_rows = []
    for name, d in report.get("target_summary", {}).items():
        if not isinstance(d, dict):
            continue
        if "states" in d:
            target_rows.append([name, ", ".join(d["states"]), None, None, d["last"]])
        else:
            target_rows.append([name, d["first"], d["min"], d["max"], d["last"]])
    target_table = (
        _table(target_rows, ["", "first", "min", "max", "last"])
        if target_rows
        else "<p>The target reported no statistics.</p>"
    )
    images = "".join(
        f'<figure><img src="{html.escape(p)}" alt="{html.escape(p)}"></figure>' for p in plots
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 980px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
td, th {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
td:first-child, th:first-child {{ text-align: left; }}
.pass {{ color: #070; font-weight: bold; }} .fail {{ color: #b00; font-weight: bold; }}
.grid {{ display: flex; gap: 2em; flex-wrap: wrap; }}
img {{ max-width: 100%; }}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>Started {_fmt(report.get("started_at"))}; {_fmt(report["load"].get("mode"))} loop.
Latency is measured from each request's intended send time.</p>
{verdict}
{"".join(f"<p class=fail>{html.escape(w)}</p>" for w in report.get("warnings", []))}
<div class=grid><div><h2>Summary</h2>{summary}</div><div><h2>Load</h2>{load}</div></div>
<h2>By priority</h2>{prio}
<h2>By status</h2>{status}
<h2>The target's own view (/v1/stats, /metrics)</h2>{target_table}
<h2>Plots</h2>{images}
<p>Raw numbers: <a href="report.json">report.json</a></p>
</body></html>
"""


def write_report(report: Mapping[str, Any], directory: str | os.PathLike[str]) -> list[Path]:
    """Write report.json, the PNG plots and report.html into ``directory`` (created).

    Returns the paths written. Blocking (matplotlib): call it in a worker thread from
    async code.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    plots = _plot_files(report, out)
    full = dict(report)
    full["plots"] = plots
    (out / "report.json").write_text(json.dumps(full, indent=1, sort_keys=False) + "\n")
    (out / "report.html").write_text(render_html(full, plots))
    return [out / "report.json", out / "report.html", *(out / p for p in plots)]
