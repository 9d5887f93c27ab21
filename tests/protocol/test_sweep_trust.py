"""Sweeps against a lying peer, over the in-memory network: a claim's report counts only for the
indexes granted to that claim, from the node holding it; one node's error fails no index."""

from __future__ import annotations

import base64
from contextlib import AsyncExitStack

import pytest
import trio

from compute.service import DELIVERY_GIVE_UP
from executors import ExecutorError
from jobs import EventKind, JobSpec, JobState, Resources, RunResult
from jobs.messages import Claim, IndexResult, Reply, SweepAnnounce, decode, encode
from node.dispatch import Dispatcher, MessagePeers
from requester import trust
from tests.memnet import MemoryHub, MemoryTransport, memory_node
from tests.protocol.test_sweeps import finished, nodes, sweep

FORGED = RunResult(exit_code=0, stdout="forged: found it\n")


class Rogue:
    """A peer with a valid identity and no roles: it speaks the claim protocol by hand."""

    def __init__(self, hub: MemoryHub, name: str = "rogue") -> None:
        transport = MemoryTransport(hub, name)
        dispatcher = Dispatcher()
        dispatcher.ready.set()
        transport.dispatcher = dispatcher  # answers a Cancel with "not taken here"
        self.peers = MessagePeers(transport, dispatcher, hub.identity(name))
        self.id = name

    async def claim(self, requester: str, sweep_id: str, claim_id: str, results: list[IndexResult] = (),
                    want: int = 0) -> Reply:
        msg = Claim(sweep_id=sweep_id, claim_id=claim_id, want=want, results=list(results))
        signature = base64.urlsafe_b64encode(self.peers.sign(msg.statement())).decode()
        return await self.peers.request(requester, msg.model_copy(update={"signature": signature}), timeout=5)


def hit(i: int) -> IndexResult:
    return IndexResult(index=i, result=FORGED)


async def test_a_rogue_claim_cannot_win_an_any_sweep_with_indexes_it_was_not_granted(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        for n in ns:
            async def slow_but_seven(request):
                await trio.sleep(3 if request.spec.env["SHOAL_INDEX"] == "7" else 30)
            n.noop.hooks.before_run = slow_but_seven
        rogue = Rogue(hub)
        spec = sweep(grid={"i": [str(i) for i in range(200)]}, success="any",  # more than the nodes' 40 slots each
                     job={"deadlines": {"silence": 2.0}})
        s, _ = await ns[0].sweeps.submit(spec, "alice")
        await trio.sleep(0.3)  # the honest nodes hold their claims

        # a fresh claim whose first message already "found it"
        reply = await rogue.claim("n0", s.id, "c-rogue-1", [hit(30)], want=5)
        assert reply.ranges == []  # and it gets no work for it
        assert "refused 1 results" in reply.reason and "30" in reply.reason
        # results under the claim id an honest node holds
        honest = next(cid for cid, c in ns[0].sweeps._live[s.id].machine.claims.items() if c.node == "n1")
        honest_held = set(ns[0].sweeps._live[s.id].machine.claims[honest].indexes)
        reply = await rogue.claim("n0", s.id, honest, [hit(min(honest_held))])
        assert reply.verdict == "rejected" and not reply.ok and "belongs to another node" in reply.reason
        assert ns[0].sweeps._live[s.id].machine.claims[honest].indexes == honest_held  # n1's claim is untouched
        # a claim of its own, then results beyond what it was granted
        reply = await rogue.claim("n0", s.id, "c-rogue-2", want=2)
        granted = {i for a, b in reply.ranges for i in range(a, b)}
        assert len(granted) == 2
        outside = next(i for i in range(200) if i not in granted)
        reply = await rogue.claim("n0", s.id, "c-rogue-2", [hit(outside)])
        assert f": {outside}" in reply.reason

        assert (await ns[0].sweeps.get(s.id)).state is JobState.RUNNING  # none of it won the sweep
        rejected = ns[0].requester.reputation["rogue"].rejected
        assert rejected == 3 and ns[0].requester.quarantined("rogue")
        reply = await rogue.claim("n0", s.id, "c-rogue-3", want=5)
        assert reply.verdict == "rejected" and reply.ranges == [] and "quarantined" in reply.reason

        d = await finished(ns[0].sweeps, s.id, timeout=30)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.winner == 7, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id, first=7, limit=1)
        assert records[0].node_id in ("n0", "n1") and "forged" not in records[0].result.stdout
        c = ns[0].sweeps.counters
        assert c["penalties"] == 3 and c["refused_claims"] == 1 and c["refused_results"] == 3
        refusals = [e for e in await ns[0].store.events(s.id) if e.kind is EventKind.RESULTS_REJECTED]
        assert len(refusals) == 3 and {e.node_id for e in refusals} == {"rogue"}
        assert "n0" not in ns[0].requester.reputation and "n1" not in ns[0].requester.reputation


