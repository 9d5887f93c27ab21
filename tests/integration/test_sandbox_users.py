"""On a root node each sandbox runs as a host uid of its own (``executors.users``), against real bubblewrap
and the kernel's per-uid limits: what one job does with its uid's limits leaves every other sandbox its own.
A node that is not root runs them as its own uid, whose limits they share.

While every sandbox ran as 65534, one that held its RLIMIT_NPROC of processes kept every other from
starting at all (bubblewrap could not fork), and so would 100 busy interpreters of ten threads each.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from executors.sandbox import NOBODY, Limits, Sandbox, as_user
from executors.users import UIDS_START
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node
from tests.integration.test_gpu_node import shoal

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: sandboxes run as other uids")

PROCESSES = 64  # RLIMIT_NPROC of both sandboxes
REPO = Path(__file__).resolve().parents[2]

# Fork until the kernel refuses, keep every child, say how many; then wait to be killed.
HOLD_ALL_IT_MAY = """\
import os, sys, time
held = 0
try:
    while True:
        if os.fork() == 0:
            time.sleep(600)
            os._exit(0)
        held += 1
except OSError as e:
    print("held", held, os.strerror(e.errno), flush=True)
sys.stdin.read()
"""

FORK_TEN = """\
import os
for _ in range(10):
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
print("forked 10 as", os.getuid())
"""


@pytest.fixture
def sandbox() -> Sandbox:
    sandbox = Sandbox([])  # /usr/bin/python3 is in the /usr every sandbox has
    if sandbox.problem():
        pytest.skip(sandbox.problem())
    return sandbox


def test_a_sandbox_holding_all_the_processes_its_uid_may_have_leaves_the_next_sandbox_its_own(
        sandbox: Sandbox) -> None:
    hog_slot, other_slot = sandbox.new_slot(), sandbox.new_slot()
    try:
        assert hog_slot.owner != other_slot.owner
        assert {hog_slot.owner, other_slot.owner}.isdisjoint({0, NOBODY, os.getuid()})
        assert min(hog_slot.owner, other_slot.owner) >= UIDS_START
        limits = Limits(processes=PROCESSES)
        hog = subprocess.Popen(
            sandbox.command(["/usr/bin/python3", "-c", HOLD_ALL_IT_MAY], slot=hog_slot, env={}, limits=limits),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = hog.stdout.readline()
            held = int(line.split()[1]) if line.startswith("held ") else -1
            assert PROCESSES - 8 <= held < PROCESSES, (line, hog.stderr.read() if hog.poll() is not None else "")
            other = subprocess.run(
                sandbox.command(["/usr/bin/python3", "-c", FORK_TEN], slot=other_slot, env={}, limits=limits),
                capture_output=True, text=True, timeout=60)
            assert other.stdout == f"forked 10 as {NOBODY}\n", other.stderr  # as the job sees itself
        finally:
            hog.kill()
            hog.wait(timeout=30)
    finally:
        hog_slot.remove()
        other_slot.remove()


def test_a_uid_is_handed_out_again_only_once_its_slot_is_removed(sandbox: Sandbox) -> None:
    first = sandbox.new_slot()
    second = sandbox.new_slot()
    assert first.owner != second.owner
    uid = first.owner
    first.remove()
    first.remove()  # removing twice gives nothing back twice
    third = sandbox.new_slot()
    fourth = sandbox.new_slot()
    try:
        assert third.owner == uid  # the lowest free one
        assert fourth.owner not in (uid, second.owner)
    finally:
        for slot in (second, third, fourth):
            slot.remove()




# Run in a user namespace of its own that maps only uids and gids 0-65535, as an unprivileged container's root
# has: the node's range of uids is not there to take.
IN_A_SMALL_NAMESPACE = """\
import ctypes, sys
if ctypes.CDLL(None, use_errno=True).unshare(0x10000000) != 0:  # CLONE_NEWUSER
    sys.exit(f"unshare: errno {ctypes.get_errno()}")
