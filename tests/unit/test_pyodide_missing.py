"""What a node without Pyodide tells its operator: a command that works on a wheel-installed node too."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from executors.pyodide import RUNNER_DIR, PyodideExecutor


def test_a_node_without_pyodide_says_to_run_shoal_pyodide_install(tmp_path: Path) -> None:
    if shutil.which("node") is None:
        pytest.skip("Node.js is not installed (the message about it comes first)")
    runner = tmp_path / "pyodide_runner"  # an installed wheel's runner: runner.mjs, no node_modules
    runner.mkdir()
    shutil.copy(RUNNER_DIR / "runner.mjs", runner / "runner.mjs")
    executor = PyodideExecutor(tmp_path / "cache", runner_dir=runner, unsandboxed=True)
    assert not executor.is_installed()
    assert executor.problem() == "Pyodide is not installed on this node (run `shoal pyodide install`)"