async def test_honest_nodes_complete_a_sweep_without_a_refusal(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        for n in ns:
            n.noop.hooks.delay = 0.01
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(500)]}), "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=60)
        assert d.sweep.counts == {JobState.COMPLETED: 500}, d.sweep.reason
        c = ns[0].sweeps.counters
        assert c["refused_results"] == 0 and c["penalties"] == 0 and c["results"] == 500
        assert ns[0].requester.reputation == {}


async def sweep_with_a_failing_node(stack: AsyncExitStack, tmp_path, error: ExecutorError):
    """Two nodes run a 16-index sweep; n1 fails every index it runs with ``error``. Returns the nodes,
    the sweep's description and which node ran which value, in order."""
    ns = await nodes(stack, MemoryHub(), tmp_path, n=2)
    runs: list = []

    async def honest(request):
        runs.append(("n0", request.spec.env["x"]))

    async def failing(request):
        runs.append(("n1", request.spec.env["x"]))
        raise error

    ns[0].noop.hooks.before_run, ns[1].noop.hooks.before_run = honest, failing
    ns[0].noop.hooks.delay = 0.05
    s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(16)]}), "alice")
    d = await finished(ns[0].sweeps, s.id)
    assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 16}, d.sweep.reason
    return ns, d, runs


async def test_one_nodes_errors_run_their_indexes_elsewhere_and_count_against_it(tmp_path, autojump_clock):
    async with AsyncExitStack() as stack:
        ns, d, runs = await sweep_with_a_failing_node(
            stack, tmp_path, ExecutorError("the template is broken", retryable=False))
        lied = {x for node, x in runs if node == "n1"}
        assert lied  # n1 took part
        assert {x for node, x in runs if node == "n0"} == {str(i) for i in range(16)}  # n0 ran each, once
        records, _ = await ns[0].store.sweep_indexes(d.sweep.id)
        assert all(r.node_id == "n0" and r.attempts == (2 if str(r.index) in lied else 1) for r in records)
        assert ns[0].requester.reputation["n1"][:2] == (0, len(lied))  # each error was shown wrong
        assert "n0" not in ns[0].requester.reputation
        assert ns[0].sweeps.counters["errors_contradicted"] == len(lied)


async def test_a_nodes_retryable_errors_run_their_indexes_elsewhere_and_count_against_no_one(tmp_path, autojump_clock):
    async with AsyncExitStack() as stack:
        ns, _, runs = await sweep_with_a_failing_node(
            stack, tmp_path, ExecutorError("the node's disk is full", retryable=True))
        assert {x for node, x in runs if node == "n1"}  # n1 took part, and failed each index it ran
        assert "n1" not in ns[0].requester.reputation  # an honest node's bad luck is held against nobody
        assert ns[0].sweeps.counters["errors_contradicted"] == 0 and ns[0].sweeps.counters["penalties"] == 0


async def test_a_rogue_error_alone_fails_no_index(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=1)
        ns[0].noop.hooks.delay = 0.05
        rogue = Rogue(hub)
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(200)]}), "alice")
        reply = await rogue.claim("n0", s.id, "c-rogue", want=1)  # n0's 40 slots leave it some
        (index, end), = reply.ranges
        assert end == index + 1
        error = IndexResult(index=index, error="no such file", retryable=False)
        reply = await rogue.claim("n0", s.id, "c-rogue", [error])
        assert reply.verdict == "accepted" and reply.reason == ""  # its own index: taken, not refused
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 200}, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id, first=index, limit=1)
        assert records[0].node_id == "n0" and records[0].attempts == 2
        assert ns[0].requester.reputation["rogue"][:2] == (0, 1)


