"""The config file against a real node: ``shoal`` takes the node and the run flags' defaults from it.

One lone noop ``shoal serve``; the CLI runs as a subprocess with ``SHOAL_HOME`` pointing at a
folder whose ``config.toml`` names that node (so no ``--api``) and sets ``[run]`` defaults. The
job's spec, read back from the node, shows what the file set, and a flag still wins over it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

SHOAL = str(Path(sys.executable).with_name("shoal"))
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    home = tmp_path_factory.mktemp("config-node")
    with noop_node(home, free_base_port(1)) as ready:
        yield ready["api"], home


def shoal(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_API", "SHOAL_CONFIG", "SHOAL_OUTPUT")}
    env.update(SHOAL_HOME=str(home), NO_COLOR="1", PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([SHOAL, *args], capture_output=True, text=True, env=env, timeout=120)


def spec_of(home: Path, job_id: str) -> dict:
    described = shoal(home, "describe", job_id, "--json")
    assert described.returncode == 0, described.stderr
    return json.loads(described.stdout)["job"]["spec"]


def test_the_config_file_names_the_node_and_sets_run_defaults(node: tuple[str, Path]) -> None:
    api, home = node
    (home / "config.toml").write_text(f'api = "{api}"\n\n[run]\ncpu = 0.5\ntimeout = 120\nconcurrency = 1\n')
    ran = shoal(home, "run", "noop", "--json")
    assert ran.returncode == 0, ran.stderr
    job = json.loads(ran.stdout)["job"]
    assert job["state"] == "completed"
    spec = spec_of(home, job["id"])
    assert (spec["resources"]["cpu"], spec["timeout"], spec["deal"]["concurrency"]) == (0.5, 120.0, 1)

    overridden = shoal(home, "run", "noop", "--cpu", "0.25", "--json")
    assert overridden.returncode == 0, overridden.stderr
    spec = spec_of(home, json.loads(overridden.stdout)["job"]["id"])
    assert (spec["resources"]["cpu"], spec["timeout"]) == (0.25, 120.0)

    shown = shoal(home, "config", "show", "--json")
    assert json.loads(shown.stdout)["api"] == {"value": api, "source": str(home / "config.toml")}


def test_a_bad_config_file_is_one_error_line_and_no_job(node: tuple[str, Path]) -> None:
    api, home = node
    before = shoal(home, "--api", api, "list", "--json")
    (home / "config.toml").write_text(f'api = "{api}"\n[run]\nconcurency = 2\n')
    failed = shoal(home, "run", "noop")
    assert failed.returncode == 2
    assert failed.stdout == ""
    assert failed.stderr == (f"Error: {home / 'config.toml'}: [run] concurency: unknown key (known here: cpu, "
                             "memory, disk, timeout, concurrency, confidence, min_bids, retries, queue_timeout, gpu, "
                             "wait, wait_timeout, cache)\n")
    (home / "config.toml").unlink()
    after = shoal(home, "--api", api, "list", "--json")
    assert json.loads(after.stdout)["total"] == json.loads(before.stdout)["total"]
