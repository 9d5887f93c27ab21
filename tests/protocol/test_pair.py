"""Requester and compute nodes over an in-memory network: the protocol without libp2p."""

from __future__ import annotations

from contextlib import AsyncExitStack

import pytest
import trio

from jobs import ExecutionState, JobSpec, JobState, Resources
from jobs.messages import Announce, Decision, decode, encode
from tests.memnet import MemoryHub, memory_node

NOOP = {"engine": {"name": "noop"}}


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({**NOOP, **kw})


async def wait_terminal(requester, job_id: str, timeout: float = 10.0):
    with trio.fail_after(timeout):
        while True:
            d = await requester.describe(job_id)
            if d.job.state.is_terminal:
                return d
            await requester.wait(job_id, 0.5)


async def test_three_nodes_run_a_job_with_concurrency_three(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"n{i}")) for i in range(3)]
        await trio.sleep(1.5)  # node info gossip
        job, created = await nodes[0].requester.submit(spec(deal={"concurrency": 3}), "alice")
        assert created
        d = await wait_terminal(nodes[0].requester, job.id)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        done = [x for x in d.executions if x.state is ExecutionState.COMPLETED]
        assert sorted(x.node_id for x in done) == ["n0", "n1", "n2"]
        assert d.phases.submitted <= d.phases.first_bid <= d.phases.finished


async def test_messages_per_job_do_not_grow_with_nodes(tmp_path, autojump_clock):
    counts = {}
    for n in (3, 8):
        hub = MemoryHub()
        async with AsyncExitStack() as stack:
            nodes = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"{n}-{i}"))
                     for i in range(n)]
            await trio.sleep(1.5)
            before = hub.requests
            for _ in range(5):
                job, _ = await nodes[0].requester.submit(spec(), "alice")
                await wait_terminal(nodes[0].requester, job.id)
            counts[n] = (hub.requests - before) / 5
    # concurrency=1: a bid (and its reply) and a result from the winner; other nodes' bids are refused
    # in their reply, but nodes that never bid send nothing.
    assert counts[8] <= counts[3] + 5, counts


async def test_impossible_job_fails_fast_with_reason(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "n0", tmp_path / "n0", per_job=Resources(cpu=1, memory="1GiB", disk=0)) as n:
        job, _ = await n.requester.submit(spec(resources={"memory": "8GiB"}), "alice")
        assert job.state is JobState.FAILED
        assert "8 GiB memory" in job.reason


async def test_full_node_bids_once_capacity_frees(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "n0", tmp_path / "n0", total=Resources(cpu=1, memory="1GiB", disk=0)) as n:
        n.noop.hooks.delay = 0.5
        first, _ = await n.requester.submit(spec(resources={"cpu": 1}), "alice")
        await trio.sleep(0.1)
        second, _ = await n.requester.submit(spec(resources={"cpu": 1}), "alice")
        await trio.sleep(0.2)
        d2 = await n.requester.describe(second.id)
        assert d2.job.state is JobState.PENDING and not d2.executions  # passed over: no room
        assert len(n.compute.backlog) == 1
        d1 = await wait_terminal(n.requester, first.id)
        d2 = await wait_terminal(n.requester, second.id)
        assert d1.job.state is JobState.COMPLETED and d2.job.state is JobState.COMPLETED
        # it bid only after the first one finished
        assert d2.executions[0].created_at >= d1.phases.finished - 0.05
        assert n.compute.capacity.statistics().reservations == 0


