"""A rogue re-announces a real job's id as its own, with a huge attempt number, to lock it out.

The rogue hears the real requester's gossiped re-announcement of a job that waits for room on
the honest node, then gossips an announcement of the same job id as itself (requester = the
rogue) with attempt 10^9 and resources that fit now, until the honest node bids on it. Compute
nodes key announcements by (requester, job id): the real job still runs when room frees.
"""

from __future__ import annotations

import pytest
import trio

from jobs import ExecutionState, JobSpec, JobState
from jobs.messages import Announce, Bid, Claim, Message, Reply, SweepAnnounce
from jobs.sweep import SweepSpec
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, devstack, poll

pytestmark = pytest.mark.slow


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def running_on(client: AsyncClient, job_id: str) -> str | None:
    d = await client.describe(job_id)
    return next((x.node_id for x in d.executions if x.state is ExecutionState.ACCEPTED), None)


async def test_a_job_id_reannounced_by_another_peer_does_not_lock_out_the_real_job(home):
    small = ["--limit-total-cpu", "1", "--limit-total-memory", "1GiB"]
    async with (devstack(home / "stack", [["--no-compute"], small]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([n.addrs[0] for n in stack.nodes]) as rogue):
        requester, honest = stack.nodes[0], stack.nodes[1]

        async def refuse_bids(peer: str, message: Message) -> Reply | None:
            return Reply(verdict="rejected", reason="no") if isinstance(message, Bid) else None

        rogue.script = refuse_bids
        await rogue.wait_mesh([requester.peer_id, honest.peer_id])
        # the honest node is busy: the real job waits in its backlog and is re-announced on gossip
        filler = (await client.submit({"engine": {"name": "noop", "delay": 600}, "cache": False,
                                       "resources": {"cpu": 0.9, "memory": "256MiB"}})).job.id
        assert await poll(lambda: running_on(client, filler), 30, "the filler never ran") == honest.peer_id
        job_id = (await client.submit({"engine": {"name": "noop"}, "cache": False,
                                       "resources": {"cpu": 0.5, "memory": "256MiB"}})).job.id
        await rogue.wait_gossip(lambda o, m: isinstance(m, Announce) and m.job_id == job_id
                                and o == requester.peer_id, what="re-announcement of the real job")

        fake = Announce(job_id=job_id, requester=rogue.peer_id, requester_addrs=rogue.addrs(), attempt=10**9,
                        spec=JobSpec.model_validate({"engine": {"name": "noop"},
                                                     "resources": {"cpu": 0.05, "memory": "16MiB"}}))

        async def gossip_until_bid() -> None:
            while True:
                await rogue.publish(fake)
                await trio.sleep(0.3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(gossip_until_bid)
            await rogue.wait_request(lambda p, m: isinstance(m, Bid) and m.job_id == job_id and p == honest.peer_id,
                                     what="the honest node's bid on the fake announcement")
            nursery.cancel_scope.cancel()
        assert (await client.describe(job_id)).job.state is JobState.PENDING

        await client.cancel(filler)  # room frees on the honest node
        d = await client.wait(job_id, timeout=60)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == [honest.peer_id]


async def test_a_requester_that_never_answers_its_bids_holds_a_node_for_one_short_window(home):
    """Red team: a peer announced whole-node jobs, re-announcing them, and never answered the bids. Each bid
    held the node's room for 60 s, the next of its jobs was bid on after it, and an honest job was still
    waiting after 200 s. Now the node gives up on a bid after BID_ANSWER_WINDOW (10 s), bids on none of the
    silent requester's jobs for a cooldown, and the honest job runs."""
    small = ["--limit-total-cpu", "1", "--limit-total-memory", "1GiB"]
    async with (devstack(home / "stack", [["--no-compute"], small]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([n.addrs[0] for n in stack.nodes]) as rogue):  # bids get no verdict from it
        requester, honest = stack.nodes[0], stack.nodes[1]
        await rogue.wait_mesh([requester.peer_id, honest.peer_id])
        whole = JobSpec.model_validate({"engine": {"name": "noop"}, "cache": False,
                                        "resources": {"cpu": 1, "memory": "256MiB"}})
        locks = [Announce(job_id=f"j-lock-{i}", requester=rogue.peer_id, requester_addrs=rogue.addrs(), spec=whole)
                 for i in range(4)]

        async def keep_announcing() -> None:
            while True:
                for ann in locks:
                    await rogue.publish(ann)
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_announcing)
            await rogue.wait_request(lambda p, m: isinstance(m, Bid) and p == honest.peer_id, what="a first bid")
            job_id = (await client.submit({"engine": {"name": "noop"}, "cache": False,
                                           "resources": {"cpu": 0.5, "memory": "256MiB"}})).job.id
            done = await client.wait(job_id, timeout=45)  # the old node held its room 60 s per unanswered bid
            nursery.cancel_scope.cancel()
        assert done.job.state is JobState.COMPLETED, done.job.reason
        assert [x.node_id for x in done.executions] == [honest.peer_id]
        windows = {m.execution_id for p, m in rogue.requests if isinstance(m, Bid)}
        assert len(windows) == 1  # what the rogue got: one bid's window, then its jobs wait out the cooldown


async def test_a_sweep_whose_requester_never_answers_claims_holds_a_node_for_one_short_window(home):
    """A sweep's announcer chooses its silence: one of an hour, never answering the node's claim, held the
    node's slots for that hour. A new claim the requester never answered now gives up after
    BID_ANSWER_WINDOW, and the honest job runs."""
    small = ["--limit-total-cpu", "1", "--limit-total-memory", "1GiB"]
    async with (devstack(home / "stack", [["--no-compute"], small]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([n.addrs[0] for n in stack.nodes]) as rogue):  # claims get no verdict from it
        requester, honest = stack.nodes[0], stack.nodes[1]
        await rogue.wait_mesh([requester.peer_id, honest.peer_id])
        spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "cache": False,
                                                 "resources": {"cpu": 0.5, "memory": "256MiB"},
                                                 "deadlines": {"silence": 3600}},
                                         "grid": {"i": [str(i) for i in range(64)]}})
        lock = SweepAnnounce(sweep_id="s-lock", spec=spec, requester=rogue.peer_id, requester_addrs=rogue.addrs(),
                             pending=64)

        async def keep_announcing() -> None:
            while True:
                await rogue.publish(lock)
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_announcing)
            await rogue.wait_request(lambda p, m: isinstance(m, Claim) and p == honest.peer_id, what="a claim")
            job_id = (await client.submit({"engine": {"name": "noop"}, "cache": False,
                                           "resources": {"cpu": 0.5, "memory": "256MiB"}})).job.id
            done = await client.wait(job_id, timeout=45)  # the old node held both slots for the hour
            nursery.cancel_scope.cancel()
        assert done.job.state is JobState.COMPLETED, done.job.reason
        claims = {m.claim_id for p, m in rogue.requests if isinstance(m, Claim)}
        assert len(claims) == 1  # what the rogue got: one claim's window, then none for the cooldown
