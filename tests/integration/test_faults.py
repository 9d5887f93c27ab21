"""Faults on a real devstack: nodes killed, restarted and frozen while jobs run."""

from __future__ import annotations

import signal

import pytest
import trio

from devstack import Devstack
from devstack.bench import run as bench
from jobs import EventKind, ExecutionState, JobState
from shoal import AsyncClient
from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow


@pytest.fixture
def shoal_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def test_chaos_every_job_ends_once(shoal_home):
    """Nodes are killed -9 and restarted during the run: no job is lost, stuck or completed twice."""
    spec = {"engine": {"name": "noop", "delay": 0.2}, "deadlines": {"silence": 3.0}}
    async with Devstack(3, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(3)) as stack:
        report = await bench([n.api for n in stack.nodes], jobs=300, submitters=6, concurrency=1, nodes=3,
                             spec=spec, chaos=stack, chaos_interval=2.0, job_timeout=90)
        assert all(n.process.returncode is None for n in stack.nodes), "the run ended with a node left dead"
    assert report.chaos_kills >= 2, report.summary()
    assert report.errors == 0, report.summary()  # every submitted job was seen to a terminal state
    assert report.completed + report.failed == 300
    assert all(reason for reason in report.failure_reasons), report.summary()
    assert report.completed >= 285, report.summary()


async def test_frozen_compute_node_work_is_reoffered_within_the_silence_deadline(shoal_home):
    silence = 3.0
    spec = {"engine": {"name": "noop", "delay": 4.0}, "deadlines": {"silence": silence}}
    async with (Devstack(3, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(3),
                         node_args={0: ["--no-compute"]}) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        job_id = (await client.submit(spec)).job.id
        running: list = []
        with trio.fail_after(10):
            while not running:
                d = await client.describe(job_id)
                running = [x for x in d.executions if x.state is ExecutionState.ACCEPTED]
                await trio.sleep(0.05)
        (first,) = running
        victim = next(n for n in stack.nodes if n.peer_id == first.node_id)
        stack.kill(victim.index, signal.SIGSTOP)
        stopped_at = trio.current_time()
        try:
            final = await client.wait(job_id, timeout=40)
        finally:
            stack.kill(victim.index, signal.SIGCONT)
        events = [e async for e in client.events(job_id)]
    assert final.job.state is JobState.COMPLETED, final.job.reason
    by_node = {x.node_id: x for x in final.executions}
    assert by_node[first.node_id].state is ExecutionState.FAILED
    assert "silent" in by_node[first.node_id].reason
    assert next(x for x in final.executions if x.state is ExecutionState.COMPLETED).node_id != first.node_id
    reoffered = next(e for e in events if e.kind is EventKind.REOFFERED)
    accepted = next(e for e in events if e.kind is EventKind.BID_ACCEPTED)
    # detected within silence + one liveness round (2 s) + slack for a loaded CI machine
    assert reoffered.at - accepted.at < silence + 2.0 + 3.0, (reoffered.at - accepted.at)
    assert trio.current_time() - stopped_at < 40
