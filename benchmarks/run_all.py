"""Run every benchmark and write BENCHMARKS.md: one table of every claim, quick and full.

    python benchmarks/run_all.py                 # run all --quick, write BENCHMARKS.md
    python benchmarks/run_all.py --full          # run all at full length (minutes each)
    python benchmarks/run_all.py --only client   # re-run some, keep the others' last results
    python benchmarks/run_all.py --full --only overload concurrency
    python benchmarks/run_all.py --render-only   # rewrite BENCHMARKS.md from the results

Each ``benchmarks/*.py`` (but this one and ``_*.py``) runs as a subprocess with
``--json --quick`` (or ``--json`` alone with ``--full``); the last line of its stdout must
be one JSON object. A benchmark that fails, times out or prints no JSON is recorded as
failed (with the reason) and the rest go on. Results are kept in
``benchmarks/results.json`` (quick) and ``benchmarks/results-full.json`` (full), each
entry dated, so one benchmark can be re-run alone; BENCHMARKS.md shows both tables, each
row's command saying which it is.  The benchmarks need the ``bench`` extra
(``pip install -e '.[bench]'``) and ``storm.py`` Debian's ``wrk``: without them a
benchmark fails with that sentence, recorded as its reason.

Which keys of a benchmark's JSON are its figure, baseline, ratio and target is said once,
below, in SPECS (from the issues that asked for each benchmark). A benchmark not in SPECS
gets a row listing its numbers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import operator
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "benchmarks"
RESULTS = BENCH_DIR / "results.json"
RESULTS_FULL = BENCH_DIR / "results-full.json"
OUTPUT = ROOT / "BENCHMARKS.md"


@dataclass(frozen=True)
class Row:
    """One line of the table: which keys are the figure, the baseline and the ratio, and the
    target as ``"<op> <number or key>"`` checked against ``checked`` (default: the ratio if
    there is one, else the figure)."""

    figure: str
    baseline: str | None = None
    ratio: str | None = None
    target: str | None = None
    checked: str | None = None

    @property
    def target_key(self) -> str:
        return self.checked or self.ratio or self.figure


SPECS: dict[str, list[Row]] = {
    # issue 2
    "admission": [
        Row("admission_ops_per_s", "bare_limiter_ops_per_s", "ratio", ">= 0.7"),
        Row(
            "contended_admission_ops_per_s", "contended_bare_ops_per_s", "contended_ratio", ">= 0.7"
        ),
    ],
    # issue 3
    "pool": [
        Row("pool_ops_per_s", "bare_limiter_ops_per_s", "pool_ratio", ">= 0.7"),
        Row("pool_get_per_s", "raw_socket_get_per_s", "redis_ratio", ">= 0.5"),
        Row("fill_500_s", "fill_500_serial_s", "fill_speedup"),
    ],
    # issue 4
    "queue": [
        Row("queue_b1_per_s", "bare_roundtrip_per_s", "ratio_b1", ">= 0.7"),
        Row("queue_b32_per_s", "bare_roundtrip_per_s", "ratio_b32", ">= 1.2"),
    ],
    # issue 5
    "dtesn_quality": [Row("nrmse", "reservoirpy_nrmse", "ratio", "<= 1.1")],
    "dtesn_batching": [
        Row("batch32_per_s", "single_per_s", "speedup", ">= 3"),
        # issue 16: mixed lengths (lognormal, median 64 bytes) beside the all-64-byte row
        Row("mixed_batch32_per_s", "mixed_single_per_s", "mixed_speedup"),
        # per CPU-second of the computing thread: steadier on a busy machine
        Row("cpu_batch32_per_s", "cpu_single_per_s", "cpu_speedup"),
        Row("batch_gflops", "peak_gflops"),
    ],
    "runtime": [
        Row("runtime_per_s", "direct_per_s", "ratio", ">= 0.8"),
        # issue 16: equal parallelism (2 worker processes vs direct calls in 2 processes)
        Row("process_runtime_per_s", "direct_processes_per_s", "process_ratio", ">= 0.8"),
        Row("max_step_ms", target="<= 20"),
    ],
    # issue 6
    "http": [
        Row("process_per_s", "hello_per_s", "ratio", ">= 0.7"),
        Row("p99_ms"),
    ],
    # issue 7
    "client": [
        Row("soak_client_per_s", "httpx_per_s", "ratio", ">= 2"),
        Row("soak_client_cpu_ms_per_req", "httpx_cpu_ms_per_req"),
    ],
    # issue 8
    "overload": [
        Row("goodput_per_s", "capacity_per_s", "goodput_ratio", ">= 0.9"),
        Row("p0_p99_ms", "p0_p99_half_load_ms", "p0_p99_ratio", "<= 2"),
        Row("refusal_p99_ms", target="<= 50"),
        Row("naive_goodput_ratio", target="< goodput_ratio"),
        Row("capacity_per_s", "peer_capacity_per_s", "capacity_ratio", ">= 2"),
        Row("peer_goodput_ratio", target="< goodput_ratio"),
        # issue 13: the light row (serve's defaults, 64-byte inputs); a goodput ratio is <= 1
        Row("light_goodput_per_s", "light_capacity_per_s", "light_goodput_ratio"),
        Row("light_refusal_p99_ms", target="<= 50"),
        Row("goodput_ratio", target="<= 1"),
    ],
    "refusal": [
        Row("refusal_cpu_us", "floor_cpu_us", "refusal_cost_ratio"),
        Row("refusal_p99_ms", target="<= 50"),
    ],
    # issue 16: the largest N held (answered within the deadline or refused quickly,
    # none lost) against the FastAPI peer at the same N, same run; issue 8 claimed 10,000
    "concurrency": [
        Row("max_concurrent_held", "baseline_max_concurrent_held", "ratio"),
        Row("max_concurrent_held", target=">= 10000"),
        Row("peak_in_flight"),
        Row("rss_per_connection_kb"),
        Row("max_step_ms"),
    ],
    "soak_endurance": [
        Row("errors_5xx", target="== 0"),
        Row("rss_growth_pct", target="<= 5"),
        Row("heap_growth_pct", target="<= 5"),
        Row("tasks_growth", target="<= 0"),
    ],
    "rss_highwater": [
        Row("second_step_mb", "first_step_mb", "second_to_first_ratio", "<= 0.5"),
        Row("heap_growth_pct", target="<= 5"),
    ],
    "gc_pauses": [
        Row("tuned_gc_us_per_request", "baseline_gc_us_per_request", "gc_time_ratio", "<= 1"),
        Row("tuned_per_s", "baseline_per_s", "throughput_ratio"),
    ],
    "priority": [
        Row("rare_p0_p50_ms", "idle_p0_p50_ms", "rare_p0_p50_vs_idle"),
        Row("heavy_p0_p50_ms", "idle_p0_p50_ms", "heavy_p0_p50_vs_idle"),
        Row("rare_p0_p99_ms"),
        Row("heavy_p0_p99_ms"),
        Row("rare_bulk_ok"),
        Row("heavy_bulk_ok"),
    ],
    # issue 14
    "engines": [
        Row("runtime_identity_per_s", "queue_identity_per_s", "runtime_vs_queue", ">= 0.8"),
        Row("sklearn_batched_per_s", "sklearn_single_per_s", "sklearn_batch_speedup"),
    ],
    # issue 17: training through the API
    "fit": [
        Row("api_nrmse", "inprocess_nrmse", target="<= 1e-9", checked="nrmse_diff"),
        Row("api_fit_s", "inprocess_fit_s", "api_overhead_ratio"),
        Row("chunked_peak_rss_mb"),
        Row("chunked_rss_growth_mb"),
        Row("search_nrmse", target="<= 0.15"),
        Row("search_trials", target="<= 30"),
    ],
    # issue 18
    "jobs_retention": [
        Row("sqlite_sweep_p99_ms", "sqlite_baseline_p99_ms", "sqlite_claim_p99_ratio", "<= 2"),
        Row(
            "postgres_sweep_p99_ms",
            "postgres_baseline_p99_ms",
            "postgres_claim_p99_ratio",
            "<= 2",
        ),
    ],
    # issue 13: light requests on serve's defaults, 1-4,096 closed-loop connections (wrk)
    "storm": [
        Row("c1_p50_ms", "c1_floor_ms", "c1_ratio", "<= 2"),
        Row("c4_ok_per_s", "c4_peer_ok_per_s", "c4_vs_peer", ">= 2"),
        Row("best_ok_per_s"),
        Row("storm256_ratio", target=">= 0.8"),
        Row("storm1024_ratio", target=">= 0.8"),
        Row("storm4096_ratio", target=">= 0.7"),
        Row("storm_p99_ms", target="<= 1500"),  # 1.5 x the default deadline of 1,000 ms
        Row("storm_timeouts", target="< 0.01"),
        Row("storm_other_status", target="== 0"),
        Row("storm_connect_errors", target="== 0"),
    ],
    # issue 9
    "scale_out": [
        Row("goodput_2", "goodput_1", "scaling"),
        Row("rate_error_pct"),
    ],
}


def _retention_section(entry: Mapping[str, Any]) -> list[str]:
    """Job retention (issue 18): each backend's claims with and without a sweep."""
    result = entry["result"]
    length = "full length" if "--quick" not in entry["command"] else "quick"
    figures_of = [f for f in result.get("details", {}).values() if f]
    settings = ""
    if figures_of and "sweep_batch" in figures_of[0]:
        f = figures_of[0]
        settings = (
            f" (the defaults: {f['sweep_batch']:,} per statement, pauses of at least"
            f" {f['sweep_pause']:g} s sized so statements fill at most"
            f" {f.get('sweep_duty')} of the sweep's time)"
        )
    if figures_of and "phase_s" in figures_of[0]:
        method = (
            "claimers with those rows present and no sweep: off and on phases of"
            f' {figures_of[0]["phase_s"]:g} s alternate in one run. "vs before": the'
            " sweep's p99 against claims before any sweep. "
        )
    else:
        method = "claimers with those rows present and no sweep, measured before it. "
    lines = [
        f"## Job retention: claims during a sweep (issue 18, {length})",
        "",
        f"{entry.get('date', '')}, `{entry['command']}`: claim latency of "
        f"{result.get('claimers')} back-to-back claimers while `JobService.sweep()` deletes "
        f"{result.get('finished_rows', 0):,} finished rows{settings}, against the same "
        + method
        + f"Shared machine (load average {result.get('loadavg_1min')}): {result.get('note')}.",
        "",
        "| backend | p50 / p99 no sweep, ms | p50 / p99 during sweep, ms | ratio (target <= 2) "
        "| vs before | claims/s no sweep | claims/s during sweep | statement p50 / max, ms "
        "| sweep, s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, figures in result.get("details", {}).items():
        if figures is None:
            lines.append(f"| {backend} | skipped | | | | | | | |")
            continue
        lines.append(
            f"| {backend} | {_num(figures.get('baseline_p50_ms'))} /"
            f" {_num(figures['baseline_p99_ms'])} | {_num(figures.get('sweep_p50_ms'))} /"
            f" {_num(figures['sweep_p99_ms'])} | {_num(figures['claim_p99_ratio'])}"
            f" | {_num(figures.get('p99_vs_before_ratio'))}"
            f" | {_num(figures['baseline_claims_per_s'])}"
            f" | {_num(figures['sweep_claims_per_s'])}"
            f" | {_num(figures.get('statement_p50_ms'))} / {_num(figures.get('statement_max_ms'))}"
            f" | {_num(figures['sweep_s'])} |"
        )
    return lines


# Benchmarks whose figures get a section of their own below the table.
SECTIONS: dict[str, Callable[[Mapping[str, Any]], list[str]]] = {
    "jobs_retention": _retention_section,
}

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
    "==": operator.eq,
}


