"""Verification on a real devstack: three honest nodes and one that lies about its results."""

from __future__ import annotations

import pytest

from devstack import Devstack
from jobs import ExecutionState, JobState
from shoal import AsyncClient
from tests.integration.rogue import knows, poll

pytestmark = pytest.mark.slow


async def test_honest_results_win_and_the_liar_is_quarantined(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(4, noop=True, base_dir=tmp_path / "stack", base_port=18860, bad_actors=1,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        liar = stack.nodes[3].peer_id
        # the jobs are offered to the nodes the requester knows: until it has heard the liar's node info,
        # three honest nodes take every job, and twelve noop jobs can all end before then
        await poll(lambda: knows(client, liar), 30, "the requester never heard of the liar")
        rejected_liar = 0
        for n in range(12):
            spec = {"engine": {"name": "noop"}, "env": {"RUN": str(n)},
                    "deal": {"concurrency": 3, "confidence": 2}}
            d = await client.run(spec, timeout=60)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert "verified by" in d.job.reason
            assert d.job.result.stdout == ""  # the honest (empty) noop result, never the forged one
            for x in d.executions:
                if x.node_id == liar and x.state is ExecutionState.REJECTED and "differ" in x.reason:
                    rejected_liar += 1
                if x.node_id != liar:
                    assert x.state is not ExecutionState.REJECTED or "differ" not in x.reason
        nodes = await client.nodes()
        assert rejected_liar >= 3
        assert nodes.reputation[liar].quarantined
        assert not any(r.quarantined for peer, r in nodes.reputation.items() if peer != liar)
        d = await client.run({"engine": {"name": "noop"}, "env": {"RUN": "after"},
                              "deal": {"concurrency": 3, "confidence": 2}}, timeout=60)
        assert liar not in {x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED}
        # the same job again: served from the verified-result cache, nothing runs
        again = await client.run({"engine": {"name": "noop"}, "env": {"RUN": "after"},
                                  "deal": {"concurrency": 3, "confidence": 2}}, timeout=60)
        assert again.job.cached_from == d.job.id and again.executions == []
