"""Every benchmark script starts (``--help``) from a plain ``python benchmarks/x.py``.

``benchmarks/queue.py`` shares its name with the stdlib module, so a script that leaves
its own folder on ``sys.path`` breaks as soon as trio imports ``queue``; this catches it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = sorted(p.name for p in (ROOT / "benchmarks").glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_starts(script: str) -> None:
    out = subprocess.run(
        [sys.executable, f"benchmarks/{script}", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "--quick" in out.stdout or script == "run_all.py", out.stdout
