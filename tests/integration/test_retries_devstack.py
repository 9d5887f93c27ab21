"""#19 queueing and retries on a real 2-node devstack, driven as a user would: ``shoal run … --retries N``
(a job and each index of a sweep run again, with backoff, after a non-zero exit, unless they are deterministic
and would exit the same way) and the reason a job gives
while it waits its turn for busy nodes ("queued: 1 job ahead, 0 of 2 nodes free")."""

from __future__ import annotations

import itertools
import json
import subprocess
import time
from collections.abc import Iterator

import pytest

from shoal import Client, ClientKey
from tests.integration.rogue import free_base_port
from tests.integration.test_cli_devstack import (
    SHOAL,
    Stack,
    _assert_no_traceback,
    cli_devstack,
    wait_until_every_node_knows_all,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with cli_devstack(tmp_path_factory.mktemp("retries-home"), nodes=2, base_port=free_base_port(2)) as devstack:
        wait_until_every_node_knows_all(devstack, apis=1)
        yield devstack


def shoal(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "SHOAL_API": stack.nodes[0]["api"]}
    result = subprocess.run([SHOAL, *args], capture_output=True, text=True, env=env, timeout=180, cwd=stack.home)
    _assert_no_traceback(result.stdout, result.stderr)
    return result


# python in a container: its clocks and entropy are real, so a run may exit another way than the last one did
IN_A_CONTAINER = ("--image", "shoal/python:3")


def test_a_job_that_exits_nonzero_runs_again_with_backoff_until_its_retries_are_spent(stack: Stack) -> None:
    result = shoal(stack, "run", "python", *IN_A_CONTAINER, "-c", "raise SystemExit(3)", "--retries", "2",
                   "--no-cache", "--json")
    assert result.returncode != 0
    desc = json.loads(result.stdout)
    job = desc["job"]
    assert job["state"] == "failed" and job["reason"].startswith("exit code 3 on node"), job["reason"]
    assert job["retried"] == 2 and job["spec"]["retries"] == 2
    # the three runs (a node error before one of them would be re-offered, not count as a retry)
    runs = sorted((x for x in desc["executions"] if x["result"]), key=lambda x: x["created_at"])
    assert [x["result"]["exit_code"] for x in runs] == [3, 3, 3]
    assert runs[0]["attempt"] < runs[1]["attempt"] < runs[2]["attempt"]
    gaps = [later["created_at"] - earlier["updated_at"] for earlier, later in itertools.pairwise(runs)]
    assert gaps[0] >= 1.0 and gaps[1] >= 2.0, gaps  # the backoff: 1 s, then 2 s
    with Client(stack.nodes[0]["api"], key=ClientKey.load(stack.home / "client.key")) as client:
        retried = [e.message for e in client.events(job["id"]) if e.kind == "Retried"]
    assert retried == ["retry 1 of 2 in 1 s: exit code 3 on node " + runs[0]["node_id"][-8:],
                       "retry 2 of 2 in 2 s: exit code 3 on node " + runs[1]["node_id"][-8:]]
    described = shoal(stack, "describe", job["id"]).stdout
    assert "Retries" in described and "2 of 2 used" in described


def test_each_index_of_a_sweep_is_retried_on_its_own(stack: Stack) -> None:
    program = "import os; raise SystemExit(3 if os.environ['i'] == '1' else 0)"
    result = shoal(stack, "run", "python", *IN_A_CONTAINER, "-c", program, "--param", "i=0,1,2", "--retries", "1",
                   "--no-cache")
    assert result.returncode != 0
    sweep_id = next(w for w in result.stderr.split() if w.startswith("s-"))
    records = json.loads(shoal(stack, "sweep", "indexes", sweep_id, "--json").stdout)["indexes"]
    assert [(r["state"], r["retries"]) for r in records] == [("completed", 0), ("failed", 1), ("completed", 0)]
    assert records[1]["reason"] == "exit code 3" and records[1]["result"]["exit_code"] == 3
    sweep = json.loads(shoal(stack, "describe", sweep_id, "--json").stdout)["sweep"]
    assert sweep["state"] == "failed" and sweep["reason"] == "1 of 3 indexes failed"


def test_a_deterministic_job_or_index_that_exits_nonzero_is_not_run_again_for_nothing(stack: Stack) -> None:
    """Pyodide seeds a run from its spec: each retry printed and exited as the first run had, and a sweep
    with --retries 2 took three times the compute to fail the same indexes with the same draws."""
    result = shoal(stack, "run", "python", "-c", "import random; print(random.random()); raise SystemExit(3)",
                   "--retries", "2", "--no-cache", "--json")
    desc = json.loads(result.stdout)
    assert desc["job"]["state"] == "failed" and desc["job"]["retried"] == 0
    assert desc["job"]["reason"].endswith("(not retried: a deterministic job exits the same way on every run)")
    assert len([x for x in desc["executions"] if x["result"]]) == 1
    program = "import os; raise SystemExit(3 if os.environ['i'] == '1' else 0)"
    result = shoal(stack, "run", "python", "-c", program, "--param", "i=0,1", "--retries", "2", "--no-cache")
    sweep_id = next(w for w in result.stderr.split() if w.startswith("s-"))
    records = json.loads(shoal(stack, "sweep", "indexes", sweep_id, "--json").stdout)["indexes"]
    assert [(r["state"], r["retries"], r["attempts"]) for r in records] == [("completed", 0, 1), ("failed", 0, 1)]


def test_a_job_waiting_for_busy_nodes_says_where_it_stands_in_the_queue(stack: Stack) -> None:
    key = ClientKey.load(stack.home / "client.key")
    with Client(stack.nodes[0]["api"], key=key) as client:
        per_job = min(n.max_per_job.cpu for n in client.nodes().nodes)
        busy = {"engine": {"name": "noop", "delay": 120}, "resources": {"cpu": per_job}, "cache": False}
        jobs = [client.submit(busy).job.id for _ in range(4)]  # two run, two wait
        try:
            deadline, reason = time.monotonic() + 30, ""
            while not reason.startswith("queued: 1 job ahead") and time.monotonic() < deadline:
                time.sleep(0.3)
                reason = client.describe(jobs[3]).job.reason
            assert reason == "queued: 1 job ahead, 0 of 2 nodes free", reason
            assert client.describe(jobs[2]).job.reason == "queued: 0 jobs ahead, 0 of 2 nodes free"
            assert "queued: 1 job ahead" in shoal(stack, "describe", jobs[3]).stdout
            assert client.describe(jobs[3]).job.spec.deadlines.bid == 86400  # it waits its turn, not 600 s
        finally:
            for job_id in jobs:
                client.cancel(job_id)