async def test_a_node_losing_every_index_at_once_fails_none_while_the_honest_node_is_busy(tmp_path, autojump_clock):
    """A rogue claims one index at a time and answers each at once with "retry elsewhere", claiming again as soon
    as it may; the honest node's one slot runs an index for 1,000 s. The rogue was granted each index back every
    60 s and spent its five attempts: 3 of 4 indexes failed before the honest node was free. Like a job's node,
    it is now done with an index it lost twice, while a node holding a claim on the sweep has not tried it."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        honest = await stack.enter_async_context(memory_node(hub, "honest", tmp_path / "h", requester=False,
                                                             total=Resources(cpu=0.1, memory="1GiB")))
        honest.noop.hooks.delay = 1000
        await trio.sleep(1.5)
        rogue = Rogue(hub)
        s, _ = await req.sweeps.submit(sweep(grid={"i": [str(i) for i in range(4)]}, job={"timeout": 1200}), "alice")
        await trio.sleep(0.5)  # the honest node claims, and starts an index
        held: list[int] = []
        granted = 0
        while not (await req.sweeps.get(s.id)).state.is_terminal:
            lost = [IndexResult(index=i, error="the node's disk is full", retryable=True) for i in held]
            reply = await rogue.claim("req", s.id, "c-rogue", lost, want=1)
            held = [i for a, b in reply.ranges for i in range(a, b)]
            granted += len(held)
            await trio.sleep(1)
        d = await finished(req.sweeps, s.id, timeout=5000)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 4}, d.sweep.reason
        records, _ = await req.store.sweep_indexes(s.id, first=0, limit=4)
        assert {r.node_id for r in records} == {"honest"}
        assert granted <= 3 * 2  # each index the honest node was not running, twice at most


async def test_a_peer_that_only_heartbeats_a_claim_keeps_no_index_from_the_node_that_lost_it(
        tmp_path, autojump_clock):
    """n1 lost index 1 twice and is idle; n2 is busy with a long job of another client's; a peer with no roles
    keeps a claim that holds nothing alive. That claim counted as "another node that has not tried it": n1 was
    refused index 1 until n2 came free an hour later (for good, had it never)."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        n1 = await stack.enter_async_context(memory_node(hub, "n1", tmp_path / "n1", requester=False,
                                                         total=Resources(cpu=1, memory="4GiB")))
        await stack.enter_async_context(memory_node(hub, "n2", tmp_path / "n2", requester=False,
                                                    total=Resources(cpu=4, memory="4GiB")))
        await trio.sleep(1.5)
        await req.requester.submit(JobSpec.model_validate({"engine": {"name": "noop", "delay": 3600},
                                                           "resources": {"cpu": 4}, "timeout": "2h", "cache": False}),
                                   "bob")
        await trio.sleep(5)
        failed: list[int] = []

        async def fails_index_1_twice(request):
            if request.spec.env["SHOAL_INDEX"] == "1" and len(failed) < 2:
                failed.append(1)
                raise ExecutorError("the node ran out of memory", retryable=True)
        n1.noop.hooks.before_run = fails_index_1_twice
        rogue = Rogue(hub)
        s, _ = await req.sweeps.submit(sweep(grid={"i": [str(i) for i in range(3)]}, job={"resources": {"cpu": 1}}),
                                       "alice")
        reply = await rogue.claim("req", s.id, "c-rogue", want=1)
        held = [i for a, b in reply.ranges for i in range(a, b)]
        await rogue.claim("req", s.id, "c-rogue", [IndexResult(index=i, error="busy", retryable=True) for i in held])

        async def heartbeat() -> None:
            while True:
                await rogue.claim("req", s.id, "c-rogue", want=0)
                await trio.sleep(3)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(heartbeat)
            d = await finished(req.sweeps, s.id, timeout=600)
            nursery.cancel_scope.cancel()
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 3}, d.sweep.reason
        assert len(failed) == 2


