"""A peer with a valid identity sends a node every request the protocol has, well formed and signed,
naming the jobs, executions and claims the node holds (knowledge an insider could have), in random
order and with hostile values. What it gets is nothing: the node keeps running, the honest work
completes with the honest results, and every reservation comes back."""

from __future__ import annotations

import base64
import random
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress

import trio

from jobs import JobSpec, JobState, PeerError
from jobs.messages import Announce, Bid, Cancel, Claim, Decision, IndexResult, OpenQuery, Output, Result, StatusQuery
from jobs.model import RunResult
from node.dispatch import Dispatcher
from tests.memnet import MemoryHub, raw_peer
from tests.protocol.test_sweeps import finished, nodes, sweep

MESSAGES = 1000


async def test_a_thousand_hostile_requests_leave_the_honest_work_and_the_nodes_whole(tmp_path, autojump_clock):
    rng = random.Random(7)
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        for n in ns:
            n.noop.hooks.delay = 20  # the honest work is live while the rogue talks
        full = [n.compute.capacity.free for n in ns]
        job_ids = [(await ns[0].requester.submit(JobSpec.model_validate(
            {"engine": {"name": "noop"}, "deal": {"concurrency": c}, "cache": False}), "alice"))[0].id for c in (1, 2)]
        s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(30)]}), "alice")
        await trio.sleep(2)

        rogue = raw_peer(hub, "rogue", Dispatcher())  # it takes nothing: bids and reports to it get no verdict

        def known() -> dict[str, list]:
            """What the nodes hold now: (job, execution) pairs, claims; and ids of nothing."""
            out: dict[str, list] = {"pair": [(job_ids[0], "e-none")], "claim": ["c-none"]}
            for n in ns:
                out["pair"] += [(x.job_id, x.id) for x in n.compute.machine.live.values()]
                out["pair"] += [(x.job_id, x.id) for aj in n.requester._live.values()
                                for x in aj.state.executions.values()]
                out["claim"] += [c.claim_id for c in n.compute.machine.claims.values()]
                out["claim"] += [c for live in n.sweeps._live.values() for c in live.machine.claims]
            out["job"] = [*job_ids, s.id, "j-none", *(job for job, _ in out["pair"])]
            out["ex"] = [ex for _, ex in out["pair"]]
            return out

        def signed(message):
            signature = base64.urlsafe_b64encode(rogue.sign(message.statement())).decode()
            return message.model_copy(update={"signature": signature})

        for i in range(MESSAGES):
            with suppress(PeerError):
                await rogue.request(rng.choice(["n0", "n1"]), hostile(rng, i, known(), s.id, signed), timeout=5)

        for n in ns:
            n.noop.hooks.delay = 0
        for job_id in job_ids:
            await ns[0].requester.wait(job_id, 300)
            d = await ns[0].requester.describe(job_id)
            assert d.job.state is JobState.COMPLETED and d.job.result.stdout == "", d.job.reason
            assert {x.node_id for x in d.executions if x.state == "completed"} <= {"n0", "n1"}
        d = await finished(ns[0].sweeps, s.id, timeout=300)
        assert d.sweep.counts == {JobState.COMPLETED: 30}, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id)
        assert all(r.node_id in ("n0", "n1") and r.result.stdout == "" for r in records)
        fresh, _ = await ns[1].requester.submit(JobSpec.model_validate({"engine": {"name": "noop"}}), "bob")
        await ns[1].requester.wait(fresh.id, 60)
        assert (await ns[1].requester.get(fresh.id)).state is JobState.COMPLETED
        await trio.sleep(200)  # bids to the rogue, which never answers, run out of time
        assert [n.compute.capacity.free for n in ns] == full
        assert "rogue" in ns[0].requester.reputation  # what it forged was held against it


def hostile(rng: random.Random, i: int, ids: dict[str, list], sweep_id: str, signed: Callable) -> object:
    """One request of a random kind, about what ``ids`` names or about nothing, with hostile values."""
    job, ex = rng.choice(ids["pair"]) if rng.random() < 0.8 else (rng.choice(ids["job"]), rng.choice(ids["ex"]))
    claim = rng.choice(ids["claim"])
    result = rng.choice([None, RunResult(), RunResult(exit_code=rng.choice([1, -9]), stdout="forged" * 100)])
    digest = result.digest() if result is not None and rng.random() < 0.5 else "sha256:00"
    kind = rng.randrange(9)
    if kind == 0:
        return Bid(job_id=job, execution_id=rng.choice([ex, f"e-rogue-{i}"]), attempt=rng.choice([0, 1, 2**40]))
    if kind == 1:
        return signed(Result(job_id=job, execution_id=ex, result=result, digest=digest,
                             error=rng.choice([None, "it cannot run"]), retryable=rng.random() < 0.5))
    if kind == 2:
        return Decision(job_id=job, execution_id=ex, accepted=rng.random() < 0.5, secret_env={"K": "v"})
    if kind == 3:
        return Cancel(job_id=rng.choice([job, sweep_id]), execution_id=rng.choice([ex, claim]))
    if kind == 4:
        return StatusQuery(execution_ids=[rng.choice(ids["ex"]) for _ in range(rng.choice([1, 10_000]))])
    if kind == 5:
        return OpenQuery(job_ids=[rng.choice(ids["job"]) for _ in range(rng.choice([1, 10_000]))])
    if kind == 6:
        return Output(job_id=job, execution_id=ex, stream="stdout", offset=rng.choice([0, 1 << 40]),
                      data=b"y" * rng.choice([1, 60_000]))
    if kind == 7:
        return signed(Claim(sweep_id=rng.choice([sweep_id, "s-none"]), claim_id=rng.choice([claim, f"c-rogue-{i % 5}"]),
                            want=rng.choice([0, 100_000]), released=[rng.choice([0, 29, 10**12])],
                            results=[IndexResult(index=rng.choice([0, 29, 10**9]), result=result)]))
    return Announce(job_id=rng.choice([job, f"j-rogue-{i}"]), spec=JobSpec(engine={"name": "noop"}), requester="rogue",
                    attempt=rng.choice([0, 2**62]), candidates=rng.choice([[], ["n0"]]))
