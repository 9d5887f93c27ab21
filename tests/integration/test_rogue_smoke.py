"""The rogue peer itself, against a real node: it hears gossip, its messages arrive, its signatures check."""

from __future__ import annotations

import pytest

from jobs import ExecutionState, JobState
from jobs.messages import Announce, Message, Reply
from jobs.model import RunResult
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, devstack, knows, poll

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def test_rogue_hears_a_gossiped_announcement_and_its_bid_and_result_reach_the_requester(home):
    async with (devstack(home / "stack", [["--no-compute"]]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        requester = stack.nodes[0].peer_id
        await rogue.wait_mesh([requester])
        job_id = (await client.submit({"engine": {"name": "noop"}, "env": {"SMOKE": "gossip"}})).job.id
        # no compute node is known: the requester gossips the job (and re-announces it) to everyone
        origin, ann = await rogue.wait_gossip(lambda o, m: isinstance(m, Announce) and m.job_id == job_id)
        assert origin == requester and isinstance(ann, Announce)
        execution_id, reply = await rogue.bid(ann)
        assert reply.verdict == "accepted"
        d = await client.describe(job_id)
        assert [(x.id, x.node_id, x.state) for x in d.executions] == [
            (execution_id, rogue.peer_id, ExecutionState.ACCEPTED)]
        # the rogue's key signs like a node's: its result is taken
        reply = await rogue.request(requester, rogue.result(job_id, execution_id, result=RunResult()))
        assert reply.verdict == "accepted"
        d = await client.wait(job_id, timeout=30)
        assert d.job.state is JobState.COMPLETED, d.job.reason


async def test_an_advertised_rogue_is_offered_jobs_and_answers_with_a_script(home):
    async with (devstack(home / "stack", [["--no-compute"]]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        requester = stack.nodes[0].peer_id
        bids: list[Reply] = []

        async def script(peer: str, message: Message) -> Reply | None:
            if isinstance(message, Announce):  # a direct offer: say a bid follows, then bid
                async def bid() -> None:
                    bids.append((await rogue.bid(message))[1])
                rogue.spawn(bid)
                return Reply(verdict="pending")
            return None

        rogue.script = script
        rogue.advertise(cpu=2, memory=4 << 30)
        await poll(lambda: knows(client, rogue.peer_id), 30, "the requester never heard the rogue's node info")
        job_id = (await client.submit({"engine": {"name": "noop"}, "env": {"SMOKE": "offer"}})).job.id
        peer, offer = await rogue.wait_request(lambda p, m: isinstance(m, Announce) and m.job_id == job_id)
        assert peer == requester and isinstance(offer, Announce) and rogue.peer_id in offer.candidates
        await poll(lambda: bids, 10, "the rogue's bid got no reply")
        assert bids[0].verdict == "accepted"
        # the requester asks the rogue whether it still runs the job; the default script says yes
        await rogue.wait_request(lambda p, m: m.kind == "status", timeout=10)
        d = await client.describe(job_id)
        assert [(x.node_id, x.state) for x in d.executions] == [(rogue.peer_id, ExecutionState.ACCEPTED)]

