"""A requester that answers every bid "pending" and never decides, re-announcing whole-node jobs: it held a
1-CPU node an hour, the node running nothing, while an honest job waited and failed. What it gets now is one
bid's wait; the honest job runs."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from compute.machine import PENDING_BID_GRACE
from jobs import JobSpec, JobState
from jobs.messages import Announce, Bid, OpenQuery, Reply
from jobs.spec import Resources
from node.dispatch import Dispatcher
from tests.memnet import MemoryHub, memory_node, raw_peer

WHOLE = {"cpu": 1, "memory": "1GiB"}
MIN_BIDS = 110  # the rogue's wait for bids: each bid it gets holds the node this long, and the grace


class PendingForever:
    """The rogue's requester role: every bid "pending", every job still open. It never decides."""

    def __init__(self) -> None:
        self.bids: list[Bid] = []

    def on_node_info(self, origin: str, info: object) -> None:
        pass

    async def handle(self, peer: str, message: object) -> Reply:
        if isinstance(message, OpenQuery):
            return Reply(states={job_id: "open" for job_id in message.job_ids})
        if isinstance(message, Bid):
            self.bids.append(message)
            return Reply(verdict="pending")
        return Reply(ok=False)


async def test_a_requester_holding_every_bid_pending_does_not_keep_an_honest_job_off_the_node(
        tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        n0 = await stack.enter_async_context(memory_node(hub, "n0", tmp_path / "n0", requester=False,
                                                         total=Resources(cpu=1, memory="2GiB", disk="10GiB")))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", compute=False))
        rogue = raw_peer(hub, "rogue", Dispatcher(requester=(fake := PendingForever())))
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "resources": WHOLE,
                                       "deadlines": {"min_bids": f"{MIN_BIDS}s"}})

        async def announce_forever() -> None:
            for attempt in range(1, 1000):  # 10 whole-node jobs, each with a new attempt every 30 s
                for i in range(10):
                    await rogue.publish(Announce(job_id=f"j-rogue-{i}", spec=spec, requester="rogue",
                                                 attempt=attempt))
                await trio.sleep(30)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(announce_forever)
            await trio.sleep(3)
            start = hub.now()
            job, _ = await honest.requester.submit(JobSpec.model_validate(
                {"engine": {"name": "noop"}, "resources": WHOLE, "cache": False, "deadlines": {"bid": "10m"}}),
                "alice")
            with trio.move_on_after(700):
                await honest.requester.wait(job.id, 700)
            d = await honest.requester.describe(job.id)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert [x.node_id for x in d.executions if x.state == "completed"] == ["n0"]
            assert hub.now() - start <= MIN_BIDS + PENDING_BID_GRACE + 5  # one rogue bid's wait at most
            assert len(fake.bids) == 1  # its one bid held the node; then no other, its requester silent
            assert n0.compute.capacity.free.cpu == 1  # and nothing holds it now
            nursery.cancel_scope.cancel()


class RejectsEveryBid:
    """The rogue's requester role: every bid rejected at once, so it is never silent."""

    def __init__(self) -> None:
        self.bids = 0

    def on_node_info(self, origin: str, info: object) -> None:
        pass

    async def handle(self, peer: str, message: object) -> Reply:
        if isinstance(message, Bid):
            self.bids += 1
            return Reply(verdict="rejected", reason="no")
        return Reply(ok=False)


async def test_a_requester_offering_megabyte_jobs_and_rejecting_every_bid_leaves_no_spec_in_the_store(
        tmp_path, autojump_clock):
    """Each bid's execution was kept with its whole spec until the node's --ttl (30 days): 200 offers of 900 KB
    of inline code, their bids rejected, left 180 MB in the compute node's store."""
    import sqlite3
    import uuid

    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        await stack.enter_async_context(memory_node(hub, "victim", tmp_path / "v", requester=False))
        rogue = raw_peer(hub, "rogue", Dispatcher(requester=(fake := RejectsEveryBid())))
        spec = JobSpec.model_validate({"engine": {"name": "python", "code": "#" + "x" * 900_000}})
        for _ in range(50):
            await rogue.request("victim", Announce(job_id=f"j-{uuid.uuid4().hex}", spec=spec, requester="rogue",
                                                   candidates=["victim"]), timeout=5)
            await trio.sleep(0.05)
        await trio.sleep(2)
        assert fake.bids == 50  # it bid on each: the requester answered, so nothing marked it silent
        with sqlite3.connect(tmp_path / "v" / "shoal.db") as db:
            rows, size = db.execute("SELECT count(*), sum(length(body)) FROM executions "
                                    "WHERE side = 'compute' AND state = 'rejected'").fetchone()
        assert rows == 50 and size < 50 * 10_000  # each a row of its own, without the 900 KB
