"""One lying peer (with a client's help, or with its own few identities) against honest nodes, over the
in-memory network with the real roles: it gets no honest node quarantined, and fails no job of anyone's."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import trio

from executors import ExecutorError
from executors.noop import NoopHooks
from jobs import ExecutionState, JobState, Resources
from jobs.messages import Announce, Bid, NodeInfo, Reply, StatusQuery, decode, encode
from tests.memnet import MemoryHub, MemoryTransport, memory_node
from tests.protocol.test_pair import spec, wait_terminal
from tests.protocol.test_sweeps import finished, sweep

TRUE_ERROR = "the job's outputs hold more than 10,000 files and folders"  # honest, and not retryable


async def test_a_liar_completing_jobs_an_honest_node_could_not_run_gets_it_counted_against_for_nothing(
        tmp_path, autojump_clock):
    """The liar's exit 0 was one node's word, yet it showed the honest node's true error "wrong": three jobs of
    its client's quarantined the honest node, and every later job went to the liar alone."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        await stack.enter_async_context(memory_node(
            hub, "honest", tmp_path / "h", requester=False, per_job=Resources(cpu=0.5, memory="1GiB"),
            hooks=NoopHooks(error=TRUE_ERROR, error_retryable=False)))
        await stack.enter_async_context(memory_node(hub, "liar", tmp_path / "l", requester=False,
                                                    total=Resources(cpu=1, memory="1GiB"),
                                                    hooks=NoopHooks(stdout="FORGED\n")))
        await trio.sleep(1.5)
        for i in range(3):
            # the liar is busy a moment, so the honest node takes the job first
            blocker, _ = await req.requester.submit(spec(engine={"name": "noop", "delay": 2}, resources={"cpu": 1},
                                                         cache=False, env={"B": str(i)}), "mallory")
            await trio.sleep(0.5)
            job, _ = await req.requester.submit(spec(resources={"cpu": 0.5}, env={"I": str(i)}), "mallory")
            d = await wait_terminal(req.requester, job.id, timeout=30)
            assert {x.node_id: x.state for x in d.executions} == {"honest": ExecutionState.FAILED,
                                                                  "liar": ExecutionState.COMPLETED}
            await wait_terminal(req.requester, blocker.id, timeout=30)
        assert "honest" not in req.requester.reputation and not req.requester.quarantined("honest")


async def test_a_liar_running_a_sweeps_indexes_gets_no_honest_node_counted_against(tmp_path, autojump_clock):
    """Without --confidence each index the liar "ran" contradicted the honest node's true error for it: one
    sweep of 16 indexes gave the honest node 12 rejections."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", requester=False))
        await stack.enter_async_context(memory_node(hub, "liar", tmp_path / "l", requester=False,
                                                    hooks=NoopHooks(stdout="FORGED\n", delay=0.05)))

        async def true_error(request: object) -> None:
            raise ExecutorError(TRUE_ERROR, retryable=False)

        honest.noop.hooks.before_run = true_error
        await trio.sleep(1.5)
        s, _ = await req.sweeps.submit(sweep(grid={"x": [str(i) for i in range(16)]}), "mallory")
        await finished(req.sweeps, s.id)
        assert req.sweeps.counters["errors_run_again"] > 0  # the honest node did report errors
        assert "honest" not in req.requester.reputation and req.sweeps.counters["errors_contradicted"] == 0


async def test_nodes_a_client_pins_outvote_an_honest_node_at_no_cost_to_it(tmp_path, autojump_clock):
    """Labels are a node's own claim: two nodes of the client's wearing an honest node's labels, pinned by a
    selector, outvoted it in three jobs and got it quarantined."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", requester=False,
                                                    labels={"zone": "eu"}))
        for name in ("m1", "m2"):
            await stack.enter_async_context(memory_node(hub, name, tmp_path / name, requester=False,
                                                        labels={"zone": "eu"}, hooks=NoopHooks(stdout="FORGED\n")))
        await trio.sleep(1.5)
        for i in range(3):
            job, _ = await req.requester.submit(spec(deal={"concurrency": 3, "confidence": 2}, selector="zone=eu",
                                                     env={"I": str(i)}), "mallory")
            d = await wait_terminal(req.requester, job.id, timeout=30)
            assert {x.node_id: x.state for x in d.executions}["honest"] is ExecutionState.REJECTED  # outvoted
        assert req.requester.reputation == {} and not req.requester.quarantined("honest")


