"""Result deliveries have a pool of their own, and each requester a share of it: a requester that never
gives a verdict on results holds each delivery for an hour, and once it held the node's whole task pool the
node bid on and ran nobody's jobs (reproduced with the real limit: 10,000 deliveries in 20 s, then an
honest job found no node in 120 s, the CPU idle)."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

import compute.service
from jobs import ExecutionState, JobSpec, JobState
from jobs.messages import Announce, Bid, OpenQuery, Reply, Result
from node.dispatch import Dispatcher
from tests.memnet import MemoryHub, memory_node, raw_peer
from tests.protocol.test_pair import wait_terminal

ROGUE_JOBS = 30


class _NeverDecides:
    """Takes every bid, and answers every result without a verdict: the node keeps retrying for an hour."""

    def __init__(self) -> None:
        self.results: set[str] = set()

    def on_node_info(self, origin, info) -> None:
        pass

    async def handle(self, peer, message) -> Reply:
        if isinstance(message, OpenQuery):
            return Reply(states={j: "open" for j in message.job_ids})
        if isinstance(message, Bid):
            return Reply(verdict="accepted")
        if isinstance(message, Result):
            self.results.add(message.execution_id)
            return Reply(ok=False, reason="try again later")
        return Reply(ok=False)

    def take_output(self, peer, message) -> Reply:
        return Reply()


async def test_a_requester_that_never_decides_on_results_starves_neither_bids_nor_others_deliveries(
        tmp_path, autojump_clock, monkeypatch):
    # the limits at a size a test fills: the rogue's runs outnumber both pools, and its share is below them
    monkeypatch.setattr(compute.service, "TASK_LIMIT", 20)
    monkeypatch.setattr(compute.service, "DELIVERY_LIMIT", 6)
    monkeypatch.setattr(compute.service, "DELIVERIES_PER_REQUESTER", 3)
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        n0 = await stack.enter_async_context(memory_node(hub, "n0", tmp_path / "n0", requester=False))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", compute=False))
        fake = _NeverDecides()
        rogue = raw_peer(hub, "rogue", Dispatcher(requester=fake))
        await trio.sleep(2)
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {"cpu": 0.01, "disk": "1MiB"}})
        for i in range(ROGUE_JOBS):
            await rogue.publish(Announce(job_id=f"j-r{i}", spec=spec, requester="rogue"))

        def rogue_ran() -> int:
            return sum(x.requester == "rogue" and x.state is ExecutionState.PROPOSED
                       for x in n0.compute.machine.live.values())

        with trio.move_on_after(60):  # without the pools the runs past the task limit never start
            while rogue_ran() < ROGUE_JOBS:
                await trio.sleep(1)
        assert rogue_ran() >= 20  # the rogue's runs are over, their results all undelivered

        job, _ = await honest.requester.submit(JobSpec.model_validate({"engine": {"name": "noop"}, "cache": False}),
                                               "alice")
        d = await wait_terminal(honest.requester, job.id, timeout=300)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == ["n0"]
        assert len(fake.results) == 3  # the rogue holds its share of deliveries, nothing more


async def test_an_honest_requester_gets_more_results_than_its_share_across_both_restarts(
        tmp_path, autojump_clock, monkeypatch):
    """Results the requester was down for wait in the node's store; the restarted node re-delivers them all,
    its share at a time."""
    monkeypatch.setattr(compute.service, "DELIVERIES_PER_REQUESTER", 2)
    hub, spec = MemoryHub(), JobSpec.model_validate({"engine": {"name": "noop"}, "cache": False})
    async with memory_node(hub, "a", tmp_path / "a", requester=False) as a:
        a.noop.hooks.delay = 1.0
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1.5)
            ids = [(await req.requester.submit(spec, "alice"))[0].id for _ in range(7)]
            await trio.sleep(0.5)
        hub.transports.pop("req")
        await trio.sleep(5)  # the runs end while their requester is down
        assert sum(x.state is ExecutionState.PROPOSED for x in a.compute.machine.live.values()) == 7
    hub.transports.pop("a")
    async with memory_node(hub, "a", tmp_path / "a", requester=False), \
            memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        for job_id in ids:
            d = await wait_terminal(req.requester, job_id, timeout=120)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            # delivered, not run again
            assert [(x.node_id, x.state) for x in d.executions] == [("a", ExecutionState.COMPLETED)]
