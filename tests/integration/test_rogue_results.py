"""A rogue compute node wins a job, then lies in its result: with fields it did not sign, or with an error.

The requester must refuse what it cannot trust and count it against the rogue; the job is
re-offered and completes with the honest node's result. Real ``shoal serve`` processes: node 0
is a pure requester (``--no-compute``), node 1 an honest noop compute node that joins once the
rogue holds the job (so the rogue wins it deterministically) and before the rogue answers (so
the requester knows another node able to run it).
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import trio

from jobs import ExecutionState, JobState
from jobs.model import RunResult
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, devstack, knows, poll

pytestmark = pytest.mark.slow

HONEST = RunResult()  # what a noop node reports: exit code 0, no output
FORGED = RunResult(exit_code=0, stdout="forged by the rogue\n")


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path



async def rogue_wins_job(stack, client: AsyncClient, rogue: RoguePeer, spec: dict) -> tuple[str, str]:
    """The rogue advertises room, is offered the job, bids and is accepted; then the honest node
    joins and the requester learns of it. Returns (job id, the rogue's execution id)."""
    won = rogue.take_offers(1)
    rogue.advertise()
    await poll(lambda: knows(client, rogue.peer_id), 30, "the requester never heard the rogue's node info")
    job_id = (await client.submit(spec)).job.id
    [(offer, execution_id, reply)] = await poll(lambda: won, 30, "the rogue was never offered the job")
    assert offer.job_id == job_id and reply.verdict == "accepted", reply
    await stack.start_node(stack.nodes[1])
    await poll(lambda: knows(client, stack.nodes[1].peer_id), 30, "the requester never heard of the honest node")
    return job_id, execution_id


async def assert_honest_outcome(client: AsyncClient, job_id: str, rogue: str, honest: str, *,
                                counted: bool = True) -> None:
    """The honest node's result, and the rogue's lie ``counted`` against it. An error the honest node's
    result contradicts is not: one node's word against another's (the requester ran neither), which let a
    liar get honest nodes quarantined (tests/protocol/test_framing.py)."""
    d = await client.wait(job_id, timeout=90)
    assert d.job.state is JobState.COMPLETED, d.job.reason
    assert d.job.result is not None
    assert (d.job.result.exit_code, d.job.result.stdout) == (0, "")  # the honest noop result
    assert [x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED] == [honest]
    by_rogue = [x for x in d.executions if x.node_id == rogue]
    assert by_rogue and all(x.state in (ExecutionState.FAILED, ExecutionState.REJECTED) for x in by_rogue), \
        [(x.state, x.reason) for x in by_rogue]
    reputation = (await client.nodes()).reputation
    assert (rogue in reputation and reputation[rogue].rejected >= 1) is counted, reputation
    assert honest not in reputation or reputation[honest].rejected == 0


async def test_a_result_whose_fields_differ_from_its_signed_digest_is_refused(home):
    async with (devstack(home / "stack", [["--no-compute"], []], start=1) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        job_id, execution_id = await rogue_wins_job(
            stack, client, rogue, {"engine": {"name": "noop"}, "env": {"ATTACK": "forged-fields"}, "cache": False})
        # signed over the honest digest, carrying other stdout
        reply = await rogue.request(stack.nodes[0].peer_id,
                                    rogue.result(job_id, execution_id, result=FORGED, claimed=HONEST.digest()))
        await assert_honest_outcome(client, job_id, rogue.peer_id, stack.nodes[1].peer_id)
        assert reply.verdict != "accepted", reply


async def test_a_non_retryable_error_from_one_node_is_reoffered_not_fatal(home):
    async with (devstack(home / "stack", [["--no-compute"], []], start=1) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        job_id, execution_id = await rogue_wins_job(
            stack, client, rogue, {"engine": {"name": "noop"}, "env": {"ATTACK": "error"}, "cache": False})
        await rogue.request(stack.nodes[0].peer_id, rogue.result(
            job_id, execution_id, error="the rogue says: this job can never run anywhere", retryable=False))
        await assert_honest_outcome(client, job_id, rogue.peer_id, stack.nodes[1].peer_id, counted=False)


async def test_an_error_text_made_to_attack_the_users_terminal_is_shown_as_text(home):
    """A rogue's error carries an escape sequence (clear the screen, set the window title), a C1
    control, a bidi override and rich markup: ``shoal describe`` and ``shoal events`` show them
    written out, and send none of them to the terminal."""
    attack = "\x1b[2J\x1b]0;pwned\x07 [/x] [bold]loud[/bold] \u202eevil \x9b31m"
    async with (devstack(home / "stack", [["--no-compute"], []], start=1) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        job_id, execution_id = await rogue_wins_job(
            stack, client, rogue, {"engine": {"name": "noop"}, "env": {"ATTACK": "terminal"}, "cache": False})
        await rogue.request(stack.nodes[0].peer_id, rogue.result(job_id, execution_id, error=attack))
        await assert_honest_outcome(client, job_id, rogue.peer_id, stack.nodes[1].peer_id, counted=False)
        env = {**os.environ, "SHOAL_API": stack.nodes[0].api}
        for command in (["describe", job_id], ["events", job_id]):
            argv = [sys.executable, "-m", "cli.main", *command]
            shown = await trio.to_thread.run_sync(
                lambda argv=argv: subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60))
            assert shown.returncode == 0, shown.stderr
            assert not any(c in shown.stdout for c in "\x1b\x07\x9b\u202e"), repr(shown.stdout)
            assert "[/x] [bold]loud[/bold]" in shown.stdout and "\\x1b[2J" in shown.stdout, shown.stdout
