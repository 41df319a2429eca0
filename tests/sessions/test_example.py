"""``examples/narma10_session.py``: streamed over HTTP, the NRMSE of one long run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def nrmse_of(script: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, f"examples/{script}", "--steps", "1200", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found = re.search(r"NRMSE = (\d+\.\d+)", out.stdout)
    assert found is not None, out.stdout
    return found.group(1)


def test_a_session_over_http_scores_what_one_long_run_scores() -> None:
    assert nrmse_of("narma10_session.py", "--chunk", "77") == nrmse_of("narma10.py")
