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
from tests.integration.test_docker_executor import client  # noqa: F401 (a fixture: a Docker daemon answers)
from tests.integration.test_escape import BYPASS
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


# As a node that is not root: a job makes a folder of its outputs one the node may not list (mode 300; its
# processes are the node's own user) and writes 40 MiB into it, past its 4 MiB of disk. Then the node removes
# the run's folder, as the runner does. Prints what the run said and whether anything of it is left.
SHUT_OUT = """\
import json, sys
from pathlib import Path
import trio
from executors.base import RunRequest
from jobs import JobSpec
from storage.trees import remove_tree

engine, work, cache, code = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
WRITE = "mkdir /outputs/h && chmod 300 /outputs/h && " \\
        "for i in $(seq 1 10); do dd if=/dev/zero of=/outputs/h/f$i bs=1M count=4 2>/dev/null; done"

async def main():
    if engine == "docker":
        from executors.docker import DockerExecutor
        executor = DockerExecutor("shut-out-test")
        spec = JobSpec(engine={"name": "docker", "image": "busybox:latest", "entrypoint": ["sh", "-c"],
                               "args": [WRITE]}, resources={"disk": "4MiB"}, timeout=60,
                       outputs=[{"name": "out", "path": "/outputs"}])
    else:
        from executors.pyodide import PyodideExecutor
        executor = PyodideExecutor(cache, pool_size=0)
        spec = JobSpec(engine={"name": "python", "code": code}, resources={"disk": "4MiB"}, timeout=60,
                       outputs=[{"name": "out", "path": "/outputs"}])
    request = RunRequest("job-1", "job-1-ex", spec, work, work / "outputs", (), b"seed")
    result = await executor.run(request)
    remove_tree(work)
    print(json.dumps({"exit_code": result.exit_code, "stderr": result.stderr.strip(), "left": work.exists()}))

trio.run(main)
"""


# the python job: through Node's fs (reached past the refusal of `import js`), the same as WRITE
REACH_FS = BYPASS + """
js.eval("const fs = process.getBuiltinModule('fs'); const out = '/job/rw/' + fs.readdirSync('/job/rw')[0]; "
        "fs.mkdirSync(out + '/h'); fs.chmodSync(out + '/h', 0o300); const b = Buffer.alloc(4 << 20); "
        "for (let i = 0; i < 10; i++) fs.writeFileSync(out + '/h/f' + i, b); undefined")
"""


@pytest.mark.parametrize("engine", ["python", "docker"])
def test_a_job_shutting_a_node_that_is_not_root_out_of_its_folder_is_held_to_its_disk_and_removed(engine, request
                                                                                                    ) -> None:
    """Its writes escaped the disk watch, which could not list the folder, and stayed on the node's disk after
    the run (200 MiB of a 4 MiB job, the reviewer's figure): the node now gives itself the folder back."""
    if engine == "docker":
        request.getfixturevalue("client")  # a Docker daemon answers, with busybox built
    home = Path(tempfile.mkdtemp(prefix="shoal-not-root-"))  # pytest's folders are root's alone
    os.chown(home, 4242, 4242)
    try:
        # docker: in the group that may use the daemon, as terraform/'s shoal user is
        groups = ["--groups", str(os.stat("/var/run/docker.sock").st_gid)] if engine == "docker" else ["--clear-groups"]
        command = ["setpriv", "--reuid=4242", "--regid=4242", *groups, "--", sys.executable, "-c", SHUT_OUT,
                   engine, str(home / "run"), str(home / "cache"), REACH_FS]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO,
                              env={**os.environ, "HOME": str(home), "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
        said = json.loads(done.stdout.splitlines()[-1])
        assert said["exit_code"] != 0
        assert said["stderr"].startswith("disk limit exceeded: wrote more than 4194304 bytes"), said
        assert said["left"] is False and not (home / "run").exists()  # as root sees it: nothing of the run
    finally:
        shutil.rmtree(home)


# As a node that is not root: folders a job made and shut the node out of, every way a mode can (no search,
# no listing, nothing), each holding 4 MiB; and one shut below a path longer than the walks go. Prints what the
# disk watch counts, and what is left once the node removed them.
SHUT_EVERY_WAY = """\
import json, os, sys
from pathlib import Path
from executors._common import written_in
from storage.trees import remove_tree

home, counted = Path(sys.argv[1]), {}
for mode in (0o600, 0o400, 0o300, 0o000):
    outputs = home / oct(mode) / "outputs"
    (outputs / "h").mkdir(parents=True)
    (outputs / "h" / "f").write_bytes(bytes(4 << 20))
    os.chmod(outputs / "h", mode)
    counted[oct(mode)] = written_in([outputs], 10_000).content
deep = home / "deep"
for _ in range(14):  # 3,514 bytes of path below it
    deep = deep / ("d" * 250)
(deep / "shut").mkdir(parents=True)
(deep / "shut" / "f").write_bytes(bytes(1 << 20))
os.chmod(deep / "shut", 0)
for folder in home.iterdir():
    remove_tree(folder)
print(json.dumps({"counted": counted, "left": sorted(p.name for p in home.iterdir())}))
"""


def test_a_folder_a_job_shut_a_node_that_is_not_root_out_of_is_counted_and_removed_however_shut() -> None:
    """A folder the node could list but not look into (mode 600) hid 40 MiB from the disk watch, and one shut
    below a path longer than 3,000 bytes could not be removed: its disk was lost for good."""
    home = Path(tempfile.mkdtemp(prefix="shoal-not-root-"))  # pytest's folders are root's alone
    os.chown(home, 4242, 4242)
    try:
        done = subprocess.run([*as_user(4242), sys.executable, "-c", SHUT_EVERY_WAY, str(home)], capture_output=True,
                              text=True, timeout=120, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
        assert done.returncode == 0, done.stderr[-2000:]
        said = json.loads(done.stdout)
        assert said["counted"] == {mode: 4096 + (4 << 20) for mode in ("0o600", "0o400", "0o300", "0o0")}
        assert said["left"] == []
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", "--", str(home)], check=False)
        shutil.rmtree(home)
