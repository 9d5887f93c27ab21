"""``pip install shoal`` end to end: a real wheel, in a fresh venv, with only the thin dependencies.

The wheel is built from a copy of the packages (so the build leaves nothing in the work tree) and
installed into a new venv (no system site-packages, no PYTHONPATH, run from outside the repo) by
pip resolving the wheel's own declared dependencies from the package index, exactly as a user's
``pip install`` would. So a node-only import in the SDK or a client command, or a thin dependency
missing from pyproject.toml, fails here. Against a real node (run from the dev venv), the thin
install's ``shoal`` and ``import shoal`` submit and list jobs; its ``shoal serve`` says in one line
which extra to install. About 40 s (the venv and the download dominate): slow, and run by CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cli.extras import NODE_MODULES
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Thin:
    bin: Path  # the fresh venv's bin/
    env: dict[str, str]
    cwd: Path

    def run(self, program: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(self.bin / program), *args], capture_output=True, text=True, env=self.env,
                              cwd=self.cwd, timeout=timeout)  # fmt: skip


def _build_wheel(into: Path) -> Path:
    source = into / "src"
    source.mkdir(parents=True)
    shutil.copy(REPO / "pyproject.toml", source)
    found = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    for package in {pattern.rstrip("*") for pattern in found["include"]}:
        shutil.copytree(REPO / package, source / package, ignore=shutil.ignore_patterns("__pycache__", "node_modules"))
    build = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", "-w", str(into / "dist"), str(source)]
    subprocess.run(build, check=True, timeout=300)
    (wheel,) = (into / "dist").glob("shoal-*.whl")
    return wheel


@pytest.fixture(scope="module")
def thin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Thin]:
    root = tmp_path_factory.mktemp("thin")
    wheel = _build_wheel(root / "build")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    # The dev venv's pip installs into the new venv (--python): the wheel and the dependencies it declares.
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", str(wheel)], check=True, timeout=600)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHOAL_", "VIRTUAL_ENV"))}
    env.update(SHOAL_HOME=str(root / "home"), NO_COLOR="1", COLUMNS="200")
    yield Thin(venv / "bin", env, root)


@pytest.fixture(scope="module")
def node(thin: Thin) -> Iterator[str]:
    port = free_base_port(1)
    with noop_node(Path(thin.env["SHOAL_HOME"]), port) as ready:
        yield ready["api"]


def test_the_thin_venv_has_shoal_and_none_of_the_node_extra(thin: Thin) -> None:
    probe = ("import importlib.util, json, shoal; print(json.dumps([shoal.__file__, "
             f"[n for n in {NODE_MODULES!r} if importlib.util.find_spec(n)]]))")  # fmt: skip
    result = thin.run("python", "-c", probe)
    assert result.returncode == 0, result.stderr
    where, node_modules = json.loads(result.stdout)
    assert where.startswith(str(thin.bin.parent)) and "site-packages" in where
    assert node_modules == []


def test_shoal_help_lists_the_client_commands(thin: Thin) -> None:
    result = thin.run("shoal", "--help")
    assert result.returncode == 0, result.stderr
    for command in ("run", "list", "describe", "logs", "cancel", "sweep", "nodes", "completion", "config"):
        assert f"  {command} " in result.stdout, command


def test_the_thin_cli_runs_and_lists_jobs_on_a_real_node(thin: Thin, node: str) -> None:
    submitted = thin.run("shoal", "--api", node, "run", "noop", "--json", timeout=120)
    assert submitted.returncode == 0, submitted.stderr
    job = json.loads(submitted.stdout)["job"]
    assert job["state"] == "completed"
    listed = thin.run("shoal", "--api", node, "list")
    assert listed.returncode == 0, listed.stderr
    assert job["id"][:10] in listed.stdout
    for command in (["describe", job["id"]], ["logs", job["id"]], ["nodes"], ["sweep", "list"]):
        result = thin.run("shoal", "--api", node, *command)
        assert result.returncode == 0, (command, result.stderr)
    # Results are downloaded and checked against their CID by the SDK's own code (storage.tarsafe, unixfs).
    got = thin.run("shoal", "--api", node, "get", job["id"], "-o", "results")
    assert got.returncode == 0, got.stderr
    assert (thin.cwd / "results").is_dir()


def test_the_thin_sdk_talks_to_a_real_node(thin: Thin, node: str) -> None:
    program = (
        "import shoal\n"
        f"with shoal.Client({node!r}) as client:\n"
        "    done = client.run({'engine': {'name': 'noop'}}, timeout=60)\n"
        "    print(done.job.state, done.job.id in [j.id for j in client.list().jobs])\n"
    )
    result = thin.run("python", "-c", program, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["completed", "True"]


def test_thin_serve_names_the_extra_in_one_line(thin: Thin) -> None:
    result = thin.run("shoal", "serve")
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: shoal serve runs a node, which needs the 'node' extra: "
                                    "pip install 'shoal[node]' (missing here: libp2p, trio, "), result.stderr
    assert len(result.stderr.splitlines()) == 1
