"""Node labels and job selectors on a real 3-node devstack, started as a user would start it:
``shoal devstack --node-label I:KEY=VALUE``, driven through ``shoal`` subprocesses and the signed API."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import httpx
import pytest

from shoal import Client, ClientKey, ShoalAuth
from tests.integration.rogue import free_base_port
from tests.integration.test_cli_devstack import (
    SHOAL,
    Stack,
    _assert_no_traceback,
    cli_devstack,
    wait_until_every_node_knows_all,
)

pytestmark = pytest.mark.slow

LABELS = ("0:zone=eu", "1:zone=eu", "1:spot=true", "2:zone=us")  # node 1 is an eu spot node


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    args = tuple(a for label in LABELS for a in ("--node-label", label))
    with cli_devstack(tmp_path_factory.mktemp("labels-home"), nodes=3, base_port=free_base_port(3),
                      args=args) as devstack:  # fmt: skip
        wait_until_every_node_knows_all(devstack)  # the three, and their labels
        yield devstack


def shoal(stack: Stack, *args: str, api: int = 0) -> subprocess.CompletedProcess[str]:
    env = {**stack.env, "SHOAL_API": stack.nodes[api]["api"]}
    result = subprocess.run([SHOAL, *args], capture_output=True, text=True, env=env, timeout=120, cwd=stack.home)
    _assert_no_traceback(result.stdout, result.stderr)
    return result


def ran_on(stack: Stack, *args: str, api: int = 0) -> set[int]:
    """Run a job with ``args``; the indexes of the nodes whose executions completed it."""
    result = shoal(stack, "run", "noop", "--no-cache", "--json", *args, api=api)
    assert result.returncode == 0, result.stderr
    desc = json.loads(result.stdout)
    assert desc["job"]["state"] == "completed", desc["job"]["reason"]
    index = {n["peer_id"]: n["index"] for n in stack.nodes}
    return {index[x["node_id"]] for x in desc["executions"] if x["state"] == "completed"}


def test_shoal_nodes_shows_each_nodes_labels(stack: Stack) -> None:
    listed = json.loads(shoal(stack, "nodes", "--json").stdout)
    labels = {n["peer_id"]: n["labels"] for n in listed["nodes"]}
    assert labels == {stack.nodes[0]["peer_id"]: {"zone": "eu"},
                      stack.nodes[1]["peer_id"]: {"zone": "eu", "spot": "true"},
                      stack.nodes[2]["peer_id"]: {"zone": "us"}}
    table = shoal(stack, "nodes").stdout
    assert "LABELS" in table and "spot=true,zone=eu" in table and "zone=us" in table
    mine = shoal(stack, "id", api=1).stdout
    assert "Labels" in mine and "spot=true,zone=eu" in mine
    assert json.loads(shoal(stack, "id", "--json", api=2).stdout)["labels"] == {"zone": "us"}


def test_a_job_with_a_selector_runs_only_on_matching_nodes(stack: Stack) -> None:
    assert ran_on(stack, "--selector", "zone=eu", "--concurrency", "2") == {0, 1}
    assert ran_on(stack, "--selector", "!spot", "--concurrency", "2") == {0, 2}
    for _ in range(3):  # submitted to the us node, whose own compute role would otherwise take it
        assert ran_on(stack, "--selector", "zone=eu,!spot", api=2) == {0}
    assert ran_on(stack, "--selector", "zone in (us),spot notin (true)", api=0) == {2}


def test_the_sdk_takes_a_selector_in_the_spec_and_shows_node_labels(stack: Stack) -> None:
    with Client(stack.nodes[0]["api"], key=ClientKey.load(stack.home / "client.key")) as client:
        done = client.run({"engine": {"name": "noop"}, "selector": "zone=us", "cache": False}, timeout=60)
        assert done.job.state == "completed" and done.job.spec.selector == "zone=us"
        assert {x.node_id for x in done.executions} == {stack.nodes[2]["peer_id"]}
        assert client.node().labels == {"zone": "eu"}
        assert {n.peer_id: n.labels for n in client.nodes().nodes}[stack.nodes[1]["peer_id"]] == {
            "zone": "eu", "spot": "true"}
    described = shoal(stack, "describe", done.job.id).stdout
    assert "Selector" in described and "zone=us" in described


def test_every_index_of_a_sweep_honours_the_selector(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--param", "x=1,2,3,4,5,6", "--selector", "!spot", "--no-cache")
    assert result.returncode == 0, result.stderr
    sweep_id = next(w for w in result.stderr.split() if w.startswith("s-"))
    records = json.loads(shoal(stack, "sweep", "indexes", sweep_id, "--json").stdout)["indexes"]
    assert len(records) == 6 and all(r["state"] == "completed" for r in records)
    assert {r["node_id"] for r in records} <= {stack.nodes[0]["peer_id"], stack.nodes[2]["peer_id"]}


def test_a_selector_no_node_matches_fails_at_once_naming_it(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--selector", "gpu in (a100)", "--no-cache", "--json")
    assert result.returncode != 0
    job = json.loads(result.stdout)["job"]
    assert job["state"] == "failed" and job["reason"].startswith("no known node matches selector 'gpu in (a100)'")
    assert job["updated_at"] - job["created_at"] < 1.0  # failed on admission, not after the 600 s bid deadline
    assert "no known node matches selector 'gpu in (a100)' (3 nodes known:" in result.stderr
    reason = result.stderr[result.stderr.index("no known node matches"):].split(")", 2)[1]
    assert sorted(reason.split("known: ")[1].split("; ")) == ["spot=true,zone=eu", "zone=eu", "zone=us"]


def test_a_malformed_selector_is_one_line_from_the_cli_and_a_422_from_the_api(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--selector", "gpu in a100")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: selector (--selector): invalid selector 'gpu in a100': expected '(' and a list of values, "
        "found 'a100' at position 7"]
    key = ClientKey.load(stack.home / "client.key")
    api = stack.nodes[0]["api"]
    with httpx.Client(timeout=10) as http:
        request = ShoalAuth(key).sign(http.build_request(
            "POST", f"{api}/v1/jobs", json={"spec": {"engine": {"name": "noop"}, "selector": "zone=eu,,"}}))
        response = http.send(request)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "expected a label key, found ',' at position 8" in error["message"]
    assert any("selector" in f for f in error["fields"])


def test_a_bad_node_label_stops_shoal_serve_with_one_line(stack: Stack) -> None:
    result = shoal(stack, "serve", "--label", "zone=eu west", "--api-port", "0")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "Error: --label: label value 'eu west': at most 63 characters: letters, digits, '-', '_' or '.', "
        "starting and ending with a letter or digit (or empty)"]