@pytest.mark.parametrize("step", [0.0, -3600.0])
async def test_lost_compute_node_work_is_reoffered(tmp_path, autojump_clock, step):
    """``step``: the requester's wall clock steps back an hour as the node dies (an NTP step, a VM resumed,
    ``date -s``): silence was measured on it, and a dead node's job waited for that hour."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        stack2 = AsyncExitStack()
        a = await stack2.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        a.noop.hooks.delay = 60
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(deadlines={"silence": 1.0}), "alice")
        await trio.sleep(0.5)
        assert (await req.requester.describe(job.id)).job.state is JobState.RUNNING
        hub._epoch += step
        await stack2.aclose()  # node a dies mid-run
        await stack.enter_async_context(memory_node(hub, "b", tmp_path / "b", requester=False))
        d = await wait_terminal(req.requester, job.id, timeout=20)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        states = {x.node_id: x.state for x in d.executions}
        assert states == {"a": ExecutionState.FAILED, "b": ExecutionState.COMPLETED}


@pytest.mark.parametrize("step", [0.0, -3600.0])
async def test_a_node_gone_silent_is_forgotten_though_the_wall_clock_stepped_back(tmp_path, autojump_clock, step):
    """The node table aged its nodes on the wall clock: stepped back an hour, a node that left stayed "known" for
    that hour, offered jobs and counted among the nodes able to run them."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        async with memory_node(hub, "a", tmp_path / "a", requester=False):
            await trio.sleep(1.5)
            assert [n.peer_id for n in req.requester.known_nodes()] == ["a"]
        hub.transports.pop("a")
        hub._epoch += step
        await trio.sleep(31)  # NODE_INFO_TTL
        assert req.requester.known_nodes() == []


async def test_restarted_compute_node_reports_lost_execution(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        async with memory_node(hub, "a", tmp_path / "a", requester=False) as a:
            a.noop.hooks.delay = 60
            await trio.sleep(1.5)
            job, _ = await req.requester.submit(spec(), "alice")
            await trio.sleep(0.5)
        hub.transports.pop("a")
        async with memory_node(hub, "a", tmp_path / "a", requester=False):  # same data dir: restart
            d = await wait_terminal(req.requester, job.id, timeout=20)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        reasons = [x.reason for x in d.executions if x.state is ExecutionState.FAILED]
        assert any("restarted" in r for r in reasons)


async def test_restarted_requester_finishes_its_jobs(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "a", tmp_path / "a", requester=False) as a:
        a.noop.hooks.delay = 1.0
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1.5)
            job, _ = await req.requester.submit(spec(), "alice")
            await trio.sleep(0.3)
        hub.transports.pop("req")
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            d = await wait_terminal(req.requester, job.id, timeout=20)
            assert d.job.state is JobState.COMPLETED, d.job.reason


async def test_a_requester_down_longer_than_a_result_deadline_takes_the_result_its_node_kept(tmp_path, autojump_clock):
    """A restarted requester measured its running jobs' result deadline from their acceptance: down longer than
    it, it failed each run at its first tick (the node's failure, counted towards barring it from the job),
    before the node's result, held for it all along, could arrive."""
    hub = MemoryHub()
    job_spec = spec(timeout=5)
    async with memory_node(hub, "a", tmp_path / "a", requester=False) as a:
        a.noop.hooks.delay = 1.0
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1.5)
            job, _ = await req.requester.submit(job_spec, "alice")
            await trio.sleep(0.5)  # accepted, running
        hub.transports.pop("req")
        await trio.sleep(job_spec.result_deadline() + 5)  # the node's result waits for the requester
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            d = await wait_terminal(req.requester, job.id, timeout=60)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert [(x.node_id, x.state) for x in d.executions] == [("a", ExecutionState.COMPLETED)]


