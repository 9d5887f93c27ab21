"""Memory cgroups around sandboxes, against the kernel's real hierarchy: v1 on this host, v2 in a VM.

``test_cgroup_v2.py`` runs this file again in a VM with cgroup v2 only (``tests/vm.py``), as a systemd
service with ``Delegate=memory pids`` is run, so each test here holds on both; a few are for one of them alone.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

import executors.cgroups
from executors.cgroups import ContainerSockets, MemoryCgroup, MemoryCgroups, own_memory_cgroup
from executors.sandbox import NOBODY, PROCESS_LIMIT, Limits, Sandbox, as_user
from tests import vm
from tests.integration.test_sandbox_users import FORK_TEN, HOLD_ALL_IT_MAY, REPO

pytestmark = [
    pytest.mark.skipif(own_memory_cgroup() is None, reason="no writable memory cgroup here (a root node has one in v1; "
                       "in v2, a node alone in a cgroup with the memory controller)"),
    pytest.mark.skipif(vm.cgroup_v2_outside_the_vm(), reason="cgroup v2: test_cgroup_v2.py runs these in a VM"),
]
V1_ONLY = pytest.mark.skipif(executors.cgroups.memory_hierarchy() is None,
                             reason="cgroup v2: socket buffers count as memory, a container's limit holds them")
V2_ONLY = pytest.mark.skipif(executors.cgroups.memory_hierarchy() is not None, reason="cgroup v1 here")

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
        done = subprocess.run(argv, capture_output=True, timeout=60)
        assert done.stdout.decode() == "child -9\n", done.stderr  # what it got: killed, never its 256 MiB
        assert cgroup.oom_kills() == 1
        assert cgroup.peak() <= 64 << 20
    finally:
        cgroup.remove()
        slot.remove()
    assert not cgroup.path.exists()


def test_a_limit_below_what_the_processes_hold_is_refused_and_the_old_one_stays() -> None:
    cgroups = MemoryCgroups.here()
    cgroup = cgroups.new()
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
    stale, leaf = parent / f"shoal-{int(gone.stdout)}", parent / f"shoal-{int(gone.stdout)}-node"
    (stale / "7").mkdir(parents=True)
    leaf.mkdir()  # on v2, the node ran there
    MemoryCgroups.here()
    assert not stale.exists() and not leaf.exists()


def test_a_cgroup_whose_process_is_still_there_is_removed_by_a_later_one(monkeypatch: pytest.MonkeyPatch) -> None:
    """A runner's cgroup is removed when its processes are gone; one the kernel still counts a process in is
    not left behind for good (a node runs many thousands of jobs)."""
    monkeypatch.setattr(executors.cgroups, "REMOVE_WAIT", 0.05)
    cgroups = MemoryCgroups.here()
    cgroup = cgroups.new()
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
    later = cgroups.new()
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


@V1_ONLY
def test_container_sockets_are_bounded_only_where_cgroup_v1_and_the_cgroupfs_driver_meet() -> None:
    hierarchy = executors.cgroups.memory_hierarchy()
    sockets = ContainerSockets.here({"CgroupVersion": "1", "CgroupDriver": "cgroupfs"})
    assert sockets is not None and sockets.root == hierarchy / "docker"
    # cgroup v2 counts socket buffers as memory; the systemd driver names cgroups this node cannot guess
    assert ContainerSockets.here({"CgroupVersion": "2", "CgroupDriver": "systemd"}) is None
    assert ContainerSockets.here({"CgroupVersion": "1", "CgroupDriver": "systemd"}) is None


@V1_ONLY
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


@V2_ONLY
def test_on_cgroup_v2_a_node_alone_in_its_cgroup_moves_into_a_leaf_beside_its_sandboxes() -> None:
    """v2 lets a cgroup give its children the memory controller only once it holds no process itself."""
    cgroups = MemoryCgroups.here()
    own = Path("/sys/fs/cgroup") / Path("/proc/self/cgroup").read_text().strip().split("::", 1)[1].lstrip("/")
    assert own.name == f"shoal-{os.getpid()}-node"
    assert own.parent == cgroups.root.parent == own_memory_cgroup()
    assert "memory" in (own.parent / "cgroup.subtree_control").read_text().split()


# Run as a systemd service with User= and Delegate=memory pids is (the shoal.service of a terraform/ cluster):
# alone in a cgroup its user owns, the node not root, its sandboxes run as its own uid.
AS_DELEGATED_NODE = 4242


@contextlib.contextmanager
def _scratch_cgroup(name: str) -> Iterator[tuple[Path, list[str]]]:
    """A new cgroup beside this process's (v2: under the VM's system.slice), and the prefix that starts a command in
    it (``MemoryCgroup.join_args``); removed after, with what was made in it."""
    path = own_memory_cgroup().parent / f"{name}-{os.getpid()}"
    path.mkdir()
    try:
        yield path, MemoryCgroup(path).join_args()
    finally:
        for child in sorted(path.rglob("*"), reverse=True):
            if child.is_dir():
                child.rmdir()
        path.rmdir()


def _as_delegated_node(script: str, *args: str) -> dict:
    """Run ``script`` (which prints JSON) as a node that is not root, in a cgroup delegated to it as systemd does."""
    with _scratch_cgroup("delegated") as (delegated, join):
        for name in ("", "cgroup.procs", "cgroup.subtree_control", "cgroup.threads"):  # what systemd chowns
            os.chown(delegated / name, AS_DELEGATED_NODE, AS_DELEGATED_NODE)
        done = subprocess.run([*join, *as_user(AS_DELEGATED_NODE), sys.executable, "-c", script, *args],
                              capture_output=True, text=True, timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


GREEDY_SANDBOX = """\
import json, subprocess, sys
from executors.sandbox import Limits, Sandbox
sandbox = Sandbox([])
slot = sandbox.new_slot()
cgroup = sandbox.memory_cgroup(slot)
cgroup.set_limit(64 << 20)
argv = sandbox.command(["/usr/bin/python3", "-c", sys.argv[1]], slot=slot, env={}, cgroup=cgroup,
                       limits=Limits(processes=slot.process_limit))
