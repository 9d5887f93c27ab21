"""Labels and selectors over the in-memory network: the real requester, compute nodes, store and dispatcher."""

from __future__ import annotations

from contextlib import AsyncExitStack

import trio

from jobs import ExecutionState, JobSpec, JobState, Resources
from jobs.messages import NodeInfo, encode
from jobs.selector import MAX_LABELS
from jobs.sweep import SweepSpec
from requester.service import NODE_TABLE_FILLS
from tests.memnet import MemoryHub, MemoryNode, memory_node

LABELS = {"eu": {"zone": "eu"}, "eu-spot": {"zone": "eu", "spot": "true"}, "us": {"zone": "us"}}


async def network(stack: AsyncExitStack, hub: MemoryHub, tmp_path) -> tuple[MemoryNode, dict[str, MemoryNode]]:
    """A pure requester and three labelled compute nodes, by name."""
    req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
    nodes = {name: await stack.enter_async_context(memory_node(hub, name, tmp_path / name, labels=labels))
             for name, labels in LABELS.items()}
    with trio.fail_after(5):
        while len(req.requester.known_nodes()) < len(LABELS):
            await trio.sleep(0.1)  # node info gossip
    return req, nodes


async def finished(requester, job_id: str, timeout: float = 10):
    with trio.fail_after(timeout):
        while not (d := await requester.describe(job_id)).job.state.is_terminal:
            await requester.wait(job_id, 0.5)
    return d


def spec(selector: str, **kw) -> JobSpec:
    return JobSpec.model_validate({"engine": {"name": "noop"}, "selector": selector, "cache": False, **kw})


async def test_a_job_runs_only_on_nodes_whose_labels_match_its_selector(tmp_path):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req, _ = await network(stack, hub, tmp_path)
        assert {n.peer_id: n.labels for n in req.requester.known_nodes()} == LABELS
        for selector, allowed in (("zone=eu,!spot", {"eu"}), ("zone=eu", {"eu", "eu-spot"}),
                                  ("zone notin (eu)", {"us"})):
            for _ in range(3):
                job, _ = await req.requester.submit(spec(selector, deal={"concurrency": len(allowed)}), "alice")
                d = await finished(req.requester, job.id)
                assert d.job.state is JobState.COMPLETED, d.job.reason
                assert {x.node_id for x in d.executions} == allowed  # no other node even bid


async def test_every_index_of_a_sweep_runs_on_matching_nodes(tmp_path):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req, nodes = await network(stack, hub, tmp_path)
        ran: list[str] = []
        for name, node in nodes.items():

            async def before(request, name=name):
                ran.append(name)

            node.noop.hooks.before_run = before
        sweep = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "selector": "!spot"},
                                          "grid": {"x": [str(i) for i in range(12)]}})
        s, _ = await req.sweeps.submit(sweep, "alice")
        with trio.fail_after(20):
            while not (d := await req.sweeps.describe(s.id)).sweep.state.is_terminal:
                await req.sweeps.wait(s.id, 0.5)
        assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
        assert len(ran) == 12 and set(ran) <= {"eu", "us"}


async def test_a_selector_no_known_node_matches_fails_at_once_naming_it(tmp_path):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req, _ = await network(stack, hub, tmp_path)
        job, _ = await req.requester.submit(spec("gpu in (a100)"), "alice")
        assert job.state is JobState.FAILED
        assert job.reason == ("no known node matches selector 'gpu in (a100)' "
                              "(3 nodes known: spot=true,zone=eu; zone=eu; zone=us)")
        sweep = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "selector": "zone=mars"},
                                          "grid": {"x": ["1", "2"]}})
        s, _ = await req.sweeps.submit(sweep, "alice")
        assert s.state is JobState.FAILED and "no known node matches selector 'zone=mars'" in s.reason


async def test_a_requester_told_of_peers_fails_no_job_for_want_of_a_node_it_has_not_heard_of_yet(
        tmp_path, autojump_clock):
    """A node joining a network (--peer) knows only itself for its first seconds: a laptop with no docker
    failed the docker jobs it sent to a cluster it had not heard from yet."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", joins=True))  # no labels
        await trio.sleep(1)
        job, _ = await req.requester.submit(spec("zone=eu"), "alice")
        assert job.state is JobState.PENDING
        await trio.sleep(NODE_TABLE_FILLS / 2)
        assert (await req.requester.describe(job.id)).job.state is JobState.PENDING
        await stack.enter_async_context(memory_node(hub, "eu", tmp_path / "eu", labels={"zone": "eu"}))
        d = await finished(req.requester, job.id)
        assert d.job.state is JobState.COMPLETED and [x.node_id for x in d.executions] == ["eu"]


async def test_a_restarted_requester_fails_no_queued_job_before_it_has_heard_the_nodes_again(
        tmp_path, autojump_clock):
    """A restarted requester knew only itself for its first seconds: it failed the queued jobs its own compute
    role could not run, while the node they waited for was busy with another."""
    hub = MemoryHub()
    async with memory_node(hub, "eu", tmp_path / "eu", labels={"zone": "eu"},
                           total=Resources(cpu=1, memory="8GiB", disk="10GiB")) as eu:
        eu.noop.hooks.delay = 20.0
        async with memory_node(hub, "req", tmp_path / "req") as req:
            with trio.fail_after(5):
                while len(req.requester.known_nodes()) < 2:
                    await trio.sleep(0.1)
            await req.requester.submit(spec("zone=eu", resources={"cpu": 1}), "alice")  # holds the eu node
            await trio.sleep(1)
            queued, _ = await req.requester.submit(spec("zone=eu", resources={"cpu": 1}), "alice")
            await trio.sleep(1)
            assert (await req.requester.describe(queued.id)).job.state is JobState.PENDING
        async with memory_node(hub, "req", tmp_path / "req") as req:  # after a crash
            await trio.sleep(NODE_TABLE_FILLS / 2)
            assert (await req.requester.describe(queued.id)).job.state is JobState.PENDING
            eu.noop.hooks.delay = 0.0
            d = await finished(req.requester, queued.id, timeout=120)
            assert d.job.state is JobState.COMPLETED, d.job.reason


async def test_a_job_waits_while_the_matching_node_is_busy(tmp_path):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req, nodes = await network(stack, hub, tmp_path)
        nodes["eu"].noop.hooks.delay = 1.0
        first, _ = await req.requester.submit(spec("zone=eu,!spot", resources={"cpu": 4}), "alice")
        await trio.sleep(0.3)
        second, _ = await req.requester.submit(spec("zone=eu,!spot", resources={"cpu": 4}), "alice")
        await trio.sleep(0.3)
        waiting = await req.requester.describe(second.id)
        assert waiting.job.state is JobState.PENDING and "1 of 3 known nodes can run it" in waiting.job.reason
        for job in (first, second):
            d = await finished(req.requester, job.id)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == ["eu"]


async def test_node_info_with_oversized_labels_is_dropped_and_the_node_stays_unknown(tmp_path):
    hub = MemoryHub()
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        room = Resources(cpu=4, memory="8GiB")
        for labels in ({f"k{i}": "v" for i in range(MAX_LABELS + 1)}, {"zone": "x" * 64}):
            info = NodeInfo.model_construct(peer_id="rogue", max_per_job=room, total=room, free=room, labels=labels,
                                            addrs=[], engines=["noop"], running=0, backlog=0, boot="b")
            await req.transport.dispatcher.on_gossip("rogue", encode(info))  # as the hub delivers gossip
        assert req.transport.dispatcher.dropped == 2
        assert req.requester.known_nodes() == []
