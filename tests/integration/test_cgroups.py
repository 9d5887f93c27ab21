"""Memory cgroups around sandboxes, against the kernel's real v1 memory hierarchy (a root node has one)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

import executors.cgroups
from executors.cgroups import ContainerSockets, MemoryCgroups, own_memory_cgroup
from executors.sandbox import Limits, Sandbox

pytestmark = pytest.mark.skipif(own_memory_cgroup() is None,
                                reason="no writable cgroup v1 memory hierarchy here (a root node has one)")

# A process that starts another, which takes 256 MiB: what is forked inside a sandbox counts as the sandbox's.
GREEDY_CHILD = """\
import subprocess, sys
child = subprocess.run([sys.executable, "-c", "held = b'x' * (256 << 20); print('the child held 256 MiB')"])
print("child", child.returncode)
"""


def test_a_sandbox_and_what_it_starts_are_held_to_its_cgroups_limit(tmp_path: Path) -> None:
    sandbox = Sandbox([])  # /usr/bin/python3 is in the /usr every sandbox has
    if sandbox.problem():
        pytest.skip(sandbox.problem())
    slot = sandbox.new_slot()
    cgroup = sandbox.memory_cgroup(slot)
    assert cgroup is not None
    try:
        assert cgroup.set_limit(64 << 20)
        argv = sandbox.command(["/usr/bin/python3", "-c", GREEDY_CHILD], slot=slot, env={}, limits=Limits(),
                               cgroup=cgroup)
        done = subprocess.run(argv, capture_output=True, timeout=60, **sandbox.popen_options(slot))
        assert done.stdout.decode() == "child -9\n", done.stderr  # what it got: killed, never its 256 MiB
        assert cgroup.oom_kills() == 1
        assert cgroup.peak() <= 64 << 20
    finally:
        cgroup.remove()
        slot.remove()
    assert not cgroup.path.exists()


def test_a_limit_below_what_the_processes_hold_is_refused_and_the_old_one_stays() -> None:
    cgroups = MemoryCgroups.here(owner=None)
    assert cgroups is not None
    cgroup = cgroups.new(None)
    holder = subprocess.Popen(
        [*cgroup.join_args(), sys.executable, "-c",
         "import sys, time; held = b'x' * (100 << 20); print('held', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == b"held\n"
        assert cgroup.set_limit(512 << 20)
        assert not cgroup.set_limit(16 << 20)  # the kernel cannot reclaim what a process holds without swap
        assert cgroup.limit() == 512 << 20
        assert holder.poll() is None
    finally:
        holder.kill()
        holder.wait()
        cgroup.remove()


def test_the_cgroups_of_a_node_that_died_are_removed_by_the_next() -> None:
    parent = own_memory_cgroup()
    assert parent is not None
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = parent / f"shoal-{int(gone.stdout)}"
    (stale / "7").mkdir(parents=True)
    assert MemoryCgroups.here(owner=None) is not None
    assert not stale.exists()


def test_a_cgroup_whose_process_is_still_there_is_removed_by_a_later_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner's cgroup is removed when its processes are gone; one the kernel still counts a process in is
    not left behind for good (a node runs many thousands of jobs)."""
    monkeypatch.setattr(executors.cgroups, "REMOVE_WAIT", 0.05)
    cgroups = MemoryCgroups.here(owner=None)
    assert cgroups is not None
    cgroup = cgroups.new(None)
    holder = subprocess.Popen([*cgroup.join_args(), "sleep", "60"])
    try:
        while not (cgroup.path / "cgroup.procs").read_text().strip():
            time.sleep(0.01)
        cgroup.remove()
        assert cgroup.path.exists()
    finally:
        holder.kill()
        holder.wait()
    while (cgroup.path / "cgroup.procs").read_text().strip():
        time.sleep(0.01)
    later = cgroups.new(None)
    assert not cgroup.path.exists()
    later.remove()
    assert not later.path.exists()


async def test_a_python_engine_that_stops_leaves_no_cgroup_behind(tmp_path: Path) -> None:
    from executors.pyodide import PyodideExecutor

    executor = PyodideExecutor(tmp_path / "cache", pool_size=1)
    if not executor.is_installed():
        pytest.skip(executor.problem())
    folder = own_memory_cgroup() / f"shoal-{os.getpid()}"
    if folder.exists() and any(p.is_dir() for p in folder.iterdir()):
        pytest.skip("another executor of this process still has cgroups")
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run_pool)
        assert [p for p in folder.iterdir() if p.is_dir()]  # the pool's runner, in its cgroup
        nursery.cancel_scope.cancel()
    assert not folder.exists()


def test_container_sockets_are_bounded_only_where_cgroup_v1_and_the_cgroupfs_driver_meet() -> None:
    hierarchy = executors.cgroups.memory_hierarchy()
    sockets = ContainerSockets.here({"CgroupVersion": "1", "CgroupDriver": "cgroupfs"})
    assert sockets is not None and sockets.root == hierarchy / "docker"
    # cgroup v2 counts socket buffers as memory; the systemd driver names cgroups this node cannot guess
    assert ContainerSockets.here({"CgroupVersion": "2", "CgroupDriver": "systemd"}) is None
    assert ContainerSockets.here({"CgroupVersion": "1", "CgroupDriver": "systemd"}) is None


def test_a_container_cgroup_docker_never_used_is_removed() -> None:
    sockets = ContainerSockets(own_memory_cgroup() / f"shoal-test-{os.getpid()}")
    try:
        sockets.bound("c0ffee", 32 << 20)
        assert (sockets.root / "c0ffee" / "memory.kmem.tcp.limit_in_bytes").read_text() == f"{32 << 20}\n"
        assert not sockets.held("c0ffee")  # no process ran in it
        sockets.forget("c0ffee")
        assert not (sockets.root / "c0ffee").exists()
        sockets.forget("c0ffee")  # already gone (runc removes the cgroups it used): nothing to do
    finally:
        for path in (sockets.root / "c0ffee", sockets.root):
            if path.exists():
                path.rmdir()