done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
pids = cgroup.path / "pids.max"
print(json.dumps({"problem": sandbox.problem(), "stdout": done.stdout, "stderr": done.stderr[-500:],
                  "oom_kills": cgroup.oom_kills(), "limit": cgroup.limit(),
                  "pids_max": pids.read_text().strip() if pids.exists() else None}))
"""


@V2_ONLY
def test_on_cgroup_v2_a_node_that_is_not_root_holds_its_sandboxes_in_the_cgroup_delegated_to_it() -> None:
    seen = _as_delegated_node(GREEDY_SANDBOX, GREEDY_CHILD)
    assert seen["problem"] is None
    assert seen["stdout"] == "child -9\n", seen["stderr"]  # what it got: killed, never its 256 MiB
    assert seen["oom_kills"] == 1


# Job code that reached the OS (past Node's permission model): it makes a user namespace of its own, with every
# capability over a new cgroup namespace, mounts cgroupfs there and raises its own limits; then takes 256 MiB.
RAISE_OWN_LIMITS = """\
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
got = {}
CLONE_NEWUSER, CLONE_NEWNS, CLONE_NEWCGROUP = 0x10000000, 0x00020000, 0x02000000
unshared = libc.unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWCGROUP) == 0
got["unshare"] = "done" if unshared else os.strerror(ctypes.get_errno())
os.makedirs("/tmp/cg", exist_ok=True)
for fstype, data in ((b"cgroup2", None), (b"cgroup", b"memory")):
    if libc.mount(b"none", b"/tmp/cg", fstype, 0, data) != 0:
        got[fstype.decode()] = os.strerror(ctypes.get_errno())
        continue
    got[fstype.decode()] = "mounted"
    for name, value in (("memory.max", "max"), ("pids.max", "max"), ("memory.limit_in_bytes", "-1")):
        try:
            with open(f"/tmp/cg/{name}", "w") as f:
                f.write(value)
            got[name] = "raised"
        except OSError as e:
            got[name] = e.strerror
    libc.umount(b"/tmp/cg")