@pytest.mark.parametrize("waited, down", [(1, 0), (8, 5)], ids=["early in the wait", "late, down over its end"])
async def test_a_requester_restarted_while_it_waits_for_min_bids_chooses_when_the_wait_ends(
        tmp_path, autojump_clock, waited, down):
    """The wait's start was kept in memory only: after a restart the job never chose among its bids, its nodes
    could not bid again (one live bid per job), and it sat pending until its bid limit (24 h). Then the wait
    began again at the restart: late in the wait, the requester chose after the nodes' pending bids had
    expired (its wait and a grace, counted from the bid), and the bid it accepted was one its node had
    dropped. It goes on from the first bid, as stored."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        for name in ("a", "b"):
            await stack.enter_async_context(memory_node(hub, name, tmp_path / name, requester=False))
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1.5)
            job, _ = await req.requester.submit(spec(deal={"min_bids": 3}, deadlines={"min_bids": 10}), "alice")
            await trio.sleep(waited)  # both nodes bid at once; a third is awaited
            assert len((await req.requester.describe(job.id)).executions) == 2
        hub.transports.pop("req")
        await trio.sleep(down)
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            d = await wait_terminal(req.requester, job.id, timeout=60)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert not [x for x in d.executions if x.state is ExecutionState.FAILED], d.executions


async def test_min_bids_waits_then_chooses(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"n{i}")) for i in range(3)]
        await trio.sleep(1.5)
        job, _ = await nodes[0].requester.submit(spec(deal={"concurrency": 1, "min_bids": 3}), "alice")
        d = await wait_terminal(nodes[0].requester, job.id)
        assert d.job.state is JobState.COMPLETED
        states = sorted(x.state for x in d.executions)
        assert states.count(ExecutionState.COMPLETED) == 1 and states.count(ExecutionState.REJECTED) == 2
        for n in nodes:  # every rejected node got its capacity back
            assert n.compute.capacity.statistics().reservations == 0


async def test_only_the_requester_may_decide_or_cancel(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        await stack.enter_async_context(memory_node(hub, "mallory", tmp_path / "m", compute=False))
        a.noop.hooks.delay = 2
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(deal={"min_bids": 2}), "alice")
        await trio.sleep(0.3)
        (ex,) = list(a.compute.machine.live.values())
        reply = decode(await a.transport.dispatcher.on_request(
            "mallory", encode(Decision(job_id=job.id, execution_id=ex.id, accepted=True))))
        assert not reply.ok and "requester" in reply.reason
        assert a.compute.machine.live[ex.id].state is ExecutionState.BIDDING


async def test_garbage_and_forged_messages_are_dropped(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "n0", tmp_path / "n0") as n:
        d = n.transport.dispatcher
        for junk in (b"", b"\xff\x00", b"{}", b'{"kind":"bid"}', b"[" * 10000, b'{"kind":"announce","v":1}'):
            reply = decode(await d.on_request("x", junk))
            assert not reply.ok
            await d.on_gossip("x", junk)
        # an announcement whose origin is not its requester is ignored
        ann = Announce(job_id="j-x", spec=spec(), requester="someone-else")
        await d.on_gossip("x", encode(ann))
        await trio.sleep(0.1)
        assert not n.compute.machine.live
        assert d.dropped >= 12


async def test_results_with_a_forged_signature_are_refused(tmp_path, autojump_clock):
    from jobs.messages import Result
    from jobs.model import RunResult

    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        a.noop.hooks.delay = 5
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(), "alice")
        await trio.sleep(0.3)
        (ex,) = list(a.compute.machine.live.values())
        forged = Result(job_id=job.id, execution_id=ex.id, result=RunResult(stdout="forged"), signature="AAAA")
        reply = decode(await req.transport.dispatcher.on_request("a", encode(forged)))
        assert reply.verdict == "rejected" and "signature" in reply.reason
        d = await wait_terminal(req.requester, job.id)  # the genuine result still completes the job
        assert d.job.state is JobState.COMPLETED and d.job.result.stdout == ""


async def test_bids_per_job_do_not_grow_with_nodes_when_the_first_asked_have_room(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"n{i}")) for i in range(10)]
        await trio.sleep(1.5)  # node info gossip: the requester knows who has room
        requester = nodes[0].requester
        for _ in range(10):
            job, _ = await requester.submit(spec(deal={"concurrency": 2}, cache=False), "alice")  # each one runs
            d = await wait_terminal(requester, job.id)
            assert d.job.state is JobState.COMPLETED, d.job.reason
        # each first announcement names 2 + 1 nodes with room; the other seven never bid
        assert requester.counters["bids"] <= 10 * 3, requester.counters
        # ... and reaches just those three, as direct messages: none went through gossip
        assert hub.sent["request", "announce"] == 10 * 3, hub.sent
        assert hub.sent["gossip", "announce"] == 0, hub.sent


async def test_a_job_runs_on_the_node_it_was_submitted_to_while_that_node_has_room(tmp_path, autojump_clock):
    """No gossip, bids or rejections for a one-node job the requester's own compute role can take;
    once that node is full, the job is offered to the others and runs there."""
    hub = MemoryHub()
    one_cpu = Resources(cpu=1, memory="1GiB", disk=0)
    async with AsyncExitStack() as stack:
        nodes = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"n{i}", total=one_cpu))
                 for i in range(3)]
        nodes[0].noop.hooks.delay = 1.0
        await trio.sleep(1.5)  # node info gossip
        requester = nodes[0].requester
        here, _ = await requester.submit(spec(resources={"cpu": 1}, cache=False), "alice")
        elsewhere, _ = await requester.submit(spec(resources={"cpu": 1}, cache=False), "alice")
        d_here = await wait_terminal(requester, here.id)
        d_elsewhere = await wait_terminal(requester, elsewhere.id)
    assert d_here.job.state is JobState.COMPLETED and d_elsewhere.job.state is JobState.COMPLETED
    assert [x.node_id for x in d_here.executions] == ["n0"]  # the only bid was its own
    (ran,) = [x for x in d_elsewhere.executions if x.state is ExecutionState.COMPLETED]
    assert ran.node_id != "n0"
    # offered here twice (taken, then declined: full), then the second job to the two other nodes
    assert hub.sent["request", "announce"] == 2 + 2, hub.sent
    assert hub.sent["gossip", "announce"] == 0, hub.sent  # three nodes: direct offers, no gossip
    assert requester.counters["offered_here"] == 1


async def test_a_node_that_comes_back_hears_of_waiting_jobs_at_once(tmp_path, autojump_clock):
    """A restarted node has an empty backlog: the requester re-announces the jobs waiting for it
    when its node info shows a new boot, not at the jobs' next backoff step (15 s here)."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        b_alive = AsyncExitStack()
        await b_alive.enter_async_context(memory_node(hub, "b", tmp_path / "b", requester=False))
        await trio.sleep(1.5)  # node info gossip
        await b_alive.aclose()  # b crashes
        hub.transports.pop("b")
        job, _ = await req.requester.submit(spec(deal={"concurrency": 2}), "alice")  # needs a and b
        await trio.sleep(7.5)  # announced at 0, 1, 3 and 7 s: the next step is at 15 s
        assert (await req.requester.describe(job.id)).job.state is not JobState.COMPLETED
        back = trio.current_time()
        await stack.enter_async_context(memory_node(hub, "b", tmp_path / "b", requester=False))
        d = await wait_terminal(req.requester, job.id, timeout=20)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert trio.current_time() - back < 3.0