async def test_an_error_two_nodes_report_fails_the_index(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        async def broken(request):
            raise ExecutorError("image not found", retryable=False)

        for n in ns:
            n.noop.hooks.before_run = broken
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": ["a", "b"]}), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.FAILED and d.sweep.counts == {JobState.FAILED: 2}
        records, _ = await ns[0].store.sweep_indexes(s.id)
        assert all(r.attempts == 2 and "image not found" in r.reason for r in records)  # once on each node
        assert ns[0].requester.reputation == {}  # a confirmed error is no lie


async def test_a_re_sent_batch_and_a_lapsed_claims_late_report_cost_their_node_nothing(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=1)
        ns[0].noop.hooks.delay = 1.0  # 200 indexes on 40 slots: still running when the late report comes
        slow = Rogue(hub, "slow")  # an honest node with a bad link, played by hand
        spec = sweep(grid={"i": [str(i) for i in range(200)]}, job={"deadlines": {"silence": 1.0}})
        s, _ = await ns[0].sweeps.submit(spec, "alice")
        reply = await slow.claim("n0", s.id, "c-slow", want=2)
        (first, end), = reply.ranges
        ok = IndexResult(index=first, result=RunResult(exit_code=0, stdout="honest"))
        assert (await slow.claim("n0", s.id, "c-slow", [ok])).reason == ""
        again = await slow.claim("n0", s.id, "c-slow", [ok])  # as after a reply that never arrived
        assert again.verdict == "accepted" and again.reason == ""
        assert ns[0].sweeps.counters["repeated_results"] == 1
        await trio.sleep(1.6)  # silent past the lease: its other index goes back
        late = IndexResult(index=end - 1, result=RunResult(exit_code=0, stdout="late"))
        reply = await slow.claim("n0", s.id, "c-slow", [late])
        assert reply.verdict == "rejected" and reply.ok and "lease lapsed" in reply.reason, reply  # its claim ends
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.counts == {JobState.COMPLETED: 200}, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id, first=end - 1, limit=1)
        assert records[0].node_id == "n0" and records[0].result.stdout != "late"
        assert "slow" not in ns[0].requester.reputation and ns[0].sweeps.counters["penalties"] == 0


async def test_a_requester_that_announces_an_endless_silence_then_falls_silent_gets_our_slots_back(
        tmp_path, autojump_clock):
    """A peer announces a sweep whose template allows a silence of 30 years, and then never answers a
    claim: the node gives the slots it reserved back after DELIVERY_GIVE_UP, not after 60 years."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        (node,) = await nodes(stack, hub, tmp_path, n=1)
        rogue = MemoryTransport(hub, "rogue")
        rogue.dispatcher = Dispatcher()  # it takes no claims: every report gets no verdict
        rogue.dispatcher.ready.set()
        spec = sweep(grid={"x": [str(i) for i in range(10)]}, job={"deadlines": {"silence": 1e9}})
        free = node.compute.capacity.free
        await rogue.publish(encode(SweepAnnounce(sweep_id="s-rogue", spec=spec, requester="rogue", pending=10)))
        await trio.sleep(1)
        assert node.compute.capacity.free != free  # it claimed the sweep: slots reserved
        await trio.sleep(DELIVERY_GIVE_UP + 60)
        assert node.compute.capacity.free == free
        assert node.compute.machine.claims == {}


class _GrantingOnce:
    """A rogue requester's sweep service: its first answer grants index 0; every later one nothing, until
    ``limit`` reports, when it ends the claim (so a node reporting in a tight loop stops, and the test ends)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.claims = 0

    async def handle(self, peer: str, msg: Claim) -> Reply:
        self.claims += 1
        if self.claims >= self.limit:
            return Reply(verdict="rejected", reason="enough")
        return Reply(verdict="accepted", ranges=[(0, 1)] if self.claims == 1 else [])


