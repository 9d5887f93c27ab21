"""GPU accounting on a real node, driven by the CLI (noop engine: no GPU is needed to count them).

A node serving ``--limit-total-gpu 1`` advertises one GPU and runs a ``--gpu 1`` job; a job asking
for more GPUs than any node has, or any GPU where no node has one, fails at once with the reason.
(What a real GPU adds, the driver and docker's device request, cannot run here: unit-tested in
tests/unit/test_gpu.py.) About 10 s.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.integration.rogue import free_base_port
from tests.integration.single_node import REPO, noop_node


def shoal(home: Path, api: str, *args: str) -> subprocess.CompletedProcess[str]:
    path = os.pathsep.join([str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))])
    env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONPATH": path, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", "--api", api, *args], capture_output=True, text=True,
                          env=env, timeout=120)  # fmt: skip


def test_a_node_with_one_gpu_runs_a_gpu_job_and_refuses_two(tmp_path: Path) -> None:
    with noop_node(tmp_path, free_base_port(1), args=["--limit-total-gpu", "1"]) as ready:
        api = ready["api"]
        nodes = shoal(tmp_path, api, "nodes", "--json")
        assert nodes.returncode == 0, nodes.stderr
        (info,) = json.loads(nodes.stdout)["nodes"]
        assert info["total"]["gpu"] == 1 and info["max_per_job"]["gpu"] == 1
        table = shoal(tmp_path, api, "nodes").stdout.splitlines()
        assert "GPU FREE/TOTAL" in table[0] and " 1 / 1 " in table[2], table
        done = shoal(tmp_path, api, "run", "noop", "--gpu", "1", "--json")
        assert done.returncode == 0, done.stderr
        job = json.loads(done.stdout)["job"]
        assert job["state"] == "completed" and job["spec"]["resources"]["gpu"] == 1
        too_many = shoal(tmp_path, api, "run", "noop", "--gpu", "2")
        assert too_many.returncode == 1
        assert "0 of 1 nodes can offer 2 GPU per job (the most one offers: 1 GPU)" in too_many.stderr, too_many.stderr
        assert "Traceback" not in too_many.stderr
        (tmp_path / "config.toml").write_text("[run]\ngpu = 1\n")  # the config file's default for --gpu
        configured = shoal(tmp_path, api, "run", "noop", "--json")
        assert configured.returncode == 0, configured.stderr
        assert json.loads(configured.stdout)["job"]["spec"]["resources"]["gpu"] == 1


def test_a_gpu_job_fails_fast_where_no_node_has_a_gpu(tmp_path: Path) -> None:
    with noop_node(tmp_path, free_base_port(1), args=["--limit-total-gpu", "0"]) as ready:
        assert "GPU" not in shoal(tmp_path, ready["api"], "nodes").stdout  # no column where no node has one
        result = shoal(tmp_path, ready["api"], "run", "noop", "--gpu", "1")
        assert result.returncode == 1
        assert ("the job asks for 1 GPU and no compute node offering engine 'noop' has one (0 of 1 nodes)"
                in result.stderr), result.stderr
        bad = shoal(tmp_path, ready["api"], "run", "noop", "--gpu", "-1")
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--gpu" in bad.stderr, bad.stderr