async def test_a_node_never_holds_two_of_a_jobs_slots(tmp_path, autojump_clock):
    """concurrency=N means N different nodes: a node that restarted (forgetting it already ran
    the job) and bids again is refused while its earlier execution still counts."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a_alive = AsyncExitStack()
        await a_alive.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(deal={"concurrency": 2}), "alice")
        with trio.fail_after(5):  # a's execution completed: one of the two slots is held
            while not any(x.state is ExecutionState.COMPLETED
                          for x in (await req.requester.describe(job.id)).executions):
                await trio.sleep(0.05)
        await a_alive.aclose()  # a restarts: its memory of bidding on this job is gone
        hub.transports.pop("a")
        await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        await trio.sleep(2.0)  # a's node info shows a new boot: the waiting job is announced to it again
        d = await req.requester.describe(job.id)
        assert d.job.state is not JobState.COMPLETED, [(x.node_id, x.state) for x in d.executions]
        await stack.enter_async_context(memory_node(hub, "b", tmp_path / "b", requester=False))
        d = await wait_terminal(req.requester, job.id, timeout=20)
    assert d.job.state is JobState.COMPLETED, d.job.reason
    assert sorted(x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED) == ["a", "b"]


async def test_a_listing_shows_a_jobs_stored_row_when_it_is_newer_than_the_live_state(tmp_path, autojump_clock):
    """A decision's write lands before the live state follows it: a listing of running jobs read a running row,
    then showed the older live copy, pending."""
    hub = MemoryHub()
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(), "alice")
        live = req.requester.live_job(job.id)
        assert live is not None and live.state is JobState.PENDING
        assert req.requester.live_job(job.id, stored=job) is not None  # as new as the live one: the live one
        written = job.transition(JobState.RUNNING, "running", trio.current_time())
        assert written.revision > job.revision and req.requester.live_job(job.id, stored=written) is None


async def test_a_restarted_requester_spreads_the_offers_of_its_live_jobs(tmp_path, autojump_clock):
    """9,000 live jobs offered in the first tick after a restart tripped every peer's rate limit (1,000 a second)."""
    from requester.service import RESTORED_OFFERS_PER_SECOND

    hub = MemoryHub()
    waiting = 1200
    async with memory_node(hub, "a", tmp_path / "a", requester=False, total=Resources(cpu=1, memory="1GiB")) as a:
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1.5)
            a.noop.hooks.delay = 3600
            await req.requester.submit(spec(resources={"cpu": 1}, cache=False, env={"B": "1"}), "alice")
            await trio.sleep(0.5)  # a is full: the rest wait
            for i in range(waiting):
                await req.requester.submit(spec(cache=False, env={"I": str(i)}), "alice")
        hub.transports.pop("req")
        async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
            await trio.sleep(1)
            offered = req.requester.counters["announcements"]
            assert 0 < offered <= RESTORED_OFFERS_PER_SECOND * 1.25
            await trio.sleep(waiting / RESTORED_OFFERS_PER_SECOND + 1)
            assert req.requester.counters["announcements"] >= waiting  # each of them, soon after


