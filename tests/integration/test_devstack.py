"""End to end on a real devstack: node processes, libp2p, SQLite, the signed API and the SDK."""

from __future__ import annotations

import pytest
import trio

from devstack import Devstack
from devstack.bench import run as bench
from jobs import ExecutionState, JobState
from shoal import AsyncClient, ConnectionFailed
from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow

NOOP3 = {"engine": {"name": "noop"}, "deal": {"concurrency": 3}, "deadlines": {"silence": 3.0}, "cache": False}


@pytest.fixture
def shoal_home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def test_thousand_jobs_on_three_nodes_all_complete(shoal_home):
    async with Devstack(3, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(3)) as stack:
        report = await bench([n.api for n in stack.nodes], jobs=1000, submitters=10, concurrency=3, nodes=3)
    assert report.completed == 1000, report.summary()
    assert report.failed == 0 and report.errors == 0


async def _wait_all(client: AsyncClient, job_ids: list[str], timeout: float) -> list:
    out = []
    with trio.fail_after(timeout):
        for job_id in job_ids:
            while True:
                try:
                    out.append(await client.wait(job_id, timeout=timeout, poll=10))
                    break
                except ConnectionFailed:  # the node is restarting
                    await trio.sleep(0.5)
    return out


async def test_killed_compute_node_leaves_no_job_stuck(shoal_home):
    async with Devstack(3, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(3)) as stack:
        job_ids: list[str] = []
        async with AsyncClient(stack.nodes[0].api) as client:
            async def submit_many() -> None:
                for _ in range(150):
                    job_ids.append((await client.submit(NOOP3)).job.id)
                    await trio.sleep(0.02)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(submit_many)
                await trio.sleep(1.0)
                stack.kill(2)  # kill -9 mid-run
                await trio.sleep(2.0)
                await stack.restart(2)
            finals = await _wait_all(client, job_ids, timeout=120)
    assert len(finals) == 150
    states = {d.job.state for d in finals}
    assert states <= {JobState.COMPLETED, JobState.FAILED}
    assert all(d.job.reason for d in finals if d.job.state is JobState.FAILED)
    for d in finals:  # none completed twice: exactly `concurrency` accepted results per completed job
        if d.job.state is JobState.COMPLETED:
            assert sum(x.state is ExecutionState.COMPLETED for x in d.executions) == 3
    assert sum(d.job.state is JobState.COMPLETED for d in finals) >= 140


async def test_restarted_requester_finishes_its_jobs(shoal_home):
    async with (Devstack(3, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(3)) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        job_ids = []
        with trio.fail_after(30):
            for _ in range(100):
                job_ids.append((await client.submit(NOOP3)).job.id)
        stack.kill(0)  # the requester dies with jobs in flight
        await stack.restart(0)
        finals = await _wait_all(client, job_ids, timeout=120)
    assert [d.job.state for d in finals] == [JobState.COMPLETED] * 100, {d.job.reason for d in finals}


async def test_waits_outlive_a_restart_of_their_requester(shoal_home):
    """A requester restarting ended every wait on its jobs and sweeps with 'lost connection' (exit 3 from a
    waiting `shoal run`), though they carried on there. Waits now ask again while the node comes back."""
    async with (Devstack(2, noop=True, base_dir=shoal_home / "stack", base_port=free_base_port(2)) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        job = (await client.submit(NOOP3 | {"deal": {"concurrency": 2}})).job.id
        sweep = (await client.submit_sweep({"job": {"engine": {"name": "noop"}, "cache": False},
                                            "grid": {"x": [str(i) for i in range(20)]}})).sweep.id
        stack.kill(0)
        waits: dict[str, object] = {}

        async def wait_job() -> None:
            waits["job"] = (await client.wait(job, timeout=90, poll=5)).job.state

        async def wait_sweep() -> None:
            waits["sweep"] = (await client.wait_sweep(sweep, timeout=90, poll=5)).sweep.state

        with trio.fail_after(120):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait_job)
                nursery.start_soon(wait_sweep)
                await trio.sleep(3.0)  # both asked a node that was not there
                assert waits == {}
                await stack.restart(0)
    assert waits == {"job": JobState.COMPLETED, "sweep": JobState.COMPLETED}
