"""A node whose disk is full cannot build the python engine's snapshot: it stops offering the engine and says why,
retries ever less often instead of every few seconds, and offers the engine again once a build succeeds."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
import trio
import trio.testing

from executors import pyodide
from executors.pyodide import PyodideExecutor
from executors.registry import ExecutorRegistry

FULL = "cannot prepare the Python runtime (Pyodide snapshot): [Errno 28] No space left on device"


class FakeRunner:
    alive = True

    async def aclose(self) -> None:
        self.alive = False


class Disk:
    """Stands for the snapshot's build (one second) on a disk that may be full."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.full = True
        self.builds: list[float] = []  # trio times the builds started

    async def build(self) -> Path:
        self.builds.append(trio.current_time())
        await trio.sleep(1.0)
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.path.write_bytes(b"snapshot")
        return self.path


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[PyodideExecutor, Disk]:
    executor = PyodideExecutor(tmp_path / "cache", pool_size=1, unsandboxed=True)
    disk = Disk(tmp_path / "pyodide.snapshot")

    async def start_runner() -> FakeRunner:
        await executor._ensure_snapshot()
        return FakeRunner()

    monkeypatch.setattr(executor, "_missing", lambda: None)  # Node.js and Pyodide need not be installed
    monkeypatch.setattr(executor, "_build_snapshot", disk.build)
    monkeypatch.setattr(executor, "_start_runner", start_runner)
    monkeypatch.setattr(pyodide, "PARK_SECONDS", 1000.0)
    return executor, disk


async def test_a_node_that_cannot_build_the_snapshot_stops_offering_python_and_backs_off(
        setup: tuple[PyodideExecutor, Disk], autojump_clock: trio.testing.MockClock) -> None:
    executor, disk = setup
    registry = ExecutorRegistry({"python": executor})
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run_pool)
        await trio.sleep(0.5)
        assert registry.installed() == ["python"]  # the first build is still running: nothing known against it
        await trio.sleep(1.0)
        assert registry.installed() == []
        assert registry.problems() == {"python": f"{FULL}; retrying in 5 s"}

        await trio.sleep(1000.0)
        gaps = [b - a for a, b in zip(disk.builds, disk.builds[1:], strict=False)]
        assert gaps == pytest.approx([6, 11, 21, 41, 81, 161, 301, 301])  # a build takes 1 s, then the wait
        assert registry.installed() == []
        assert registry.problems()["python"].startswith(f"{FULL}; retrying in ")

        disk.full = False  # space came back: the next retry succeeds, without a restart
        await trio.sleep(300.0)
        assert registry.installed() == ["python"] and registry.problems() == {}
        assert executor.statistics().idle == 1

        disk.full = True  # full again later: the waits start over from 5 s
        disk.path.unlink()
        executor._idle[0].alive = False
        executor._refill.set()
        builds = len(disk.builds)
        await trio.sleep(20.0)
        assert [b - disk.builds[builds] for b in disk.builds[builds:]] == pytest.approx([0, 6, 17])
        assert registry.installed() == []
        nursery.cancel_scope.cancel()