async def test_a_requester_with_hundreds_of_jobs_waiting_ticks_and_repeats_them_sparingly(
        tmp_path, autojump_clock, monkeypatch):
    """A waiting job is ticked when a deadline or an announcement is due, and every job on a pass each
    FULL_PASS; repeats stretch so that together they keep to REPEATS_PER_SECOND. Each waiting job ticked four
    times a second and repeated every 30 s took most of a requester's CPU at 9,000 jobs."""
    from requester import machine as job_machine
    from requester import service as requester_service

    monkeypatch.setattr(job_machine, "REPEATS_PER_SECOND", 5.0)  # 300 waiting: each repeated every 60 s
    ticks = 0
    tick = job_machine.JobMachine.tick

    def counted(self, *args, **kwargs):
        nonlocal ticks
        ticks += 1
        return tick(self, *args, **kwargs)

    monkeypatch.setattr(job_machine.JobMachine, "tick", counted)
    hub = MemoryHub()
    async with memory_node(hub, "n0", tmp_path / "n0", total=Resources(cpu=1, memory="1GiB", disk=0)) as n:
        n.noop.hooks.delay = 10_000.0  # the first job holds the node's only slot
        for _ in range(301):
            await n.requester.submit(spec(resources={"cpu": 1}, cache=False, timeout=7200, deadlines={"bid": 86_400}),
                                     "alice")
        await trio.sleep(400)  # the announcements' backoff reaches its ceiling
        ticks, before = 0, n.requester.counters["announcements"]
        await trio.sleep(600)
        assert n.requester.waiting() == 300
        repeats = n.requester.counters["announcements"] - before
        assert repeats <= 600 * 5.0 * 1.1, repeats  # at 30 s each: 6,000
        passes = 600 / requester_service.FULL_PASS
        assert ticks <= 300 * passes * 1.2, ticks  # four a second each: 720,000
