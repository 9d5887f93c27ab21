"""Verification on a real devstack: three honest nodes and one that lies about its results."""

from __future__ import annotations

import pytest
import trio

from devstack import Devstack
from jobs import EventKind, ExecutionState, JobState
from shoal import AsyncClient
from tests.integration.rogue import free_base_port, knows, poll

pytestmark = pytest.mark.slow


async def test_honest_results_win_and_the_liar_is_quarantined(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(4, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(4), bad_actors=1,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        liar = stack.nodes[3].peer_id
        # the jobs are offered to the nodes the requester knows: until it has heard the liar's node info,
        # three honest nodes take every job, and twelve noop jobs can all end before then
        await poll(lambda: knows(client, liar), 30, "the requester never heard of the liar")
        rejected_liar = 0
        for n in range(12):
            # the requester chooses among all four bids, at random: with the first three bids winning, a
            # liar whose bids are slower (a stream to dial each time) could sit out most of the jobs
            spec = {"engine": {"name": "noop"}, "env": {"RUN": str(n)},
                    "deal": {"concurrency": 3, "confidence": 2, "min_bids": 4}, "deadlines": {"min_bids": 1}}
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


async def test_a_verified_sweep_takes_no_index_on_the_liars_word(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(4, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(4), bad_actors=1,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        liar = stack.nodes[3].peer_id
        await poll(lambda: knows(client, liar), 30, "the requester never heard of the liar")
        spec = {"job": {"engine": {"name": "noop"}}, "grid": {"i": [str(i) for i in range(24)]}, "confidence": 2}
        d = await client.run_sweep(spec, timeout=120)
        assert d.sweep.counts == {JobState.COMPLETED: 24}, d.sweep.reason
        records = (await client.sweep_indexes(d.sweep.id)).indexes
        assert all(r.result.stdout == "" and r.node_id != liar for r in records)  # the honest noop result
        assert all(r.reason.startswith("completed, verified by 2 of") for r in records)
        with trio.fail_after(30):  # the stream of an ended sweep ends
            events = [e async for e in client.events(d.sweep.id)]
        outvoted = [e for e in events if e.kind is EventKind.RESULTS_REJECTED]
        assert outvoted and {e.node_id for e in outvoted} == {liar}
        reputation = (await client.nodes()).reputation
        assert reputation[liar].rejected == len(outvoted)
        assert not any(r.rejected for peer, r in reputation.items() if peer != liar)
        # each index's two agreeing results count for their nodes, as a job's verified ones do
        assert sum(r.accepted for peer, r in reputation.items()) == 2 * 24 and reputation[liar].accepted == 0