child = subprocess.run([sys.executable, "-c", "held = b'x' * (256 << 20)"])
got["child"] = child.returncode
print(json.dumps(got))
"""


def _assert_held(seen: dict) -> None:
    """What the job above got: no user namespace of its own, no cgroupfs, its limits as they were, killed."""
    got = json.loads(seen["stdout"])
    assert got["unshare"] != "done" and got["cgroup2"] != "mounted" and got["cgroup"] != "mounted", got
    assert got["child"] == -9 and seen["oom_kills"] == 1, got  # never its 256 MiB
    assert seen["limit"] == 64 << 20 and seen["pids_max"] in (None, str(PROCESS_LIMIT)), seen


def test_job_code_that_reaches_the_os_cannot_raise_its_own_limits() -> None:
    """On a root node: its sandbox's uid is its own, and (v2) the node has a cgroup of its own."""
    v2 = executors.cgroups.memory_hierarchy() is None
    with _scratch_cgroup("root-node") if v2 else contextlib.nullcontext((None, [])) as (_, join):
        done = subprocess.run([*join, sys.executable, "-c", GREEDY_SANDBOX, RAISE_OWN_LIMITS], capture_output=True,
                              text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr
    _assert_held(json.loads(done.stdout))


@V2_ONLY
def test_on_cgroup_v2_job_code_on_a_node_that_is_not_root_cannot_raise_its_own_limits() -> None:
    """Its cgroup's files are the node's uid's, which its sandbox shares: in a user namespace of its own, job code
    mounted cgroupfs and raised its own memory.max and pids.max (and held 256 MiB of a 64 MiB job)."""
    _assert_held(_as_delegated_node(GREEDY_SANDBOX, RAISE_OWN_LIMITS))


HOG_BESIDE_ANOTHER = """\
import json, subprocess, sys
from executors.sandbox import Limits, Sandbox
sandbox = Sandbox([])
hog_slot, other_slot = sandbox.new_slot(), sandbox.new_slot()
hog_cgroup, other_cgroup = sandbox.memory_cgroup(hog_slot), sandbox.memory_cgroup(other_slot)
def command(code, slot, cgroup):
    return sandbox.command(["/usr/bin/python3", "-c", code], slot=slot, env={}, cgroup=cgroup,
                           limits=Limits(processes=slot.process_limit))
hog = subprocess.Popen(command(sys.argv[1], hog_slot, hog_cgroup), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                       text=True)
held = hog.stdout.readline()
other = subprocess.run(command(sys.argv[2], other_slot, other_cgroup), capture_output=True, text=True, timeout=60)
hog.kill()
hog.wait()
print(json.dumps({"held": held, "other": other.stdout, "other_stderr": other.stderr[-500:]}))
"""


@V2_ONLY
def test_on_cgroup_v2_a_sandbox_sharing_the_nodes_uid_is_held_to_its_own_count_of_processes() -> None:
    """Its uid's RLIMIT_NPROC is shared with the node and every other sandbox (1024): the pids cgroup holds each to
    its own 128, so one that forks all it may leaves the next sandbox room to start and fork."""
    seen = _as_delegated_node(HOG_BESIDE_ANOTHER, HOLD_ALL_IT_MAY, FORK_TEN)
    held = int(seen["held"].split()[1]) if seen["held"].startswith("held ") else -1
    assert PROCESS_LIMIT - 8 <= held < PROCESS_LIMIT, seen  # bubblewrap's processes count too
    assert seen["other"] == f"forked 10 as {NOBODY}\n", seen


@V2_ONLY
def test_on_cgroup_v2_a_node_that_shares_its_cgroup_makes_none_and_says_why(tmp_path: Path) -> None:
    """Another process in the node's cgroup (a unit without Delegate=memory pids, a shell's scope) keeps v2 from giving
    the node's children the memory controller: the python engine says so (``shoal id``), and its jobs keep their
    rlimits."""
    with _scratch_cgroup("shared") as (shared, join):
        neighbour = subprocess.Popen([*join, "sleep", "300"])
        try:
            done = subprocess.run(
                [*join, sys.executable, "-c", "import sys; from pathlib import Path; "
                 "from executors.pyodide import PyodideExecutor; python = PyodideExecutor(Path(sys.argv[1]), "
                 "pool_size=0); print(python.problem()); print(python.containment_note())", str(tmp_path)],
                capture_output=True, text=True, timeout=300, cwd=REPO)
        finally:
            neighbour.kill()
            neighbour.wait()
        problem, note = done.stdout.splitlines()
        assert problem == "None", done.stderr  # the engine is offered, its sandboxes held by their rlimits
        assert note.startswith("memory held by rlimits alone, not by a memory cgroup: other processes (1) share "
                               "this node's cgroup"), note
        assert note.endswith("(systemd: Delegate=memory pids)"), note
        assert not list(shared.glob("shoal-*")), "the node moved itself in a cgroup that is not its own"


WITH_A_CHILD = """\
import json, os, subprocess
from executors.cgroups import MemoryCgroups
child = subprocess.Popen(["sleep", "300"])  # a snapshot build, say, still running at the node's first job
cgroups = MemoryCgroups.here()
def cgroup_of(pid):
    return open(f"/proc/{pid}/cgroup").read().strip().split("::", 1)[1]
print(json.dumps({"root": str(cgroups.root), "node": cgroup_of(os.getpid()), "child": cgroup_of(child.pid)}))
child.kill()
"""


@V2_ONLY
def test_on_cgroup_v2_a_node_takes_the_children_it_started_into_its_leaf() -> None:
    with _scratch_cgroup("alone") as (alone, join):
        done = subprocess.run([*join, sys.executable, "-c", WITH_A_CHILD], capture_output=True, text=True,
                              timeout=300, cwd=REPO)
        assert done.returncode == 0, done.stderr
        seen = json.loads(done.stdout)
        assert seen["node"] == seen["child"] != str(alone)  # both in the node's leaf
        assert seen["node"].endswith("-node") and Path(seen["root"]).parent.name == alone.name