async def test_a_requester_that_announces_a_microsecond_of_silence_gets_three_reports_a_second(
        tmp_path, autojump_clock):
    """A node keeps its claim's lease by reporting three times in each ``deadlines.silence``. A rogue
    requester that chose a microsecond once had a node running one index send it some 12,000 signed
    reports a second; it now gets what a silence of 1 s (the shortest the API takes) gets."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        (node,) = await nodes(stack, hub, tmp_path, n=1)
        node.noop.hooks.delay = 3600
        rogue = MemoryTransport(hub, "rogue")
        rogue.dispatcher = Dispatcher()
        rogue.dispatcher.sweeps = granting = _GrantingOnce(limit=1000)
        rogue.dispatcher.ready.set()
        spec = sweep(grid={"x": ["1"]}, job={"deadlines": {"silence": 1e-6}})
        await rogue.publish(encode(SweepAnnounce(sweep_id="s-rogue", spec=spec, requester="rogue", pending=1)))
        await trio.sleep(60)
        assert 0 < granting.claims <= 60 * 3 + 5


class _Shadowing(Dispatcher):
    """A rogue requester: it echoes every sweep it hears announced under its own name and the same id,
    and each claim on its copy is granted index 0 again, for ever."""

    def __init__(self, transport: MemoryTransport) -> None:
        super().__init__()
        self.transport = transport
        self.sweeps = self
        self.claims = 0
        self.ready.set()

    async def on_gossip(self, origin: str, data: bytes) -> None:
        msg = decode(data)
        if isinstance(msg, SweepAnnounce) and msg.requester != self.transport.peer_id:
            echo = msg.model_copy(update={"requester": self.transport.peer_id, "requester_addrs": [], "pending": 1})
            await self.transport.publish(encode(echo))

    async def handle(self, peer: str, msg: Claim) -> Reply:
        self.claims += 1
        return Reply(verdict="accepted", ranges=[(0, 1)])


async def test_a_peer_announcing_another_requesters_sweep_id_takes_that_sweep_from_no_node(tmp_path, autojump_clock):
    """A rogue echoes an honest sweep's announcement under its own name and the same sweep id, to a node
    busy when both arrive, and then keeps that node busy with its own index. The node once knew a sweep
    by its id alone: it claimed the rogue's copy and ignored the honest announcements for good. It
    claims each requester's sweep from that requester, so the honest sweep runs beside the rogue's."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        requester = await stack.enter_async_context(memory_node(hub, "n0", tmp_path / "n0", compute=False))
        worker = await stack.enter_async_context(memory_node(hub, "n1", tmp_path / "n1",
                                                             total=Resources(cpu=2, memory="1GiB", disk="1GiB")))
        rogue = MemoryTransport(hub, "rogue")
        rogue.dispatcher = shadowing = _Shadowing(rogue)
        hub.identity("rogue")
        await trio.sleep(1.5)  # node info gossip
        worker.noop.hooks.delay = 5
        busy, _ = await requester.requester.submit(
            JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {"cpu": 2}, "cache": False}), "alice")
        await trio.sleep(1)
        spec = sweep(grid={"x": ["1", "2", "3"]}, job={"resources": {"cpu": 1}})
        s, _ = await requester.sweeps.submit(spec, "alice")
        d = await finished(requester.sweeps, s.id, timeout=120)
        assert d.sweep.state is JobState.COMPLETED
        assert (await requester.requester.get(busy.id)).state is JobState.COMPLETED
        records, _ = await requester.store.sweep_indexes(s.id, first=0, limit=3)
        assert [r.node_id for r in records] == ["n1"] * 3
        await trio.sleep(2)
        assert shadowing.claims > 0  # the rogue's own sweep is claimed too, from the rogue


class _Granting:
    """A rogue requester's sweep service: its first answer grants ``ranges``, every later one nothing."""

    def __init__(self, ranges: list[tuple[int, int]]) -> None:
        self.ranges = ranges
        self.claims = 0

    async def handle(self, peer: str, msg: Claim) -> Reply:
        self.claims += 1
        return Reply(verdict="accepted", ranges=self.ranges if self.claims == 1 else [])


