"""The examples run as a user runs them: ``python examples/x.py`` from the repository."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize(
    ("script", "expected"),
    [("embedded.py", "completed: 50"), ("narma10.py", "NRMSE = ")],
)
def test_example_runs(script: str, expected: str) -> None:
    out = subprocess.run(
        [sys.executable, f"examples/{script}"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert expected in out.stdout, out.stdout
