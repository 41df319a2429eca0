"""benchmarks/run_all.py: the table it writes from results, targets checked, failures kept."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def _run_all() -> ModuleType:
    spec = importlib.util.spec_from_file_location("run_all", ROOT / "benchmarks" / "run_all.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["run_all"] = module
    spec.loader.exec_module(module)
    return module


def test_render_checks_targets_and_records_failures() -> None:
    run_all = _run_all()
    results = {
        "client": {
            "command": "python benchmarks/client.py --json --quick",
            "date": "2026-11-27 06:00 UTC",
            "result": {"soak_client_per_s": 1400.0, "httpx_per_s": 500.0, "ratio": 2.8,
                       "soak_client_cpu_ms_per_req": 0.3, "httpx_cpu_ms_per_req": 1.6},
        },
        "overload": {
            "command": "python benchmarks/overload.py --json --quick",
            "date": "d",
            "result": {"goodput_ratio": 0.95, "naive_goodput_ratio": 0.99, "refusal_p99_ms": 12},
        },
        "queue": {"command": "python benchmarks/queue.py --json --quick", "date": "d",
                  "error": "exit 1: ImportError: nope"},
        "mystery": {"command": "python benchmarks/mystery.py --json --quick", "date": "d",
                    "result": {"things_per_s": 12.5, "label": "x"}},
    }  # fmt: skip
    text = run_all.render(results)
    lines = text.splitlines()
    header = lines.index("| command | figure | baseline | ratio | target | date |")
    assert "`ratio` 2.8" in lines[header + 2]
    assert "`ratio` >= 2 ✓" in lines[header + 2]
    assert "`naive_goodput_ratio` < goodput_ratio ✗" in text  # a key as the right-hand side
    assert "`refusal_p99_ms` <= 50 ✓" in text
    assert "`goodput_per_s` missing" in text
    assert "**failed**: exit 1: ImportError: nope" in text
    assert "`things_per_s` 12.5" in text
    assert "Failed in the last run: `queue`." in text


def test_every_benchmark_named_in_the_issues_has_a_spec() -> None:
    run_all = _run_all()
    assert {"admission", "pool", "queue", "dtesn_quality", "dtesn_batching", "runtime",
            "http", "client", "overload", "scale_out"} <= set(run_all.SPECS)  # fmt: skip
    assert "client" in run_all.benchmark_names()


def test_render_shows_quick_and_full_tables_each_row_saying_which() -> None:
    run_all = _run_all()
    quick = {
        "client": {"command": "python benchmarks/client.py --json --quick", "date": "q",
                   "result": {"soak_client_per_s": 1400.0, "httpx_per_s": 500.0, "ratio": 2.8}},
        "queue": {"command": "python benchmarks/queue.py --json --quick", "date": "q",
                  "result": {"queue_b1_per_s": 1.0}},
    }  # fmt: skip
    full = {
        "client": {"command": "python benchmarks/client.py --json", "date": "2026-12-03 15:00 UTC",
                   "result": {"soak_client_per_s": 1300.0, "httpx_per_s": 700.0, "ratio": 1.86}},
    }  # fmt: skip
    text = run_all.render(quick, full, "## Notes\n\nwhy.")
    quick_at = text.index("## Quick runs")
    full_at = text.index("## Full-length runs")
    assert quick_at < full_at < text.index("## Notes")
    assert "`ratio` >= 2 ✓" in text[quick_at:full_at]
    full_part = text[full_at:]
    assert "`python benchmarks/client.py --json`" in full_part
    assert "`ratio` >= 2 ✗" in full_part
    assert "2026-12-03 15:00 UTC" in full_part
    assert "Not run at full length yet: `queue`." in full_part
    assert "None yet" in run_all.render(quick)
