"""Sweeps through the ``shoal`` command, run as subprocesses against one real 2-node devstack.

Like ``test_cli_devstack``: the stack is started by ``shoal devstack`` itself (no Kubo: each node
keeps its results), found by the other commands through its state file, stopped with SIGINT
and must stop cleanly. Python indexes run on the nodes' real Pyodide executor.
"""

from __future__ import annotations

import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import Client, ClientKey
from tests.integration.rogue import free_base_port
from tests.integration.test_cli_devstack import SHOAL, Stack, _assert_no_traceback, cli_devstack

pytestmark = pytest.mark.slow

BASE_PORT = free_base_port(2)  # free APIs and libp2p ports: others may run devstacks at the same time
SWEEP_ID = re.compile(r"\bs-[0-9a-f]{32}\b")
ENDED: dict[str, str] = {}  # sweeps ended early by the tests below (a win, a cancel) → their ids
FAIL_ON_2 = "import os, sys; print('x is', os.environ['x']); sys.exit(1 if os.environ['x'] == '2' else 0)"


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with cli_devstack(tmp_path_factory.mktemp("sweeps-cli-home"), nodes=2, base_port=BASE_PORT) as devstack:
        yield devstack


def shoal(stack: Stack, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([SHOAL, *args], capture_output=True, text=True, env=stack.env, timeout=timeout,
                            cwd=stack.home)  # fmt: skip
    _assert_no_traceback(result.stdout, result.stderr)
    return result


def sweep_id_of(result: subprocess.CompletedProcess[str]) -> str:
    match = SWEEP_ID.search(result.stderr) or SWEEP_ID.search(result.stdout)
    assert match, (result.stdout, result.stderr)
    return match.group(0)


def describe(stack: Stack, sweep_id: str) -> dict:
    result = shoal(stack, "describe", sweep_id, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def indexes(stack: Stack, sweep_id: str, *args: str) -> dict:
    result = shoal(stack, "sweep", "indexes", sweep_id, "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_a_noop_grid_completes_with_every_combination(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--param", "x=1,2,3", "--param", "y=a,b")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    sweep_id = sweep_id_of(result)
    assert f"Sweep {sweep_id} submitted: 6 indexes" in result.stderr
    assert f"Sweep {sweep_id} completed: 6/6 completed" in result.stderr
    assert "  0-5 completed" in result.stderr.splitlines()
    data = describe(stack, sweep_id)
    assert data["sweep"]["count"] == 6 and data["sweep"]["counts"] == {"completed": 6}
    assert data["sweep"]["spec"]["grid"] == {"x": ["1", "2", "3"], "y": ["a", "b"]}
    records = indexes(stack, sweep_id)
    assert records["total"] == 6 and [r["index"] for r in records["indexes"]] == list(range(6))
    assert all(r["state"] == "completed" and r["attempts"] == 1 for r in records["indexes"])
    # each with its parameters, for a table of results without rebuilding the grid's order
    assert [r["params"] for r in records["indexes"]][:3] == [{"x": "1", "y": "a"}, {"x": "1", "y": "b"},
                                                             {"x": "2", "y": "a"}]
    table = shoal(stack, "sweep", "indexes", sweep_id).stdout
    assert "x=3 y=b" in table and "x=1 y=a" in table
    text = shoal(stack, "describe", sweep_id).stdout
    assert "grid x(3) y(2)" in text and "Ranges" in text
    listed = shoal(stack, "sweep", "list")
    assert listed.returncode == 0 and sweep_id[:12] in listed.stdout
    jobs = shoal(stack, "list")  # a sweep is not a job, but the list of jobs says where to find it
    assert jobs.returncode == 0 and "sweep" in jobs.stderr and "shoal sweep list" in jobs.stderr
    assert shoal(stack, "list", "--json").stderr == ""  # machines get the jobs' JSON alone


def test_a_python_sweep_gives_each_index_its_value(stack: Stack, tmp_path: Path) -> None:
    code = "import os; print(os.environ['x'], os.environ['SHOAL_INDEX'], os.environ['SHOAL_COUNT'])"
    result = shoal(stack, "run", "python", "-c", code, "--param", "x=1..3")  # a range: 1, 2 and 3
    assert result.returncode == 0, result.stderr
    sweep_id = sweep_id_of(result)
    outs = [shoal(stack, "sweep", "logs", sweep_id, str(i)).stdout for i in range(3)]
    assert outs == ["1 0 3\n", "2 1 3\n", "3 2 3\n"]
    rows = [line.split() for line in shoal(stack, "sweep", "indexes", sweep_id).stdout.splitlines()[2:]]
    assert [(row[0], row[5], row[6:9]) for row in rows] == [  # INDEX, PARAMETERS, OUTPUT: each its answer
        ("0", "x=1", ["1", "0", "3"]), ("1", "x=2", ["2", "1", "3"]), ("2", "x=3", ["3", "2", "3"])]
    assert shoal(stack, "sweep", "logs", sweep_id[:10], "1", "--stderr").stdout == ""
    # Without Kubo each node keeps the results it made: fetch one the node we ask ran itself.
    ran_here = [r["index"] for r in indexes(stack, sweep_id)["indexes"] if r["node_id"] == stack.nodes[0]["peer_id"]]
    elsewhere = sorted({0, 1, 2} - set(ran_here))
    if ran_here:
        i = ran_here[0]
        got = shoal(stack, "sweep", "get", sweep_id, str(i), str(tmp_path / "r"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "r" / "stdout").read_text() == f"{i + 1} {i} 3\n"  # checked against the result's CID
        assert (tmp_path / "r" / "exitCode").read_text().strip() == "0"
    if elsewhere:
        got = shoal(stack, "sweep", "get", sweep_id, str(elsewhere[0]), str(tmp_path / "x"))
        assert got.returncode == 4 and "not available from this node" in got.stderr
    lines = shoal(stack, "events", sweep_id, "--json").stdout.splitlines()
    kinds = [json.loads(line)["kind"] for line in lines]
    assert kinds[0] == "Created" and kinds[-1] == "Completed" and "Claimed" in kinds


def test_with_confidence_both_nodes_run_each_python_index_and_their_results_agree(stack: Stack) -> None:
    # a seeded draw too: the python engine is deterministic, so two honest nodes give the same answer
    code = "import os, random; print(int(os.environ['x']) ** 2, random.randrange(10**9))"
    result = shoal(stack, "run", "python", "-c", code, "--param", "x=1,2,3,4", "--confidence", "2")
    assert result.returncode == 0, result.stderr
    sweep_id = sweep_id_of(result)
    assert f"Sweep {sweep_id} completed: 4/4 completed" in result.stderr
    records = indexes(stack, sweep_id)["indexes"]
    assert all(r["state"] == "completed" and r["reason"] == "completed, verified by 2 of 2 nodes" for r in records)
    assert all(r["attempts"] == 2 for r in records)  # once on each node, never twice on one
    squares = [shoal(stack, "sweep", "logs", sweep_id, str(i)).stdout.split()[0] for i in range(4)]
    assert squares == ["1", "4", "9", "16"]
    assert "each index's result by 2 nodes that agree" in shoal(stack, "describe", sweep_id).stdout


def test_json_output_and_reattaching_with_an_idempotency_key(stack: Stack) -> None:
    args = ("run", "noop", "--param", "n=1,2,3,4", "--idempotency-key", "sweep-cli-key-1")
    first = shoal(stack, *args, "--json")
    assert first.returncode == 0, first.stderr
    data = json.loads(first.stdout)
    assert data["sweep"]["state"] == "completed" and data["sweep"]["count"] == 4
    assert data["ranges"] == [{"first": 0, "last": 3, "state": "completed", "reason": ""}]
    again = shoal(stack, *args, "--id-only")
    assert (again.returncode, again.stdout.strip()) == (0, data["sweep"]["id"])  # the same sweep, followed
    other = shoal(stack, "run", "noop", "--param", "n=9", "--idempotency-key", "sweep-cli-key-1")
    assert other.returncode == 1 and "sweep-cli-key-1" in other.stderr and "another sweep" in other.stderr


def test_retry_runs_the_failed_indexes_again(stack: Stack) -> None:
    result = shoal(stack, "run", "python", "-c", FAIL_ON_2, "--param", "x=1,2,3")
    assert result.returncode == 1, result.stderr
    sweep_id = sweep_id_of(result)
    err = result.stderr.splitlines()
    assert [line for line in err if line[:2] == "  "] == ["  0 completed", "  1 failed: exit code 1", "  2 completed"]
    assert err[-1] == f"Error: sweep {sweep_id} failed: 1 of 3 indexes failed"
    (failed,) = indexes(stack, sweep_id, "--state", "failed")["indexes"]
    assert failed["index"] == 1 and failed["result"]["exit_code"] == 1
    before = describe(stack, sweep_id)["sweep"]

    retried = shoal(stack, "sweep", "retry", sweep_id)
    assert retried.returncode == 1, retried.stderr  # x == '2' fails again
    assert retried.stderr.startswith(f"Sweep {sweep_id}: 1 failed indexes put back to run")
    after = describe(stack, sweep_id)["sweep"]
    assert after["state"] == "failed" and after["counts"] == {"completed": 2, "failed": 1}
    assert after["revision"] > before["revision"] and after["updated_at"] > before["updated_at"]
    (again,) = indexes(stack, sweep_id, "--state", "failed")["indexes"]
    assert again["index"] == 1 and again["attempts"] >= 1
    assert again["result"]["started_at"] > failed["result"]["finished_at"]  # it really ran a second time
    completed = indexes(stack, sweep_id, "--state", "completed")
    assert [r["index"] for r in completed["indexes"]] == [0, 2] and completed["total"] == 2
    kinds = [json.loads(line)["kind"] for line in shoal(stack, "events", sweep_id, "--json").stdout.splitlines()]
    assert kinds.count("Retried") == 1 and kinds.count("Failed") == 2
    assert shoal(stack, "sweep", "logs", sweep_id, "1").stdout == "x is 2\n"


def test_the_first_success_wins_and_prints_its_stdout(stack: Stack) -> None:
    # Pyodide's clock is virtual (time.sleep returns at once): the losers spin until stopped.
    code = "import os\nif os.environ['x'] != '1':\n    while True: pass\nprint('found it at', os.environ['x'])"
    result = shoal(stack, "run", "python", "-c", code, "--param", "x=1,2,3,4", "--success", "any", "--timeout", "60")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "found it at 1\n"
    sweep_id = sweep_id_of(result)
    assert "Index 0 succeeded first (x=1); its stdout:" in result.stderr
    sweep = describe(stack, sweep_id)["sweep"]
    assert sweep["winner"] == 0 and sweep["counts"] == {"completed": 1, "cancelled": 3}
    assert "Winner     index 0 (x=1)" in shoal(stack, "describe", sweep_id).stdout
    ENDED["won"] = sweep_id


def test_cancel_a_running_sweep(stack: Stack) -> None:
    submitted = shoal(stack, "run", "python", "-c", "while True: pass", "--timeout", "60", "--param", "x=1,2,3,4",
                      "--no-wait")  # fmt: skip
    assert submitted.returncode == 0, submitted.stderr
    sweep_id = submitted.stdout.strip()
    assert SWEEP_ID.fullmatch(sweep_id)
    cancelled = shoal(stack, "cancel", sweep_id)
    assert cancelled.returncode == 0 and cancelled.stdout.strip() == f"Sweep {sweep_id} cancelled"
    data = describe(stack, sweep_id)
    assert data["sweep"]["state"] == "cancelled" and data["sweep"]["counts"] == {"cancelled": 4}
    again = shoal(stack, "cancel", sweep_id)
    assert again.stdout.strip() == f"Sweep {sweep_id} already cancelled; nothing to cancel"
    ENDED["cancelled"] = sweep_id
    followed = shoal(stack, "run", "noop", "--param", "x=1")  # the nodes are free again for the next one
    assert followed.returncode == 0, followed.stderr


def test_a_cancelled_sweep_resumes_with_retry(stack: Stack) -> None:
    busy = "import os; sum(range(2_000_000)); print(os.environ['x'])"  # a fraction of a second each: cancelled midway
    submitted = shoal(stack, "run", "python", "-c", busy, "--param", "x=" + ",".join(map(str, range(40))),
                      "--no-wait")  # fmt: skip
    sweep_id = submitted.stdout.strip()
    # from here, not a second CLI: on a loaded machine one CLI's start outlasted the whole sweep
    with Client(stack.nodes[0]["api"], key=ClientKey.load(stack.home / "client.key")) as client:
        assert client.cancel_sweep(sweep_id).sweep.state == "cancelled"
    resumed = shoal(stack, "sweep", "retry", sweep_id)
    assert resumed.returncode == 0, resumed.stderr
    assert re.match(rf"Sweep {sweep_id}: \d+ cancelled indexes put back to run", resumed.stderr), resumed.stderr
    data = describe(stack, sweep_id)
    assert data["sweep"]["state"] == "completed" and data["sweep"]["counts"] == {"completed": 40}


@pytest.mark.parametrize("which", ["won", "cancelled"])
def test_the_indexes_a_sweep_ends_early_show_as_cancelled(stack: Stack, which: str) -> None:
    sweep_id = ENDED.get(which)
    assert sweep_id is not None, "runs after the tests that end these sweeps"
    ranges = describe(stack, sweep_id)["ranges"]
    assert {r["state"] for r in ranges} <= {"completed", "cancelled"}, ranges
    assert indexes(stack, sweep_id, "--state", "cancelled")["total"] == (3 if which == "won" else 4)
