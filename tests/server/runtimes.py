"""The runtime the server tests run against."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from tests.server.standin import open_standin


@asynccontextmanager
async def open_test_runtime(tmp_path: Path, **kwargs: Any) -> AsyncIterator[Any]:
    async with open_standin(tmp_path, **kwargs) as rt:
        yield rt
