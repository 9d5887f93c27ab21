"""A node whose Node.js is too old for the sandboxed runner (Node 18 has no --experimental-permission)
does not offer the python engine, and says why in one line."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executors.pyodide import PyodideExecutor
from executors.runtime_install import MIN_NODE


def _fake_node(bin_dir: Path, version: str, mtime: int) -> None:
    node = bin_dir / "node"
    node.write_text(f"#!/bin/sh\necho {version}\n")
    node.chmod(0o755)
    os.utime(node, (mtime, mtime))  # a new binary: another modification time


def test_a_node_too_old_for_the_permission_model_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert MIN_NODE >= 20
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    _fake_node(bin_dir, "v18.20.4", 1_000_000)
    runner = tmp_path / "pyodide_runner"  # no Pyodide: what problem() says once Node.js is new enough
    runner.mkdir()
    executor = PyodideExecutor(tmp_path / "cache", runner_dir=runner, unsandboxed=True)
    assert not executor.is_installed()
    assert executor.problem() == (f"Node.js v18.20.4 ({bin_dir / 'node'}) is too old: the python engine needs "
                                  f"Node.js >= {MIN_NODE}")
    _fake_node(bin_dir, "v20.20.2", 2_000_000)  # upgraded in place: asked again
    assert executor.problem() == "Pyodide is not installed on this node (run `shoal pyodide install`)"