print("unshared", flush=True)
sys.stdin.readline()  # the parent has written the maps
from executors.sandbox import Sandbox
sandbox = Sandbox([])
print("problem", sandbox.problem())
slot = sandbox.new_slot()
print("owner", slot.owner)
slot.remove()
"""


def test_a_root_node_whose_namespace_lacks_its_uid_range_still_sandboxes_jobs_as_65534() -> None:
    child = subprocess.Popen([sys.executable, "-c", IN_A_SMALL_NAMESPACE], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert child.stdout.readline() == "unshared\n", child.stderr.read()
        for name in ("uid_map", "gid_map"):
            Path(f"/proc/{child.pid}/{name}").write_text("0 0 65536\n")
        out, err = child.communicate("go\n", timeout=60)
    finally:
        child.kill()
    assert out.splitlines() == ["problem None", f"owner {NOBODY}"], err
    assert "are not mapped in this node's user namespace" in err  # said once, in the node's log


# Run as a node that is not root (the shoal user of a terraform/ cluster): its sandboxes run as its own uid,
# which its own threads and its other sandboxes share. Each holds twelve tasks, as a python runner does.
TEN_AT_ONCE_AS_THE_NODE = """\
import subprocess, sys
from executors.sandbox import Limits, Sandbox
HOLD_TWELVE = "import sys, threading, time\\n" \\
    "[threading.Thread(target=time.sleep, args=(600,), daemon=True).start() for _ in range(11)]\\n" \\
    "print('ready', flush=True); sys.stdin.read()"
sandbox = Sandbox([])
assert sandbox.problem() is None, sandbox.problem()
slots = [sandbox.new_slot() for _ in range(10)]
running = [subprocess.Popen(sandbox.command(["/usr/bin/python3", "-c", HOLD_TWELVE], slot=slot, env={},
                                            limits=Limits(processes=slot.process_limit)),
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for slot in slots]
for process in running:
    line = process.stdout.readline().strip()
    print(line or process.stderr.read().strip()[-200:], flush=True)
for process in running:
    process.kill()
    process.wait()
for slot in slots:
    slot.remove()
"""


def test_a_node_that_is_not_root_runs_ten_sandboxes_at_once() -> None:
    """They share its uid's RLIMIT_NPROC, as its own threads do: at 128 (a root node's per sandbox) the seventh
    could not start its threads, so such a node ran six python jobs at once at most."""
    done = subprocess.run([*as_user(4242), sys.executable, "-c", TEN_AT_ONCE_AS_THE_NODE], capture_output=True,
                          text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["ready"] * 10, done.stdout


def test_a_node_that_is_not_root_says_its_python_jobs_memory_is_held_by_rlimits_alone(tmp_path: Path) -> None:
    """This host's memory cgroups are root's: such a node has none to give its sandboxes, and its operator reads
    so in ``shoal id`` (on cgroup v2, ``test_cgroups.py`` shows a node given a cgroup of its own has them)."""
    home = Path(tempfile.mkdtemp(prefix="shoal-not-root-"))  # pytest's folders are root's alone
    os.chown(home, 4242, 4242)
    try:
        _says_rlimits_alone(home, tmp_path)
    finally:
        shutil.rmtree(home)


def _says_rlimits_alone(home: Path, tmp_path: Path) -> None:
    with noop_node(home, free_base_port(1), noop=False, user=4242) as ready:
        status = shoal(tmp_path / "client", ready["api"], "id", "--json")
        assert status.returncode == 0, status.stderr
        seen = json.loads(status.stdout)
        assert "python" in seen["engines"], seen["unavailable_engines"]
        assert seen["containment_notes"]["python"].startswith(
            "memory held by rlimits alone, not by a memory cgroup: this node may write no memory cgroup")
        table = shoal(tmp_path / "client", ready["api"], "id")
        assert "Python jobs" in table.stdout and "memory held by rlimits alone" in table.stdout, table.stdout
