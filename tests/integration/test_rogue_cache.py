"""Issue #16's scenario: a rogue compute node's forged result must not reach another client via the cache.

Client A's deterministic job runs on the rogue, which returns a forged but consistent result,
correctly signed: with no verification asked for, nobody can tell, and A gets it. Client B (another
key) then submits the identical job: it must run on a node, never be completed from A's
unverified cache entry. A's own identical job may reuse the entry, but must not call it verified.
"""

from __future__ import annotations

import pytest

from jobs import ExecutionState, JobState
from jobs.model import RunResult
from shoal import AsyncClient, ClientKey
from tests.integration.rogue import RoguePeer, devstack, knows, poll

pytestmark = pytest.mark.slow

ENGINES = {  # engine -> (spec, the honest stdout, node 1 runs real engines)
    "noop": ({"engine": {"name": "noop"}, "env": {"ATTACK": "cache-poisoning"}}, "", False),
    "python": ({"engine": {"name": "python", "code": "print(6 * 7)"}}, "42\n", True),  # Pyodide, as in the issue
}
FORGED = RunResult(exit_code=0, stdout="41\n")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path



def claims_verified(reason: str) -> bool:
    text = reason.lower().replace("unverified", "").replace("not verified", "")
    return "verified" in text


@pytest.mark.parametrize("engine", ENGINES)
async def test_another_client_never_receives_a_forged_result_from_the_cache(home, engine):
    spec, honest_stdout, real = ENGINES[engine]
    async with (devstack(home / "stack", [["--no-compute"], []], start=1, noop=not real) as stack,
                AsyncClient(stack.nodes[0].api, key=ClientKey.generate()) as a,
                AsyncClient(stack.nodes[0].api, key=ClientKey.generate()) as b,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        requester, honest = stack.nodes[0].peer_id, stack.nodes[1]
        won = rogue.take_offers(1)
        rogue.advertise()
        await poll(lambda: knows(a, rogue.peer_id), 30, "the requester never heard the rogue's node info")

        first = (await a.submit(spec)).job.id
        [(offer, execution_id, reply)] = await poll(lambda: won, 30, "the rogue was never offered A's job")
        assert offer.job_id == first and reply.verdict == "accepted"
        await rogue.request(requester, rogue.result(first, execution_id, result=FORGED))
        d = await a.wait(first, timeout=60)
        assert d.job.state is JobState.COMPLETED, d.job.reason  # one node, no verification asked: A takes its word
        assert d.job.result is not None and d.job.result.stdout == FORGED.stdout
        assert not claims_verified(d.job.reason), d.job.reason

        await stack.start_node(honest)
        await poll(lambda: knows(a, honest.peer_id), 30, "the requester never heard of the honest node")
        if engine not in next(n.engines for n in (await a.nodes()).nodes if n.peer_id == honest.peer_id):
            pytest.skip(f"the {engine} engine is not installed here (see node 1's log)")

        d = await b.wait((await b.submit(spec)).job.id, timeout=120)
        assert d.job.state is JobState.COMPLETED, d.job.reason
        assert d.job.cached_from is None, d.job.reason
        assert d.job.result is not None and d.job.result.stdout == honest_stdout
        assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == [honest.peer_id]

        again = await a.wait((await a.submit(spec)).job.id, timeout=120)
        assert again.job.state is JobState.COMPLETED, again.job.reason
        if again.job.cached_from is not None:  # may reuse its own entry, but must say it is unverified
            assert not claims_verified(again.job.reason), again.job.reason
        assert len(won) == 1  # the rogue ran nothing but A's first job
