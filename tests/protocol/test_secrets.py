"""Secret env over the in-memory network: only an accepted node ever receives it, with its acceptance;
the requester keeps it (sealed) only while the job lives; nothing announced, shown or stored shows it."""

from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path

import trio

from executors import RunRequest
from jobs import ExecutionState, JobSpec, JobState
from tests.memnet import MemoryHub, memory_node
from tests.protocol.test_pair import wait_terminal as wait_job

SECRET = "s3cr3t-value-7f1c9e"


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"engine": {"name": "noop"}, "env": {"PLAIN": "visible"},
                                   "secret_env": {"TOKEN": SECRET}, **kw})


def seen_env(node) -> list[dict[str, str]]:
    """Record the env every run on ``node`` gets, as its executor sees it."""
    runs: list[dict[str, str]] = []

    async def record(request: RunRequest) -> None:
        runs.append(dict(request.spec.env))

    node.noop.hooks.before_run = record
    return runs


async def wait_terminal(requester, job_id: str, timeout: float = 15.0):
    return await wait_job(requester, job_id, timeout)


def on_disk(data_dir: Path) -> bytes:
    """Every byte of a node's store: the database, its WAL and shared memory."""
    return b"".join(f.read_bytes() for f in sorted(data_dir.glob("shoal.db*")))


def carrying_secret(hub: MemoryHub) -> list[tuple[str, str, str, str]]:
    return [(way, src, dst, data.decode()[:80]) for way, src, dst, data in hub.frames if SECRET.encode() in data]


async def test_only_the_accepted_node_receives_the_secret_and_its_run_sees_it(tmp_path, autojump_clock):
    hub = MemoryHub()
    hub.frames = []
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        b = await stack.enter_async_context(memory_node(hub, "b", tmp_path / "b", requester=False))
        runs = {"a": seen_env(a), "b": seen_env(b)}
        await trio.sleep(1.5)  # node info gossip
        # both nodes bid (min_bids=2), one is chosen: the other bid and was rejected
        job, _ = await req.requester.submit(spec(deal={"min_bids": 2}), "alice")
        d = await wait_terminal(req.requester, job.id)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        states = {x.node_id: x.state for x in d.executions}
        assert sorted(states.values()) == sorted([ExecutionState.COMPLETED, ExecutionState.REJECTED]), states
        winner = next(n for n, s in states.items() if s is ExecutionState.COMPLETED)
        loser = "b" if winner == "a" else "a"
        assert runs[winner] == [{"PLAIN": "visible", "TOKEN": SECRET}]
        assert runs[loser] == []
        # the value crossed the network once: from the requester to the winner, in the verdict on its bid
        frames = carrying_secret(hub)
        assert len(frames) == 1, frames
        way, src, dst, _ = frames[0]
        assert (src, dst) == ("req", winner) and way in ("reply", "request")  # a bid's reply, or a Decision
        assert not any(way == "gossip" for way, *_ in frames)
        # the announcements carried the plain env, not the secret
        announced = [data for way, _, _, data in hub.frames if b'"kind":"announce"' in data]
        assert announced and all(b"visible" in data and SECRET.encode() not in data for data in announced)
        # nor does anything the requester shows
        assert SECRET not in d.model_dump_json() and "TOKEN" not in d.job.spec.secret_env
        events = await req.store.events(job.id)
        assert events and not any(SECRET in e.message for e in events)
        jobs, _ = await req.store.list_jobs(owner="alice", state=None, limit=10, offset=0)
        assert jobs and SECRET not in jobs[0].model_dump_json()
        # the compute nodes forget it with the run, and never wrote it down
        for node in (a, b):
            assert node.compute.machine.secrets == {}
            assert SECRET.encode() not in on_disk(tmp_path / node.peer_id)


async def test_the_requester_keeps_the_secret_sealed_and_only_while_the_job_lives(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        runs = seen_env(a)
        a.noop.hooks.delay = 1.0
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(), "alice")
        assert job.spec.secret_env == {}  # what submit returns (and the API shows)
        await trio.sleep(0.5)
        assert (await req.requester.describe(job.id)).job.state is JobState.RUNNING
        assert await req.store.live_secrets() == {job.id: {"TOKEN": SECRET}}
        assert SECRET.encode() not in on_disk(tmp_path / "req")  # sealed, even while the job lives
        d = await wait_terminal(req.requester, job.id)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert runs == [{"PLAIN": "visible", "TOKEN": SECRET}]
        assert await req.store.live_secrets() == {}
        assert SECRET.encode() not in on_disk(tmp_path / "req")


async def test_a_job_with_secrets_is_never_served_from_the_cache(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "n0", tmp_path / "n0") as n:
        runs = seen_env(n)
        await trio.sleep(1.5)
        for _ in range(2):  # the local fast path: the node's own compute role is offered the job
            job, _ = await n.requester.submit(spec(deal={"concurrency": 1}), "alice")
            d = await wait_terminal(n.requester, job.id)
            assert d.job.state is JobState.COMPLETED and d.job.cached_from is None, d.job.reason
        assert runs == [{"PLAIN": "visible", "TOKEN": SECRET}] * 2
        assert await n.store.live_secrets() == {}


async def test_a_restarted_requester_still_hands_the_secret_to_the_node_that_runs_the_job(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        job, _ = await req.requester.submit(spec(), "alice")  # no compute node yet: it waits
        assert (await req.store.live_secrets()) == {job.id: {"TOKEN": SECRET}}
    hub.transports.pop("req")
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        runs = seen_env(a)
        d = await wait_terminal(req.requester, job.id, timeout=20)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert runs == [{"PLAIN": "visible", "TOKEN": SECRET}]
        assert await req.store.live_secrets() == {}


async def test_a_job_whose_secrets_cannot_be_read_after_a_restart_fails_saying_why(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        job, _ = await req.requester.submit(spec(), "alice")
    hub.transports.pop("req")
    (tmp_path / "req" / "shoal.secrets.key").unlink()  # the data dir came back without its key file
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        a = await stack.enter_async_context(memory_node(hub, "a", tmp_path / "a", requester=False))
        runs = seen_env(a)
        d = await wait_terminal(req.requester, job.id)
        assert d.job.state is JobState.FAILED and "secret_env could not be read" in d.job.reason
        await trio.sleep(1.0)
        assert runs == []  # never run without them
        assert await req.store.live_secrets() == {}


async def test_each_node_that_runs_a_verified_job_gets_the_secret_once_with_its_acceptance(tmp_path, autojump_clock):
    hub = MemoryHub()
    hub.frames = []
    async with AsyncExitStack() as stack:
        req = await stack.enter_async_context(memory_node(hub, "req", tmp_path / "req", compute=False))
        nodes = [await stack.enter_async_context(memory_node(hub, n, tmp_path / n, requester=False)) for n in "ab"]
        runs = {n.peer_id: seen_env(n) for n in nodes}
        await trio.sleep(1.5)
        job, _ = await req.requester.submit(spec(deal={"concurrency": 2, "confidence": 2}), "alice")
        d = await wait_terminal(req.requester, job.id)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert runs == {n: [{"PLAIN": "visible", "TOKEN": SECRET}] for n in "ab"}
        # one message each, from the requester: the verdicts on their results carry nothing
        assert sorted((src, dst) for _, src, dst, _ in carrying_secret(hub)) == [("req", "a"), ("req", "b")]
