"""A notebook's pattern on a real devstack: a thousand jobs run at once from one ``AsyncClient``."""

from __future__ import annotations

import pytest
import trio

from devstack import Devstack
from jobs import JobState
from shoal import AsyncClient
from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow


async def test_a_thousand_jobs_run_at_once_from_one_client_all_complete(tmp_path, monkeypatch):
    """They queued in httpx's connection pool, whose wait counted against each request's timeout: most failed
    with "no answer from Shoal API" (and the client spent 140 s of CPU on the pool's bookkeeping) while the
    node was healthy and ran them."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    states: list[JobState] = []
    async with (Devstack(3, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(3),
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):

        async def one(i: int) -> None:
            spec = {"engine": {"name": "noop"}, "resources": {"cpu": "10m"}, "cache": False, "env": {"I": str(i)}}
            states.append((await client.run(spec)).job.state)

        async with trio.open_nursery() as nursery:
            for i in range(1000):
                nursery.start_soon(one, i)
    assert states == [JobState.COMPLETED] * 1000
