"""A rogue plays with bids: as a requester it holds an honest node's bid "pending" for ever; as a
compute node it floods a requester with bids. Neither may hold capacity or grow a store for good."""

from __future__ import annotations

import sqlite3
import uuid
from collections import Counter

import pytest
import trio

from jobs import ExecutionState, JobSpec, JobState, PeerError
from jobs.messages import Announce, Bid, Message, Reply
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, devstack, metrics, poll

pytestmark = pytest.mark.slow

PENDING_BID_TIMEOUT = 3  # the honest node's --pending-bid-timeout (default 120 s)
SPAM = 300
SPAM_FOR = 10.0  # seconds at most; the job under attack runs for longer


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def free_cpu(api: str) -> float:
    return (await metrics(api))['shoal_capacity_cpu{kind="free"}']


async def test_a_bid_held_pending_for_ever_gives_its_capacity_back(home):
    small = ["--limit-total-cpu", "1", "--limit-total-memory", "1GiB",
             "--pending-bid-timeout", str(PENDING_BID_TIMEOUT)]
    async with (devstack(home / "stack", [["--no-compute"], small]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([n.addrs[0] for n in stack.nodes]) as rogue):
        honest = stack.nodes[1]

        async def never_decide(peer: str, message: Message) -> Reply | None:
            return Reply(verdict="pending", reason="still choosing") if isinstance(message, Bid) else None

        rogue.script = never_decide
        # most of the node's capacity, and a min_bids deadline of a day: only the node's own limit ends it
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {"cpu": 0.75, "memory": "768MiB"},
                                       "deal": {"min_bids": 2}, "deadlines": {"min_bids": 86_400}})
        job_id = f"j-rogue-{uuid.uuid4().hex}"
        offer = Announce(job_id=job_id, spec=spec, requester=rogue.peer_id, requester_addrs=rogue.addrs(),
                         candidates=[honest.peer_id])
        reply = await rogue.request(honest.peer_id, offer)
        assert reply.verdict == "pending", reply  # the node has room: it bids
        await rogue.wait_request(lambda p, m: isinstance(m, Bid) and m.job_id == job_id and p == honest.peer_id)
        assert await free_cpu(honest.api) == pytest.approx(0.25)

        held_at = trio.current_time()
        job = {"engine": {"name": "noop"}, "resources": {"cpu": 0.5, "memory": "512MiB"}, "cache": False}
        d = await client.wait((await client.submit(job)).job.id, timeout=60)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == [honest.peer_id]
        assert trio.current_time() - held_at < PENDING_BID_TIMEOUT + 30
        await poll(lambda: _is(free_cpu(honest.api), 1.0), 10, "the node's capacity never came back whole")


async def test_bid_spam_leaves_a_counter_not_rows(home):
    async with (devstack(home / "stack", [["--no-compute"], []]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        requester, honest = stack.nodes[0], stack.nodes[1]
        # a live job that takes a while: its one slot is held by the honest node
        job_id = (await client.submit({"engine": {"name": "noop", "delay": 30}, "cache": False})).job.id
        running = await poll(lambda: _running_on(client, job_id), 30, "the honest node never started the job")
        assert running == honest.peer_id
        rejected_before = _bids_rejected(await metrics(requester.api))

        replies: list[Reply] = []
        unanswered = 0

        async def spam(n: int) -> None:
            nonlocal unanswered
            for _ in range(n):
                bid = Bid(job_id=job_id, execution_id=f"e-spam-{uuid.uuid4().hex}", attempt=0)
                try:
                    replies.append(await rogue.request(requester.peer_id, bid, timeout=2.0))
                except PeerError:  # a rate limit may cut the rogue off: that is fine too
                    unanswered += 1

        with trio.move_on_after(SPAM_FOR):  # a rate limit that slows the rogue down ends the spam early
            async with trio.open_nursery() as nursery:
                for _ in range(10):
                    nursery.start_soon(spam, SPAM // 10)
        assert len(replies) >= 10, f"only {len(replies)} bids answered ({unanswered} not): nothing was tested"
        d = await client.describe(job_id)
        assert d.job.state is JobState.RUNNING, "the job ended before the spam did: nothing was tested"
        assert not any(r.verdict == "accepted" for r in replies)

        per_node_attempt = Counter((x.node_id, x.attempt) for x in d.executions)
        assert max(per_node_attempt.values()) == 1, per_node_attempt
        assert _execution_rows(requester.data_dir / "shoal.db", job_id) <= 2
        assert _bids_rejected(await metrics(requester.api)) > rejected_before

        d = await client.wait(job_id, timeout=60)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == [honest.peer_id]


async def _running_on(client: AsyncClient, job_id: str) -> str | None:
    d = await client.describe(job_id)
    return next((x.node_id for x in d.executions if x.state is ExecutionState.ACCEPTED), None)


async def _is(value, expected: float) -> bool:
    return await value == pytest.approx(expected)


def _bids_rejected(values: dict[str, float]) -> float:
    """Every requester counter of refused bids, whatever its exact name."""
    return sum(v for k, v in values.items()
               if k.startswith("shoal_requester") and "bid" in k
               and any(word in k for word in ("reject", "refus", "drop", "ignor")))


def _execution_rows(db, job_id: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT count(*) FROM executions WHERE job_id = ?", (job_id,)).fetchone()[0]
