"""What a benchmark needs beyond the package's own dependencies, checked before it starts.

The benchmarks' extra packages (the peer's FastAPI and uvicorn, reservoirpy, httpx) are
the ``bench`` extra: ``pip install -e '.[bench]'``.  A script calls ``require(...)`` with
the modules it imports (or starts a server that imports) and ``require_program(...)`` with
the programs it runs (``wrk``: Debian's package, ``apt-get install wrk``); a missing one
ends the script with one sentence saying what to install (exit status 2), not a traceback
from deep inside a subprocess.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from typing import NoReturn

BENCH_EXTRA = ("fastapi", "uvicorn", "reservoirpy", "httpx")
INSTALL = "pip install -e '.[bench]'"


def missing_modules(*modules: str) -> list[str]:
    """The modules among ``modules`` that cannot be imported here."""
    return [m for m in modules if importlib.util.find_spec(m) is None]


def require(*modules: str) -> None:
    """Exit (status 2) with the install sentence when any of ``modules`` is missing."""
    missing = missing_modules(*modules)
    if missing:
        _fail(
            f"this benchmark needs the bench extra: run `{INSTALL}` first"
            f" (missing: {', '.join(missing)})"
        )


def require_program(name: str, install: str) -> str:
    """The path of program ``name``; exit (status 2) saying ``install`` when it is absent."""
    path = shutil.which(name)
    if path is None:
        _fail(f"this benchmark needs the program `{name}`: run `{install}` first")
    return path


def _fail(sentence: str) -> NoReturn:
    print(sentence, file=sys.stderr)
    raise SystemExit(2)