async def test_a_liar_among_as_many_nodes_as_a_job_needs_to_agree_fails_none_of_its_jobs(tmp_path, autojump_clock):
    """concurrency = confidence = 2, two honest nodes and a liar: 8 of 12 jobs failed "could not verify", and
    nothing counted against the liar. A tie now asks one more node, and the outvoted liar is held to account."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        for n in ("h1", "h2"):
            await stack.enter_async_context(memory_node(hub, n, tmp_path / n, requester=False))
        await stack.enter_async_context(memory_node(hub, "liar", tmp_path / "l", requester=False,
                                                    hooks=NoopHooks(stdout="FORGED\n")))
        await trio.sleep(1.5)
        ran_with_the_liar = 0
        for i in range(12):
            job, _ = await req.requester.submit(spec(deal={"concurrency": 2, "confidence": 2}, env={"I": str(i)}),
                                                "alice")
            d = await wait_terminal(req.requester, job.id, timeout=60)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert d.job.result is not None and "FORGED" not in d.job.result.stdout
            ran_with_the_liar += any(x.node_id == "liar" for x in d.executions)
        assert ran_with_the_liar  # it was chosen (at random: 2 jobs in 3), and outvoted each time
        accepted, rejected, _ = req.requester.reputation["liar"]
        assert accepted == 0 and rejected >= 1 and rejected == min(ran_with_the_liar, 3)  # then quarantined


class ForgetfulRogue:
    """A peer that bids at once on every announcement, then says it knows no such execution."""

    requester = None  # no requester role: node info gossip is not delivered to it

    def __init__(self, hub: MemoryHub, nursery: trio.Nursery, name: str = "rogue") -> None:
        self.transport = MemoryTransport(hub, name)
        self.transport.dispatcher = self
        self.nursery = nursery
        self.bids = 0

    async def _bid(self, ann: Announce) -> None:
        self.bids += 1
        bid = Bid(job_id=ann.job_id, execution_id=f"e-{uuid.uuid4().hex}", attempt=ann.attempt)
        await self.transport.request(ann.requester, encode(bid), timeout=5)

    async def on_gossip(self, origin: str, data: bytes) -> None:
        if isinstance(m := decode(data), Announce):
            self.nursery.start_soon(self._bid, m)

    async def on_request(self, peer: str, data: bytes) -> bytes:
        m = decode(data)
        if isinstance(m, Announce):
            self.nursery.start_soon(self._bid, m)
            return encode(Reply(verdict="pending"))
        return encode(Reply(states={}) if isinstance(m, StatusQuery) else Reply())

    async def advertise(self) -> None:
        room = Resources(cpu=4, memory="8GiB", disk="10GiB")
        while True:
            await self.transport.publish(encode(NodeInfo(peer_id=self.transport.peer_id, engines=["noop"],
                                                         max_per_job=room, total=room, free=room)))
            await trio.sleep(5)


async def test_a_rogue_that_takes_a_job_and_forgets_it_fails_no_job(tmp_path, autojump_clock):
    """It bid on every attempt and forgot each: the job's 5 re-offers, and its retries after them, all went to
    it, and the job failed (another client's too) while nothing counted against it."""
    hub = MemoryHub()
    async with trio.open_nursery() as nursery, AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", requester=False,
                                                             total=Resources(cpu=1, memory="1GiB")))
        rogue = ForgetfulRogue(hub, nursery)
        nursery.start_soon(rogue.advertise)
        await trio.sleep(1.5)
        honest.noop.hooks.delay = 60  # busy with another job for a minute
        blocker, _ = await req.requester.submit(spec(resources={"cpu": 1}, cache=False, env={"b": "1"}), "bob")
        await trio.sleep(1)
        honest.noop.hooks.delay = 0
        job, _ = await req.requester.submit(spec(cache=False, retries=3), "alice")
        d = await wait_terminal(req.requester, job.id, timeout=300)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        by_rogue = [x for x in d.executions if x.node_id == "rogue"]
        assert 1 <= len(by_rogue) <= 2 and all(x.state is ExecutionState.FAILED for x in by_rogue)
        assert [x.state for x in d.executions if x.node_id == "honest"] == [ExecutionState.COMPLETED]
        assert d.job.retried == 0  # it cost the job no retry
        assert (await wait_terminal(req.requester, blocker.id, timeout=300)).job.state is JobState.COMPLETED
        nursery.cancel_scope.cancel()
