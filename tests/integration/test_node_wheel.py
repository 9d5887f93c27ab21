"""``pip install 'shoal[node]'`` end to end: the wheel carries a node that runs every engine.

The wheel is built from a copy of the packages (as test_thin_wheel.py does) and installed with the
node extra into a fresh venv (no system site-packages, no PYTHONPATH, run from outside the repo).
Until ``shoal pyodide install`` has run, the node says to run it; it then fetches the pinned Pyodide
beside the installed runner (npm ci; the wheel carries runner.mjs, driver.py and the lock file, not
node_modules). A node started from that
venv runs a python job (Pyodide, in the bubblewrap sandbox), a wasm job (wasmtime) and a docker
job (busybox), each submitted by the venv's own ``shoal``. About 2 minutes (pip resolving the node
extra dominates): slow, and run by CI.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from executors.docker import DockerExecutor
from tests.integration.rogue import free_base_port
from tests.integration.single_node import _wait_for_ready
from tests.integration.test_thin_wheel import Thin, _build_wheel

pytestmark = pytest.mark.slow

ENGINES_WAIT = 180.0  # seconds for a new node to offer every engine on a busy 2-core machine
RUNNER_FILES = ("runner.mjs", "driver.py", "package.json", "package-lock.json")
HELLO_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "hello from wasm\\n")
  (func (export "_start")
    (i32.store (i32.const 0) (i32.const 16))
    (i32.store (i32.const 4) (i32.const 16))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))
"""


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build_wheel(tmp_path_factory.mktemp("node-wheel") / "build")


@pytest.fixture(scope="module")
def venv(wheel: Path) -> Iterator[Thin]:
    # Where a system-wide install would be: readable by all (pytest's own temporary folders are 0700),
    # since the python engine's sandbox runs jobs as other uids and binds the installed runner read-only.
    root = Path(tempfile.mkdtemp(prefix="shoal-node-wheel-"))
    root.chmod(0o755)
    try:
        yield _install(wheel, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _install(wheel: Path, root: Path) -> Thin:
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--disable-pip-version-check", f"{wheel}[node]"], check=True, timeout=900)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "SHOAL_", "VIRTUAL_ENV"))}
    env.update(SHOAL_HOME=str(root / "home"), NO_COLOR="1", COLUMNS="200")
    (root / "work").mkdir()
    return Thin(venv / "bin", env, root / "work")


@pytest.fixture(scope="module")
def node(venv: Thin) -> Iterator[str]:
    # Before: the installed node says why it has no python engine, with a command this venv has.
    missing = venv.run("python", "-c", "from executors.pyodide import PyodideExecutor\n"
                       "print(PyodideExecutor('cache', unsandboxed=True).problem())")
    assert missing.returncode == 0, missing.stderr
    assert missing.stdout == "Pyodide is not installed on this node (run `shoal pyodide install`)\n", missing.stdout
    installed = venv.run("shoal", "pyodide", "install", "--json", timeout=600)
    assert installed.returncode == 0, installed.stderr
    runner_dir = Path(json.loads(installed.stdout)["runner_dir"])
    assert runner_dir.is_relative_to(venv.bin.parent), runner_dir  # inside the venv, not the repo
    home = Path(venv.env["SHOAL_HOME"])
    process = subprocess.Popen(
        [str(venv.bin / "shoal"), "serve", "--data-dir", str(home / "node"), "--api-port", str(free_base_port(1)),
         "--ipfs-api", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=venv.env, cwd=venv.cwd,
    )  # fmt: skip
    try:
        yield _wait_for_ready(process, 120)["api"]
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    text = err.decode()
    assert "Traceback" not in text and "WARNING" not in text, text[-3000:]  # e.g. "job sandbox unavailable"


def test_the_wheel_carries_the_runner_and_not_node_modules(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    for name in RUNNER_FILES:
        assert f"executors/pyodide_runner/{name}" in names, name
    assert not [n for n in names if "node_modules" in n]


def test_pyodide_install_is_idempotent(venv: Thin, node: str) -> None:
    again = venv.run("shoal", "pyodide", "install")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("Pyodide ") and "already installed in" in again.stdout, again.stdout


def test_the_installed_node_offers_every_engine(venv: Thin, node: str) -> None:
    """The python engine is offered once its memory snapshot is built (seconds to a minute after the start)."""
    wanted = {"python", "wasm"} | ({"docker"} if DockerExecutor("probe").is_installed() else set())
    deadline = time.monotonic() + ENGINES_WAIT
    while True:
        nodes = venv.run("shoal", "--api", node, "nodes", "--json")
        assert nodes.returncode == 0, nodes.stderr
        engines = set(json.loads(nodes.stdout)["nodes"][0]["engines"])
        if wanted <= engines or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert wanted <= engines, engines


def test_a_python_job_runs_from_the_wheel(venv: Thin, node: str) -> None:
    (venv.cwd / "main.py").write_text("import sys\nprint('hello from pyodide', 6 * 7, sys.platform)\n")
    result = venv.run("shoal", "--api", node, "run", "python", "main.py", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from pyodide 42 emscripten\n"


def test_a_wasm_job_runs_from_the_wheel(venv: Thin, node: str) -> None:
    (venv.cwd / "hello.wat").write_text(HELLO_WAT)
    result = venv.run("shoal", "--api", node, "wasm", "run", "hello.wat", timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from wasm\n"


@pytest.mark.skipif(not DockerExecutor("probe").is_installed(), reason="no Docker daemon answers")
def test_a_docker_job_runs_from_the_wheel(venv: Thin, node: str) -> None:
    result = venv.run("shoal", "--api", node, "docker", "run", "busybox", "--", "echo", "hello from docker",
                      timeout=180)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from docker\n"
