"""docs/DEPLOY.md's example configuration is a file ``dtesn-trio serve`` accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from dtesn_trio.server.cli import load_serve_config
from dtesn_trio.settings import SettingsError

DOC = Path(__file__).resolve().parents[2] / "docs" / "DEPLOY.md"


def example_toml() -> str:
    blocks = re.findall(r"```toml\n(.*?)```", DOC.read_text(), flags=re.DOTALL)
    assert len(blocks) == 1, "DEPLOY.md should hold exactly one TOML example"
    return str(blocks[0])


def test_the_example_config_loads_as_a_scaled_out_deployment(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(example_toml())
    runtime, server = load_serve_config(config_file=str(path), environ={})
    assert (server.host, server.port) == ("0.0.0.0", 8000)
    assert runtime.redis.url == "redis://redis.internal:6379/0"
    assert runtime.shared_limit.enabled
    assert [r.per_second for r in runtime.shared_limit.parsed_rates()] == [500.0, 20000 / 60]
    assert runtime.shared_limit.instances == 4
    assert runtime.cache.backend == "redis"
    assert runtime.jobs.backend == "postgres"
    assert runtime.postgres.dsn == "postgresql://dtesn:secret@pg.internal:5432/dtesn"
    assert runtime.postgres.pool.max_connections == 16
    assert runtime.processor.worker_threads == 2


def test_per_instance_overrides_apply_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(example_toml())
    runtime, server = load_serve_config(
        config_file=str(path),
        sets=["jobs.workers=1"],
        flags={"server.port": 8002},
        environ={"DTESN_SHARED_LIMIT__INSTANCES": "8"},
    )
    assert (server.port, runtime.jobs.workers, runtime.shared_limit.instances) == (8002, 1, 8)


def test_a_typo_in_the_example_is_refused_by_name(tmp_path: Path) -> None:
    path = tmp_path / "deploy.toml"
    path.write_text(example_toml().replace("lease_seconds", "lease_secs"))
    with pytest.raises(SettingsError, match=r"jobs\.lease_secs"):
        load_serve_config(config_file=str(path), environ={})
