"""``shoal pyodide install``'s decisions: what counts as installed, and one-line reasons when it cannot install.
(The real ``npm ci`` from an installed wheel runs in tests/integration/test_node_wheel.py.)"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

from executors.base import ExecutorError
from executors.pyodide import RUNNER_DIR
from executors.runtime_install import STAMP, install_pyodide, installed_pyodide


@pytest.fixture
def runner(tmp_path: Path) -> Path:
    """A copy of the runner as the wheel carries it: no node_modules."""
    for name in ("runner.mjs", "driver.py", "package.json", "package-lock.json"):
        shutil.copy(RUNNER_DIR / name, tmp_path / name)
    return tmp_path


def _fake_install(runner: Path, version: str = "0.0.1", stamp: str | None = None) -> None:
    (runner / "node_modules" / "pyodide").mkdir(parents=True)
    (runner / "node_modules" / "pyodide" / "package.json").write_text(json.dumps({"version": version}))
    lock = hashlib.sha256((runner / "package-lock.json").read_bytes()).hexdigest()
    (runner / STAMP).write_text((stamp or lock) + "\n")


def test_nothing_is_installed_in_a_fresh_copy(runner: Path) -> None:
    assert installed_pyodide(runner) is None


def test_an_install_matching_the_lock_file_is_kept(runner: Path) -> None:
    _fake_install(runner, "9.9.9")
    assert installed_pyodide(runner) == "9.9.9"
    assert install_pyodide(runner, node="no-such-node", npm="no-such-npm") == ("9.9.9", False)  # no npm needed


def test_an_install_for_another_lock_file_is_stale(runner: Path) -> None:
    _fake_install(runner, stamp="0" * 64)
    assert installed_pyodide(runner) is None


def test_without_node_or_npm_it_says_what_to_install(runner: Path) -> None:
    with pytest.raises(ExecutorError, match=r"^no-such-npm is not installed: the python engine needs Node.js >= 20"):
        install_pyodide(runner, npm="no-such-npm")


def test_a_runner_without_its_lock_file_is_named(runner: Path) -> None:
    if shutil.which("node") is None or shutil.which("npm") is None:
        pytest.skip("Node.js is not installed")
    (runner / "package-lock.json").unlink()
    with pytest.raises(ExecutorError, match=r"has no package-lock\.json"):
        install_pyodide(runner)
