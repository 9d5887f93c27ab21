"""A sweep requester that granted a claim one hour-long index, then nothing: the claim kept all its slots
(the whole 4-CPU node) while that one index ran, and an honest job failed with no node to take it. Now the
claim gives back the slots it has no index for; the honest job runs at once."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from jobs import JobSpec, JobState
from jobs.messages import Claim, Reply, SweepAnnounce
from jobs.spec import Resources
from jobs.sweep import SweepSpec
from node.dispatch import Dispatcher
from tests.memnet import MemoryHub, memory_node, raw_peer


class OneIndex:
    """The rogue's sweeps role: index 0 on the first report, then nothing (or, once ``generous``, everything)."""

    def __init__(self) -> None:
        self.reports = 0
        self.generous = False

    async def handle(self, peer: str, msg: Claim) -> Reply:
        self.reports += 1
        ranges = [(0, 1)] if self.reports == 1 else [(1, 1000)] if self.generous else []
        return Reply(verdict="accepted", ranges=ranges)


async def test_a_claim_granted_one_long_index_does_not_hold_the_node(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        n0 = await stack.enter_async_context(memory_node(hub, "n0", tmp_path / "n0", requester=False,
                                                         total=Resources(cpu=4, memory="8GiB", disk="10GiB")))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", compute=False))
        rogue = raw_peer(hub, "rogue", Dispatcher(sweeps=(fake := OneIndex())))
        await trio.sleep(2)
        spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop", "delay": 3600}, "timeout": "2h",
                                                 "deadlines": {"silence": "1h"}},
                                         "grid": {"x": [str(i) for i in range(1000)]}})
        await rogue.publish(SweepAnnounce(sweep_id="s-rogue", spec=spec, requester="rogue", pending=1000))
        await trio.sleep(5)
        (claim,) = n0.compute.machine.claims.values()
        assert claim.running == {0} and len(claim.slots) == 1  # one run holds one slot

        t0 = hub.now()
        job, _ = await honest.requester.submit(JobSpec.model_validate(
            {"engine": {"name": "noop"}, "resources": {"cpu": 0.5}, "cache": False, "deadlines": {"bid": "50m"}}),
            "alice")
        with trio.move_on_after(600):
            await honest.requester.wait(job.id, 600)
        assert (await honest.requester.get(job.id)).state is JobState.COMPLETED
        assert hub.now() - t0 < 60

        fake.generous = True  # a grant later is no way back to the slots given up
        await trio.sleep(1800)  # a heartbeat report or more
        assert fake.reports > 2 and claim.running == {0} and len(claim.slots) == 1
        assert n0.compute.capacity.statistics().reservations == 1
