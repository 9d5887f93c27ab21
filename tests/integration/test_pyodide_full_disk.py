"""The python engine on a node whose data dir is full (a small tmpfs, so root only): the real snapshot build fails
with ENOSPC, the engine is not offered and says why, and once there is room the pool's retry offers it again."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from executors.pyodide import PyodideExecutor

pytestmark = pytest.mark.skipif(
    not PyodideExecutor(Path("/nonexistent")).is_installed(), reason="Pyodide not installed: scripts/install-pyodide"
)


async def wait_until(condition: Callable[[], bool], seconds: float) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.2)


async def test_a_full_data_dir_withdraws_python_until_the_snapshot_can_be_built(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(data)],
                                           capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root)")
    try:
        executor = PyodideExecutor(data / "cache", pool_size=1, unsandboxed=True)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run_pool)
            await wait_until(lambda: executor.problem() is not None, 120)
            problem = executor.problem()
            assert problem is not None and not executor.is_installed()
            assert problem.startswith("cannot prepare the Python runtime (Pyodide snapshot): ")
            assert "ENOSPC" in problem and "; retrying in " in problem

            subprocess.run(["mount", "-o", "remount,size=128m", str(data)], check=True)
            await wait_until(lambda: executor.statistics().idle == 1, 180)
            assert executor.is_installed() and executor.problem() is None
            nursery.cancel_scope.cancel()
    finally:
        subprocess.run(["umount", str(data)], check=True)
