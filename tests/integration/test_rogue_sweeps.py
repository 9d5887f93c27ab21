"""A rogue peer on the real network tries to win a ``success=any`` sweep with results for indexes
nobody granted it; the requester refuses them, holds them against it, and the honest nodes win."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from devstack import Devstack
from jobs import JobState
from jobs.messages import Claim, IndexResult, SweepAnnounce
from jobs.model import RunResult
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, free_base_port, metrics

pytestmark = pytest.mark.slow

FORGED = RunResult(exit_code=0, stdout="forged: found it\n")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


def two_nodes(home) -> Devstack:
    """Two honest nodes, each a requester and a noop compute node."""
    return Devstack(2, noop=True, base_dir=home / "stack", base_port=free_base_port(2), write_state=False)


@asynccontextmanager
async def rogue_beside(home, spec: dict) -> AsyncIterator[tuple[Devstack, AsyncClient, RoguePeer, str, SweepAnnounce]]:
    """Two honest nodes, a client of node 0, and a rogue peer that has seen the announcement of the sweep
    ``spec`` the client submitted: (stack, client, rogue, sweep id, announcement)."""
    async with (two_nodes(home) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        await rogue.wait_mesh([stack.nodes[0].peer_id])
        sweep_id = (await client.submit_sweep(spec)).sweep.id
        _, ann = await rogue.wait_gossip(lambda o, m: isinstance(m, SweepAnnounce) and m.sweep_id == sweep_id)
        assert isinstance(ann, SweepAnnounce)
        yield stack, client, rogue, sweep_id, ann


def signed_claim(rogue: RoguePeer, sweep_id: str, claim_id: str, results: list[IndexResult], want: int,
                 released: list[int] = ()) -> Claim:
    msg = Claim(sweep_id=sweep_id, claim_id=claim_id, want=want, results=results, released=list(released))
    return msg.model_copy(update={"signature": rogue.sign(msg.statement())})


async def test_a_rogue_cannot_win_a_sweep_with_results_for_indexes_it_was_not_granted(home):
    spec = {"job": {"engine": {"name": "noop", "delay": 6.0}, "deadlines": {"silence": 3.0}},
            "grid": {"i": [str(i) for i in range(500)]}, "success": "any"}  # more than the honest slots
    async with rogue_beside(home, spec) as (stack, client, rogue, sweep_id, ann):
        requester = stack.nodes[0].peer_id
        honest = {n.peer_id for n in stack.nodes}

        # a fresh claim whose very first message says it found the answer
        claim = signed_claim(rogue, sweep_id, f"c-{uuid.uuid4().hex}", [IndexResult(index=19, result=FORGED)], 4)
        reply = await rogue.request(requester, claim, addrs=ann.requester_addrs)
        assert reply.ranges == [] and "refused 1 results" in reply.reason and reply.reason.endswith(": 19")
        # a claim of its own, then a "hit" for an index outside its grant
        claim_id = f"c-{uuid.uuid4().hex}"
        reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, [], 1),
                                    addrs=ann.requester_addrs)
        assert reply.verdict == "accepted" and len(reply.ranges) == 1
        granted = reply.ranges[0][0]
        outside = 499 if granted != 499 else 498
        reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id,
                                                            [IndexResult(index=outside, result=FORGED)], 0),
                                    addrs=ann.requester_addrs)
        assert reply.ranges == [] and reply.reason.endswith(f": {outside}")
        assert (await client.describe_sweep(sweep_id)).sweep.state is not JobState.COMPLETED  # not won by it

        # the rogue falls silent: its granted index goes back; the honest nodes finish the sweep
        d = await client.wait_sweep(sweep_id, timeout=90)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.winner is not None, d.sweep.reason
        winner = await client.sweep_index(sweep_id, d.sweep.winner)
        assert winner.node_id in honest and "forged" not in (winner.result.stdout if winner.result else "")
        records = (await client.sweep_indexes(sweep_id, state="completed")).indexes
        assert records and all(r.node_id in honest for r in records)

        reputation = (await client.nodes()).reputation
        assert reputation[rogue.peer_id].rejected == 2
        assert not any(peer in reputation for peer in honest)
        m = await metrics(stack.nodes[0].api)
        assert m['shoal_sweeps_total{event="refused_results"}'] == 2
        assert m['shoal_sweeps_total{event="penalties"}'] == 2


async def test_a_rogues_error_fails_no_index_and_counts_against_it(home):
    """Two honest nodes' agreeing results show its error wrong (one node's result alone would be its word
    against the rogue's: tests/protocol/test_framing.py)."""
    spec = {"job": {"engine": {"name": "noop", "delay": 0.5}}, "confidence": 2,
            "grid": {"i": [str(i) for i in range(300)]}}  # more than the honest slots
    async with rogue_beside(home, spec) as (stack, client, rogue, sweep_id, ann):
        requester = stack.nodes[0].peer_id
        honest = {n.peer_id for n in stack.nodes}
        claim_id = f"c-{uuid.uuid4().hex}"
        reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, [], 1),
                                    addrs=ann.requester_addrs)
        (index, end), = reply.ranges
        assert end == index + 1
        error = IndexResult(index=index, error="the template is broken", retryable=False)
        reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, [error], 0),
                                    addrs=ann.requester_addrs)
        assert reply.verdict == "accepted" and reply.reason == ""  # its own index: its word is heard...

        d = await client.wait_sweep(sweep_id, timeout=120)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 300}, d.sweep.reason
        record = await client.sweep_index(sweep_id, index)  # ...but another node ran the index
        # the rogue's grant, then one for each honest node
        assert record.node_id in honest and record.attempts == 3 and record.result.exit_code == 0
        reputation = (await client.nodes()).reputation
        assert reputation[rogue.peer_id].rejected == 1  # its error was shown wrong
        assert all(reputation[peer].rejected == 0 for peer in honest if peer in reputation)  # agreeing earns credit
        m = await metrics(stack.nodes[0].api)
        assert m['shoal_sweeps_total{event="errors_contradicted"}'] == 1
        assert m['shoal_sweeps_total{event="refused_results"}'] == 0


async def test_a_rogue_giving_indexes_back_and_claiming_them_again_fails_none_of_them(home):
    """A rogue gave back and claimed the same indexes, again and again, then reported "retry elsewhere" for each:
    80 of 200 indexes of a sweep asking two nodes to agree failed, none having run, and it lost nothing."""
    spec = {"job": {"engine": {"name": "noop", "delay": 0.2}}, "grid": {"i": [str(i) for i in range(60)]},
            "confidence": 2}
    async with rogue_beside(home, spec) as (stack, client, rogue, sweep_id, ann):
        requester = stack.nodes[0].peer_id
        honest = {n.peer_id for n in stack.nodes}
        claim_id = f"c-{uuid.uuid4().hex}"
        reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, [], 4),
                                    addrs=ann.requester_addrs)
        held = [i for a, b in reply.ranges for i in range(a, b)]
        assert held
        for _ in range(6):
            reply = await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, [], len(held), held),
                                        addrs=ann.requester_addrs)
            held = [i for a, b in reply.ranges for i in range(a, b)]
        busy = [IndexResult(index=i, error="node busy", retryable=True) for i in held]
        await rogue.request(requester, signed_claim(rogue, sweep_id, claim_id, busy, 0), addrs=ann.requester_addrs)

        d = await client.wait_sweep(sweep_id, timeout=120)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 60}, d.sweep.reason
        records = (await client.sweep_indexes(sweep_id)).indexes
        assert all(r.node_id in honest for r in records)
