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


def silent_locks(rogue: RoguePeer, what: str) -> tuple[list[Announce | SweepAnnounce], type, str]:
    """What a requester that never answers announces to hold a 1-CPU node: whole-node jobs (nodes bid), or a
    sweep with an hour's silence (nodes claim); the request nodes send it, and the attribute naming each."""
    if what == "bids":
        whole = JobSpec.model_validate({"engine": {"name": "noop"}, "cache": False,
                                        "resources": {"cpu": 1, "memory": "256MiB"}})
        return [Announce(job_id=f"j-lock-{i}", requester=rogue.peer_id, requester_addrs=rogue.addrs(), spec=whole)
                for i in range(4)], Bid, "execution_id"
    spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "cache": False,
                                             "resources": {"cpu": 0.5, "memory": "256MiB"},
                                             "deadlines": {"silence": 3600}},
                                     "grid": {"i": [str(i) for i in range(64)]}})
    return [SweepAnnounce(sweep_id="s-lock", spec=spec, requester=rogue.peer_id, requester_addrs=rogue.addrs(),
                          pending=64)], Claim, "claim_id"


@pytest.mark.parametrize("what", ["bids", "claims"])
async def test_a_requester_that_never_answers_holds_a_node_for_one_short_window(home, what):
    """Red team: a peer announced whole-node jobs, re-announcing them, and never answered the bids. Each bid
    held the node's room for 60 s, the next of its jobs was bid on after it, and an honest job was still
    waiting after 200 s; a sweep announced with an hour's silence held the node's slots for the hour. Now
    the node gives up on a bid, or a claim never answered, after BID_ANSWER_WINDOW (10 s), takes none of
    the silent requester's work for a cooldown, and the honest job runs."""
    small = ["--limit-total-cpu", "1", "--limit-total-memory", "1GiB"]
    async with (devstack(home / "stack", [["--no-compute"], small]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([n.addrs[0] for n in stack.nodes]) as rogue):  # its replies carry no verdict
        requester, honest = stack.nodes[0], stack.nodes[1]
        await rogue.wait_mesh([requester.peer_id, honest.peer_id])
        locks, request, naming = silent_locks(rogue, what)

        async def keep_announcing() -> None:
            while True:
                for ann in locks:
                    await rogue.publish(ann)
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(keep_announcing)
            await rogue.wait_request(lambda p, m: isinstance(m, request) and p == honest.peer_id, what=what)
            job_id = (await client.submit({"engine": {"name": "noop"}, "cache": False,
                                           "resources": {"cpu": 0.5, "memory": "256MiB"}})).job.id
            done = await client.wait(job_id, timeout=45)  # the old node held its room for 60 s a bid, or the hour
            nursery.cancel_scope.cancel()
        assert done.job.state is JobState.COMPLETED, done.job.reason
        assert [x.node_id for x in done.executions] == [honest.peer_id]
        windows = {getattr(m, naming) for p, m in rogue.requests if isinstance(m, request)}
        assert len(windows) == 1  # what the rogue got: one window, then none of its work for the cooldown
