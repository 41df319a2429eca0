"""``server.reuse_port``: several serve processes on one port, the kernel balancing."""

from __future__ import annotations

import httpx
import pytest
import trio

from tests.scaleout.cluster import start_servers, stop_servers
from tests.servers import free_port

pytestmark = pytest.mark.slow

SETS = ["model.reservoir_size=64", "model.membrane_depth=2", "shutdown_grace=1"]


async def test_two_instances_share_one_port_with_reuse_port() -> None:
    port = free_port()
    servers = start_servers(2, [*SETS, "server.reuse_port=true"], port=port)
    owners = set()
    try:
        assert {s.url for s in servers} == {f"http://127.0.0.1:{port}"}
        with trio.fail_after(30):
            for _ in range(40):  # a fresh connection each time: the kernel picks
                async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
                    owners.add((await client.get("/v1/stats")).json()["jobs"]["owner"])
    finally:
        stop_servers(servers, grace=10.0)
    assert len(owners) == 2
    assert all(s.proc.returncode == 0 for s in servers)  # both drained and exited cleanly


def test_without_reuse_port_the_second_instance_cannot_bind() -> None:
    port = free_port()
    first = start_servers(1, SETS, port=port)
    try:
        with pytest.raises(RuntimeError, match="exited"):
            start_servers(1, SETS, port=port)
    finally:
        stop_servers(first, grace=10.0)
