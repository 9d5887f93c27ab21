"""Sweeps on a real devstack (one Kubo per node, real engines), driven through the Python SDK.

Node 0 orchestrates; every node computes. Covers sharding a directory input held by Kubo, and
the first success of a docker sweep cancelling the rest on every node.
"""

from __future__ import annotations

import os
import time

import pytest
import trio

from devstack import Devstack
from devstack.kubo import ipfs_binary
from executors.docker import DockerExecutor
from tests.integration.rogue import free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed "
                                                   "(scripts/install-kubo)")]



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("sweeps")
    os.environ["SHOAL_HOME"] = str(home / "home")
    devstack = Devstack(3, base_dir=home / "stack", base_port=free_base_port(3), kubo=True, write_state=False)
    trio.run(devstack.start)
    try:
        yield devstack
    finally:
        trio.run(devstack.stop)


@pytest.fixture
def client(stack):
    from shoal import Client

    with Client(stack.nodes[0].api) as c:
        yield c


def add_dir_to_kubo(stack: Devstack, index: int, path) -> str:
    from storage import KuboClient

    async def add() -> str:
        async with KuboClient(stack.kubo.rpc_urls[index]) as kubo:
            return await kubo.add_path(path)

    return trio.run(add)


def test_sharded_inputs_give_each_index_its_own_files_and_together_all_of_them(stack, client, tmp_path):
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    names = [f"f{i:02d}.csv" for i in range(9)] + ["sub/g.csv"]
    for name in names:
        (data / name).write_text(name)
    cid = add_dir_to_kubo(stack, 1, data)
    code = ("import os\n"
            "for d, _, fs in os.walk('/data'):\n"
            "    for f in fs: print(os.path.relpath(os.path.join(d, f), '/data'))\n")
    spec = {"job": {"engine": {"name": "python", "code": code},
                    "inputs": [{"source": f"ipfs://{cid}", "path": "/data"}]},
            "shard_inputs": 4}
    d = client.run_sweep(spec, timeout=180)
    assert d.sweep.state.value == "completed", d.sweep.reason
    assert d.sweep.count == 4
    seen = [sorted(client.index_logs(d.sweep.id, i).split()) for i in range(4)]
    assert sorted(n for shard in seen for n in shard) == sorted(names)  # all of them, none twice
    assert [len(s) for s in seen] == [2, 3, 2, 3]  # contiguous runs of the sorted names, sizes within one
    assert seen[0] == ["f00.csv", "f01.csv"]


def test_a_python_grid_sweep_gives_each_index_its_values(client):
    code = "import os; print(os.environ['x'], os.environ['y'], os.environ['SHOAL_INDEX'])"
    spec = {"job": {"engine": {"name": "python", "code": code}},
            "grid": {"x": ["1", "2"], "y": ["a", "b", "c"]}}
    d = client.run_sweep(spec, timeout=180)
    assert d.sweep.state.value == "completed", d.sweep.reason
    outs = [client.index_logs(d.sweep.id, i).strip() for i in range(6)]
    assert outs == ["1 a 0", "1 b 1", "1 c 2", "2 a 3", "2 b 4", "2 c 5"]


def test_numbers_in_a_grid_reach_the_job_as_a_sweep_file_gives_them(client):
    """The SDK refused ``{"x": [1, 2]}`` (a string was expected), though a YAML sweep file takes ``[1, 2]``."""
    code = "import os; print(os.environ['x'], os.environ['flag'])"
    d = client.run_sweep({"job": {"engine": {"name": "python", "code": code}},
                          "grid": {"x": [90, 102.5], "flag": [True]}}, timeout=180)
    assert d.sweep.state.value == "completed", d.sweep.reason
    assert [client.index_logs(d.sweep.id, i).strip() for i in range(2)] == ["90 true", "102.5 true"]


def test_a_python_scripts_arguments_take_the_index_values(client):
    d = client.run_sweep({"job": {"engine": {"name": "python", "code": "import sys; print(sys.argv[1:])",
                                             "args": ["--seed", "$seed"]}},
                          "grid": {"seed": ["11", "12"]}}, timeout=180)
    assert d.sweep.state.value == "completed", d.sweep.reason
    assert [client.index_logs(d.sweep.id, i).strip() for i in range(2)] == ["['--seed', '11']", "['--seed', '12']"]


def test_every_completed_indexs_results_download_in_one_call_each_checked(client, tmp_path):
    """A quant's 5,000 indexes each took ``download_index`` (two requests) and a loop of their own."""
    code = ("import os\nx = int(os.environ['x'])\nopen(f'/outputs/r{x}.txt', 'w').write(str(x * x))\n"
            "print(x)\nif x == 3:\n    raise SystemExit(1)")
    d = client.run_sweep({"job": {"engine": {"name": "python", "code": code},
                                  "outputs": [{"name": "out", "path": "/outputs"}]},
                          "grid": {"x": [str(i) for i in range(6)]}}, timeout=180)
    assert d.sweep.counts.get("completed") == 5, d.sweep.counts
    progressed: list[int] = []
    paths = client.download_sweep(d.sweep.id, tmp_path / "all", progress=progressed.append)
    assert paths == [tmp_path / "all" / str(i) for i in (0, 1, 2, 4, 5)]  # the failed index has none
    assert progressed == [1, 2, 3, 4, 5]  # what shoal get shows while it downloads
    for i in (0, 1, 2, 4, 5):
        assert (tmp_path / "all" / str(i) / "outputs" / "out" / f"r{i}.txt").read_text() == str(i * i)
        assert (tmp_path / "all" / str(i) / "stdout").read_text() == f"{i}\n"


@pytest.mark.skipif(not DockerExecutor("probe").is_installed(), reason="no Docker daemon answers")
def test_the_first_success_cancels_the_running_indexes_on_every_node(stack, client, tmp_path):
    script = ('if [ "$SHOAL_INDEX" = 5 ]; then sleep 1; echo found > /outputs/hit; '
              'else sleep 60; fi')
    spec = {"job": {"engine": {"name": "docker", "image": "busybox", "entrypoint": ["sh", "-c", script]},
                    "outputs": [{"name": "hit", "path": "/outputs"}], "resources": {"cpu": 0.5}},
            "grid": {"part": [str(i) for i in range(12)]}, "success": "any", "success_output": "hit"}
    started = time.monotonic()
    d = client.run_sweep(spec, timeout=120)
    took = time.monotonic() - started
    assert d.sweep.state.value == "completed", d.sweep.reason
    assert d.sweep.winner == 5
    assert took < 40, took  # nobody waited for the 60 s sleepers
    counts = {k.value: v for k, v in d.sweep.counts.items()}
    assert counts == {"completed": 1, "cancelled": 11}
    results = client.download_index(d.sweep.id, 5, tmp_path / "r")  # verified against the signed CID
    assert (results / "outputs" / "hit" / "hit").read_text() == "found\n"
    deadline = time.monotonic() + 20
    reached: dict[str, str] = {}
    while time.monotonic() < deadline:
        reached = {e.node_id: e.message for e in client.events(d.sweep.id) if "cancel reached" in e.message}
        if len(reached) == 3:
            break
        time.sleep(0.5)
    assert len(reached) == 3, reached  # each node holding a claim was told, and answered
    import docker

    api = docker.APIClient()  # the low-level list: no inspect of containers that may vanish meanwhile

    def left() -> list:
        return api.containers(all=True, filters={"label": "shoal.job=" + d.sweep.id})

    deadline = time.monotonic() + 20
    while left() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not left()  # the sleepers were removed