@pytest.mark.parametrize("ranges", [[(5, 12)], [(0, 10**12)], [(-3, 2), (9, 10**15)]])
async def test_a_requester_granting_indexes_past_the_end_or_a_trillion_of_them_gets_only_what_was_asked(
        tmp_path, autojump_clock, ranges):
    """Once an index past the sweep's end crashed the node, and a trillion granted indexes took its memory."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        (node,) = await nodes(stack, hub, tmp_path, n=1)
        ran: list[str] = []

        async def record(request):
            if "SHOAL_INDEX" in request.spec.env:
                ran.append(request.spec.env["SHOAL_INDEX"])

        node.noop.hooks.before_run = record
        rogue = MemoryTransport(hub, "rogue")
        rogue.dispatcher = Dispatcher()
        rogue.dispatcher.sweeps = _Granting(ranges)
        rogue.dispatcher.ready.set()
        free = node.compute.capacity.free
        spec = sweep(grid={"x": [str(i) for i in range(10)]})
        await rogue.publish(encode(SweepAnnounce(sweep_id="s-rogue", spec=spec, requester="rogue", pending=10)))
        await trio.sleep(30)
        assert ran and all(0 <= int(i) < 10 for i in ran) and len(ran) == len(set(ran))
        assert node.compute.capacity.free == free and node.compute.machine.claims == {}
        fresh, _ = await node.requester.submit(JobSpec.model_validate({"engine": {"name": "noop"}}), "bob")
        await node.requester.wait(fresh.id, 30)
        assert (await node.requester.get(fresh.id)).state is JobState.COMPLETED  # the node carries on


async def test_with_confidence_a_lying_node_decides_no_index_and_wins_no_any_sweep(tmp_path, autojump_clock):
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, MemoryHub(), tmp_path, n=4)
        liar = ns[3]
        runs: list = []
        for n in ns:
            async def before(request, node=n.peer_id):
                runs.append((node, int(request.spec.env["SHOAL_INDEX"])))
            n.noop.hooks.before_run = before
            n.noop.hooks.delay = 0.05
        liar.noop.hooks.stdout = "forged: found it\n"  # a different result, and a "hit"

        spec = sweep(grid={"i": [str(i) for i in range(30)]}, confidence=2)
        s, _ = await ns[0].sweeps.submit(spec, "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=120)
        assert d.sweep.counts == {JobState.COMPLETED: 30}, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id, first=0, limit=30)
        assert all(r.result.stdout == "" and r.node_id != liar.peer_id for r in records)
        assert all("verified by 2 of" in r.reason for r in records)
        for i in range(30):  # every index ran on two distinct nodes at least
            assert len({node for node, index in runs if index == i}) >= 2, i
        assert ns[0].sweeps.counters["results_outvoted"] >= 1
        assert ns[0].requester.quarantined(liar.peer_id)
        assert not any(ns[0].requester.quarantined(n.peer_id) for n in ns[:3])
        assert sum(ns[0].requester.reputation[n.peer_id][0] for n in ns[:3]) == 2 * 30  # verified, and counted
        assert ns[0].requester.reputation[liar.peer_id][0] == 0

        spec = sweep(grid={"i": [str(i) for i in range(30)]}, success="any", confidence=2)
        s, _ = await ns[0].sweeps.submit(spec, "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=120)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.winner is not None, d.sweep.reason
        [won], _ = await ns[0].store.sweep_indexes(s.id, first=d.sweep.winner, limit=1)
        assert won.result.stdout == "" and won.node_id != liar.peer_id


async def test_a_node_on_probation_runs_one_index_at_a_time_and_its_lie_quarantines_it_again(
        tmp_path, autojump_clock, monkeypatch):
    """Out of quarantine, a liar claimed its whole share of a verified sweep and lied on each index before the
    first verdict caught it; on probation it now holds one index at a time (``trust.PROBATION_WORK``)."""
    monkeypatch.setattr(trust, "QUARANTINE_SECONDS", 600.0)
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, MemoryHub(), tmp_path, n=4)
        liar, requester = ns[3], ns[0].requester
        requester.machine.quarantine_after = 1
        requester.reputation[liar.peer_id] = trust.Standing(0, 1, rejected_at=requester.clock() - 601)
        assert requester.on_probation(liar.peer_id)
        liar_runs: list[int] = []
        rooms: list[int | None] = []  # what the liar may take besides, jobs included, while it runs

        async def before(request):
            liar_runs.append(int(request.spec.env["SHOAL_INDEX"]))
            rooms.append(requester.probation_room(liar.peer_id))
        liar.noop.hooks.before_run = before
        liar.noop.hooks.stdout = "forged\n"
        for n in ns:
            n.noop.hooks.delay = 0.05
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(40)]}, confidence=2), "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=120)
        assert d.sweep.counts == {JobState.COMPLETED: 40}, d.sweep.reason
        assert len(liar_runs) == 1 and rooms == [0], (liar_runs, rooms)
        assert requester.quarantined(liar.peer_id, verified=True)


async def test_without_confidence_the_first_result_of_an_index_counts(tmp_path, autojump_clock):
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, MemoryHub(), tmp_path, n=2)
        runs: list = []
        for n in ns:
            async def before(request, node=n.peer_id):
                runs.append(node)
            n.noop.hooks.before_run = before
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(20)]}), "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=60)
        assert d.sweep.counts == {JobState.COMPLETED: 20} and len(runs) == 20  # once each: no cost unasked


async def test_a_rogue_cannot_confirm_its_own_forged_result_under_a_second_claim(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        for n in ns:
            n.noop.hooks.delay = 30  # the honest nodes are busy while the rogue plays
        rogue = Rogue(hub)
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(200)]}, confidence=2), "alice")
        await trio.sleep(0.3)
        first = await rogue.claim("n0", s.id, "c-rogue-1", want=1)
        [(index, _)] = first.ranges
        await rogue.claim("n0", s.id, "c-rogue-1", [hit(index)])
        for n in range(2, 6):  # fresh claims, each hoping for the index it proposed
            reply = await rogue.claim("n0", s.id, f"c-rogue-{n}", want=200)
            granted = {i for a, b in reply.ranges for i in range(a, b)}
            assert index not in granted
            if granted:
                await rogue.claim("n0", s.id, f"c-rogue-{n}", [hit(i) for i in granted])
        records, _ = await ns[0].store.sweep_indexes(s.id, first=0, limit=200)
        assert not any(r.state is JobState.COMPLETED for r in records)  # one node's word decides nothing