def benchmark_names() -> list[str]:
    """Every benchmark script's name (file stem), sorted."""
    return sorted(
        p.stem
        for p in BENCH_DIR.glob("*.py")
        if p.stem not in ("run_all", "peer_fastapi")  # peer_fastapi is a server, not a run
        and not p.stem.startswith("_")
    )


def run_one(name: str, timeout: float, *, full: bool = False) -> dict[str, Any]:
    """Run ``benchmarks/<name>.py --json --quick`` (``full``: without ``--quick``); its
    JSON, or the reason it failed."""
    command = ["python", f"benchmarks/{name}.py", "--json", *([] if full else ["--quick"])]
    started = dt.datetime.now(dt.UTC)
    t0 = time.perf_counter()
    entry: dict[str, Any] = {
        "command": " ".join(command),
        "date": started.strftime("%Y-%m-%d %H:%M UTC"),
    }
    try:
        proc = subprocess.run(
            # -P: no script directory on sys.path, so benchmarks/queue.py cannot shadow
            # the stdlib's queue module in the other benchmarks.
            [sys.executable, "-P", *command[1:]],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
    except subprocess.TimeoutExpired:
        entry["error"] = f"timed out after {timeout:g} s"
        return entry
    entry["seconds"] = round(time.perf_counter() - t0, 1)
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        entry["error"] = f"exit {proc.returncode}: {tail[:200]}"
        return entry
    try:
        data = json.loads(lines[-1])
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except (IndexError, ValueError) as exc:
        entry["error"] = f"no JSON object on the last line of stdout ({exc})"
        return entry
    entry["result"] = data
    return entry


def _num(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if value == 0 or 0.01 <= abs(value) < 1e6:
        return f"{value:,.3f}".rstrip("0").rstrip(".") if abs(value) < 100 else f"{value:,.0f}"
    return f"{value:.3g}"


def _cell(result: Mapping[str, Any], key: str | None) -> str:
    if key is None:
        return ""
    if key not in result:
        return f"`{key}` missing"
    return f"`{key}` {_num(result[key])}"


def check_target(result: Mapping[str, Any], row: Row) -> str:
    """``"ratio >= 2 ✓"`` / ``"✗"``, or just the target when it cannot be checked."""
    if row.target is None:
        return ""
    op, _, rhs = row.target.partition(" ")
    key = row.target_key
    text = f"`{key}` {row.target}"
    left = result.get(key)
    right: Any = result.get(rhs) if rhs in result else rhs
    try:
        ok = _OPS[op](float(left), float(right))  # type: ignore[arg-type]
    except (KeyError, TypeError, ValueError):
        return text
    return f"{text} {'✓' if ok else '✗'}"


def table_rows(name: str, entry: Mapping[str, Any]) -> list[list[str]]:
    """The table rows of one benchmark's last run."""
    command = f"`{entry['command']}`"
    date = entry.get("date", "")
    if "error" in entry:
        return [[command, f"**failed**: {entry['error']}", "", "", "", date]]
    result = entry["result"]
    rows = SPECS.get(name)
    if rows is None:
        numbers = ", ".join(
            f"`{k}` {_num(v)}" for k, v in result.items() if isinstance(v, int | float)
        )
        return [[command, numbers, "", "", "", date]]
    return [
        [
            command if i == 0 else "″",
            _cell(result, row.figure),
            _cell(result, row.baseline),
            _cell(result, row.ratio),
            check_target(result, row),
            date,
        ]
        for i, row in enumerate(rows)
    ]


HEADER = ["command", "figure", "baseline", "ratio", "target", "date"]


def _table(results: Mapping[str, Any]) -> list[str]:
    lines = [
        "| " + " | ".join(HEADER) + " |",
        "|" + "|".join("---" for _ in HEADER) + "|",
    ]
    for name in sorted(results):
        for row in table_rows(name, results[name]):
            lines.append("| " + " | ".join(c.replace("|", "\\|") for c in row) + " |")
    return lines


def render(
    results: Mapping[str, Any], full: Mapping[str, Any] | None = None, notes: str = ""
) -> str:
    """BENCHMARKS.md from the stored results: the quick runs' table, then the full runs'
    (``full``), then ``notes`` (hand-written analysis kept in ``benchmarks/NOTES.md``)."""
    lines = [
        "# Benchmarks",
        "",
        "Every performance claim of dtesn-trio, measured: each figure next to a baseline",
        "measured in the same run, the ratio, and the target the issue set. Generated by",
        "`python benchmarks/run_all.py` (every benchmark with `--json --quick`) and",
        "`python benchmarks/run_all.py --full` (with `--json` alone: full length, minutes",
        "each); each row's command says which it is, and each row is dated. Do not edit",
        "by hand (the notes at the end come from `benchmarks/NOTES.md`). First",
        "`pip install -e '.[bench]'` (the peer's FastAPI and uvicorn, reservoirpy, httpx;",
        "`benchmarks/storm.py` also needs Debian's `wrk`): a benchmark missing one fails",
        "with that sentence. Each runs as `python -P ...` from the repository root (`-P`:",
        "the script's directory is not put on `sys.path`, where `benchmarks/queue.py`",
        "would shadow the stdlib's `queue`).",
        "",
        f"Machine: {os.cpu_count()} CPUs, {platform.machine()}, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}. "
        "The machine is shared (other sessions' tests and benchmarks ran beside these):"
        " absolute figures are noisy, ratios measured in one run less so.",
        "",
        "## Quick runs (`--json --quick`)",
        "",
        *_table(results),
    ]
    failed = [n for n in sorted(results) if "error" in results[n]]
    if failed:
        lines += ["", "Failed in the last run: " + ", ".join(f"`{n}`" for n in failed) + "."]
    for name, section in SECTIONS.items():
        if name in results and "error" not in results[name]:
            lines += ["", *section(results[name])]
    lines += ["", "## Full-length runs (`--json`)", ""]
    if full:
        lines += _table(full)
        missing = sorted(set(results) - set(full))
        if missing:
            lines += [
                "",
                "Not run at full length yet: " + ", ".join(f"`{n}`" for n in missing) + ".",
            ]
        for name, section in SECTIONS.items():
            if name in full and "error" not in full[name]:
                lines += ["", *section(full[name])]
    else:
        lines.append("None yet: `python benchmarks/run_all.py --full`.")
    if notes.strip():
        lines += ["", notes.strip()]
    return "\n".join(lines) + "\n"


NOTES = BENCH_DIR / "NOTES.md"


def load_results(path: Path = RESULTS) -> dict[str, Any]:
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    return {}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run every benchmark and write BENCHMARKS.md.")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these benchmarks")
    parser.add_argument("--render-only", action="store_true", help="only rewrite BENCHMARKS.md")
    parser.add_argument("--timeout", type=float, default=None, help="seconds per benchmark")
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the default: every run --quick")
    mode.add_argument("--full", action="store_true", help="full-length runs (no --quick)")
    args = parser.parse_args(argv)
    timeout = args.timeout or (1800.0 if args.full else 300.0)

    available = benchmark_names()
    path = RESULTS_FULL if args.full else RESULTS
    results = {k: v for k, v in load_results(path).items() if k in available}
    if not args.render_only:
        names = args.only or available
        unknown = sorted(set(names) - set(available))
        if unknown:
            parser.error(f"no such benchmark: {', '.join(unknown)} (have: {', '.join(available)})")
        for name in names:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            results[name] = run_one(name, timeout, full=args.full)
            status = results[name].get("error") or f"ok in {results[name].get('seconds')} s"
            print(f"  {name}: {status}", file=sys.stderr, flush=True)
        path.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    quick = {k: v for k, v in load_results(RESULTS).items() if k in available}
    full = {k: v for k, v in load_results(RESULTS_FULL).items() if k in available}
    notes = NOTES.read_text() if NOTES.exists() else ""
    OUTPUT.write_text(render(quick, full, notes))
    if args.json:
        print(json.dumps(results))
    else:
        print(f"wrote {OUTPUT.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
