"""One runner process serving many jobs of one owner (a sweep's indexes), against real Node.js and Pyodide.

Each job gets a fresh interpreter from the snapshot: its output must be byte for byte what a process
started for it alone gives, nothing one job does may reach the next, and owners never share a process.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest
import trio

from executors.base import Mount, RunRequest
from executors.cgroups import own_memory_cgroup
from executors.pyodide import FORGED_CONTROL, READY_WAIT, PyodideExecutor
from executors.users import UIDS_START
from jobs import JobSpec, OutputSpec, PythonEngine, Resources
from tests import vm

pytestmark = pytest.mark.skipif(
    not PyodideExecutor(Path("/nonexistent")).is_installed(), reason="Pyodide not installed: scripts/install-pyodide"
)

PROGRAM = """\
import asyncio, datetime, os, random, secrets, sys, tempfile, time, uuid
i = os.environ["i"]
print("index", i, sys.argv[1:])
print("random", random.random(), random.getrandbits(64))
print("urandom", os.urandom(8).hex(), secrets.token_hex(8), uuid.uuid4())
print("time", time.time(), time.monotonic(), datetime.datetime.now().isoformat())
print("hash", hash("abc"), list({"apple", "banana", "cherry"}))
print("modules", len(sys.modules), sorted(sys.modules)[:5])
print("tempfile", os.path.basename(tempfile.mktemp()), os.listdir("/tmp"), os.getcwd())
async def main():
    await asyncio.sleep(3)
    return time.monotonic()
print("asyncio", round(asyncio.run(main()), 3))
with open("/outputs/result.txt", "w") as f:
    f.write(f"{i}:{random.random()}")
print("to stderr", i, file=sys.stderr)
sys.exit(int(i) % 3)
"""

# Index 0 leaves traces of every kind; index 1 reports which it can see.
LEAVE_TRACES = """\
import builtins, os, random, sys
import sideeffect
builtins.LEAKED = "global"
sys.leaked = "sys attribute"
os.environ["LEAKED"] = "env"
os.makedirs("/tmp/leak", exist_ok=True)
open("/tmp/leak/file", "w").write("file")
open("/home/pyodide/leak", "w").write("home")
os.chdir("/tmp")
random.seed(42)
sys.setrecursionlimit(123)
print("left traces")
"""

LOOK_FOR_TRACES = """\
import builtins, os, random, sys
print("builtins", hasattr(builtins, "LEAKED"))
print("sys", hasattr(sys, "leaked"))
print("module", "sideeffect" in sys.modules, hasattr(sys, "imported_sideeffect"))
print("env", os.environ.get("LEAKED"))
print("files", os.path.exists("/tmp/leak"), os.path.exists("/home/pyodide/leak"), sorted(os.listdir("/tmp")))
print("cwd", os.getcwd())
print("recursion", sys.getrecursionlimit())
print("random", random.random())
"""

SIDE_EFFECT_MODULE = "import sys\nsys.imported_sideeffect = True\nprint('imported sideeffect')\n"


def request(tmp_path: Path, code: str, *, owner: str, index: int, seed: bytes | None = None,
            timeout: float = 600.0, memory: int = 256 << 20) -> RunRequest:
    ctx = tmp_path / "context"
    ctx.mkdir(exist_ok=True)
    (ctx / "sideeffect.py").write_text(SIDE_EFFECT_MODULE)
    work = tmp_path / f"work-{time.monotonic_ns()}"
    spec = JobSpec(engine=PythonEngine(code=code, args=["--index", str(index)]), env={"i": str(index)},
                   outputs=[OutputSpec(name="results", path="/outputs")], timeout=timeout,
                   resources=Resources(memory=memory, disk=64 << 20))
    return RunRequest("sweep-1", f"claim-{index}", spec, work, work / "outputs", (Mount(ctx, "/context"),),
                      seed if seed is not None else f"seed-{index}".encode(), owner=owner)


def node_processes() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if "node" in p.name()}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pyodide-cache")


@pytest.fixture
async def pooled(cache_dir: Path) -> AsyncIterator[PyodideExecutor]:
    executor = PyodideExecutor(cache_dir, pool_size=1)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run_pool)
        yield executor
        nursery.cancel_scope.cancel()
    assert executor.statistics().parked == 0


def outputs_of(req: RunRequest) -> str:
    return (req.outputs_dir / "results" / "result.txt").read_text()


async def test_a_sample_of_indexes_matches_a_fresh_interpreter_byte_for_byte(
        pooled: PyodideExecutor, cache_dir: Path, tmp_path: Path) -> None:
    fast, fast_files = [], []
    for index in range(6):
        req = request(tmp_path, PROGRAM, owner="requester-a/sweep-1", index=index)
        fast.append(await pooled.run(req))
        fast_files.append(outputs_of(req))
    assert pooled.statistics().reused_runs >= 4  # one process served the indexes one after another

    fresh = PyodideExecutor(cache_dir, pool_size=0)  # a new process for each job, used once
    for index in (0, 2, 5):
        req = request(tmp_path, PROGRAM, owner="", index=index)
        alone = await fresh.run(req)
        assert fresh.statistics().reused_runs == 0
        assert (alone.stdout, alone.stderr, alone.exit_code) == (
            fast[index].stdout, fast[index].stderr, fast[index].exit_code)
        assert outputs_of(req) == fast_files[index]
    assert fast[1].exit_code == 1 and fast[2].exit_code == 2
    assert fast[4].stdout.startswith("index 4 ['--index', '4']\n") and fast[4].stderr == "to stderr 4\n"
    assert len({r.stdout.splitlines()[1] for r in fast}) == 6  # each index its own seed


async def test_nothing_one_index_does_reaches_the_next(pooled: PyodideExecutor, tmp_path: Path) -> None:
    owner = "requester-a/sweep-2"
    first = await pooled.run(request(tmp_path, LEAVE_TRACES, owner=owner, index=0))
    assert first.exit_code == 0, first.stderr
    assert first.stdout == "imported sideeffect\nleft traces\n"
    seen = await pooled.run(request(tmp_path, LOOK_FOR_TRACES, owner=owner, index=1))
    assert pooled.statistics().reused_runs == 1
    fresh = await pooled.run(request(tmp_path, LOOK_FOR_TRACES, owner="requester-b/job-9", index=1))
    assert pooled.statistics().reused_runs == 1  # another owner: never the same process
    assert seen.exit_code == 0, seen.stderr
    assert seen.stdout == fresh.stdout
    lines = dict(line.split(" ", 1) for line in seen.stdout.splitlines())
    assert lines["builtins"] == lines["sys"] == "False"
    assert lines["module"] == "False False"
    assert lines["env"] == "None"
    assert lines["files"].startswith("False False")
    assert lines["recursion"] != "123"


# Job code that reaches Node.js (past the refused `js` module, as tests/integration/test_escape.py does)
# and writes to fd 1 and 2 outside Pyodide's streams: through console (now and in a promise's callback, which
# runs after its program ends) and through process._rawDebug, which no stream sees. (A timer left behind ends
# the process's service: test_a_job_that_leaves_a_timer_behind_is_its_process_last.)
REACH_NODE = """\
import importlib.util, sys
spec = next(s for f in sys.meta_path if (s := getattr(f, "find_spec", lambda *a: None)("js", None)))
js = importlib.util.module_from_spec(spec)
spec.loader.exec_module(js)
js.eval("console.log('from console'); Promise.resolve().then(() => console.log('late callback')); undefined")
print("from python")
"""


async def test_what_job_code_writes_through_node_is_its_output_and_never_the_next_ones(
        pooled: PyodideExecutor, tmp_path: Path) -> None:
    owner = "requester-a/sweep-7"
    with trio.fail_after(60):  # each job's timeout is 600 s: a runner that miscounted held its job until then
        first = await pooled.run(request(tmp_path, REACH_NODE, owner=owner, index=0))
        assert (first.exit_code, first.stdout) == (0, "from console\nfrom python\n"), first.stderr
        after = await pooled.run(request(tmp_path, "print('next')", owner=owner, index=1))
        assert (after.exit_code, after.stdout) == (0, "next\n")  # the late callback wrote nowhere
        assert pooled.statistics().reused_runs == 1
        raw = await pooled.run(request(tmp_path, REACH_NODE.replace("console.log('from console')",
                                                                    "process._rawDebug('raw')"), owner=owner, index=2))
        assert raw.exit_code == 0 and raw.stderr == "raw\n"  # more than the runner counted: still this job's
        last = await pooled.run(request(tmp_path, "print('clean')", owner=owner, index=3))
        assert (last.exit_code, last.stdout, last.stderr) == (0, "clean\n", "")
    assert pooled.statistics().reused_runs == 2  # the miscounting process served no job after its own


WRITE_TO_CONTROL = REACH_NODE.split("js.eval(")[0] + """\
argv = list(js.process.argv)
fd = int(argv[argv.index("--control-fd") + 1])
flood = ("(fd) => { const fs = process.getBuiltinModule('fs');"
         " for (let i = 0; i < 2000; i++) fs.writeSync(fd, '{}\\\\n'); }")
js.eval(flood)(fd)
print("wrote")
"""

BREAK_THE_NEXT_INTERPRETER = REACH_NODE.split("js.eval(")[0] + """\
js.eval("WebAssembly.instantiate = () => new Promise(() => {}); undefined")
grown = bytearray(20 << 20)  # no reset in place after this: the next interpreter is loaded anew
print("broken")
"""


async def test_a_job_writing_to_the_runners_control_channel_fails_and_is_stopped(
        pooled: PyodideExecutor, tmp_path: Path) -> None:
    """Job code can find the control channel's fd; 24 MiB of "{}" lines took 39 s of the node's CPU and
    618 MiB of its memory, each line parsed and kept. The first line that is not the runner's ends it."""
    owner = "requester-a/sweep-8"
    with trio.fail_after(60):
        forged = await pooled.run(request(tmp_path, WRITE_TO_CONTROL, owner=owner, index=0))
        after = await pooled.run(request(tmp_path, "print('next')", owner=owner, index=1))
    assert forged.exit_code == 1 and forged.stderr.endswith(FORGED_CONTROL + "\n"), forged.stderr
    assert (after.exit_code, after.stdout) == (0, "next\n")
    assert pooled.statistics().reused_runs == 0  # the forger's process served nothing after it


async def test_a_job_that_breaks_the_next_interpreter_costs_its_sibling_no_more_than_a_new_process(
        pooled: PyodideExecutor, tmp_path: Path) -> None:
    """The next index was handed to that process and waited for its interpreter with no bound (90 s and
    counting), then timed out for nothing it did."""
    owner = "requester-a/sweep-9"
    first = await pooled.run(request(tmp_path, BREAK_THE_NEXT_INTERPRETER, owner=owner, index=0))
    assert first.stdout == "broken\n", first.stderr
    with trio.fail_after(READY_WAIT + 30):
        after = await pooled.run(request(tmp_path, "print('next')", owner=owner, index=1, timeout=5))
    assert (after.exit_code, after.stdout) == (0, "next\n")


REWRITE_LATER_WRITES = REACH_NODE.split("js.eval(")[0] + """\
js.eval('''(() => {
  const fs = process.getBuiltinModule("fs"), real = fs.writeSync;
  fs.writeSync = function (fd, buf, off = 0, len, ...rest) {  // the same length, so the counts still match
    if (typeof buf === "string") return real.call(this, fd, buf, off, len, ...rest);
    len = len ?? buf.length - off;
    let text = Buffer.from(buf.buffer, buf.byteOffset + off, len).toString("latin1");
    text = fd === 1 ? text.replace(/hello/g, "HACKD") : text.replace(\'"code":0\', \'"code":3\');
    real.call(this, fd, Buffer.from(text, "latin1"), 0, len);
    return len;
  };
})()''')
print("patched")
"""


async def test_a_job_that_replaces_nodes_write_function_changes_nothing_of_the_next_job(
        pooled: PyodideExecutor, tmp_path: Path) -> None:
    """Node's fs module is one object that job code can reach: replacing its writeSync rewrote the next jobs'
    output and the exit codes the runner reported, and the runner served on."""
    owner = "requester-a/sweep-10"
    first = await pooled.run(request(tmp_path, REWRITE_LATER_WRITES, owner=owner, index=0))
    assert first.stdout == "patched\n", first.stderr
    after = await pooled.run(request(tmp_path, "print('hello')", owner=owner, index=1))
    assert (after.exit_code, after.stdout) == (0, "hello\n")


async def test_a_job_that_stops_nodes_clock_stops_no_later_jobs_clock(pooled: PyodideExecutor, tmp_path: Path) -> None:
    """``Date.now = () => 0`` in one job made every later job of its process print another time than a fresh
    process does: their results no longer matched other nodes'."""
    code = "import time; print(time.time(), time.monotonic())"
    fresh = await pooled.run(request(tmp_path, code, owner="requester-b/sweep-11", index=0))
    owner = "requester-a/sweep-11"
    stop = REACH_NODE.split("js.eval(")[0] + (
        "for how in ('Date.now = () => 0', 'globalThis.Date = function () { return 0 }',"
        " 'performance.now = () => 0'):\n    try:\n        js.eval(how)\n    except Exception as e:\n"
        "        print(type(e).__name__)\n")
    await pooled.run(request(tmp_path, stop, owner=owner, index=0))
    later = await pooled.run(request(tmp_path, code, owner=owner, index=0))
    assert pooled.statistics().reused_runs >= 1
    assert later.stdout == fresh.stdout


LEAVE_A_TIMER = REACH_NODE.split("js.eval(")[0] + """\
js.eval("globalThis.ticks = 0; setInterval(() => { globalThis.ticks++; }, 1); 0")
print("left a timer")
"""
READ_THE_TICKS = REACH_NODE.split("js.eval(")[0] + """\
print("ticks", js.eval("globalThis.ticks"))
"""


async def test_a_job_that_leaves_a_timer_behind_is_its_process_last(pooled: PyodideExecutor, tmp_path: Path) -> None:
    """A timer job code set in Node.js ran on between its owner's jobs and inside the next one, which could
    see it (and be changed by it) in the process it was given."""
    owner = "requester-a/sweep-13"
    first = await pooled.run(request(tmp_path, LEAVE_A_TIMER, owner=owner, index=0))
    assert (first.exit_code, first.stdout) == (0, "left a timer\n"), first.stderr
    after = await pooled.run(request(tmp_path, READ_THE_TICKS, owner=owner, index=1))
    assert (after.exit_code, after.stdout) == (0, "ticks None\n"), after.stderr  # a process the timer never ran in
    assert pooled.statistics().reused_runs == 0


HOLD_IN_JAVASCRIPT = REACH_NODE.split("js.eval(")[0] + """\
js.eval("globalThis.held = []; for (let i = 0; i < 32; i++) held.push(new Uint8Array(16 << 20).fill(1)); 0")
print("held 512 MiB")
"""


NO_MEMORY_CGROUP = pytest.mark.skipif(own_memory_cgroup() is None or vm.cgroup_v2_outside_the_vm(),
                                      reason="no memory cgroups set out for tests here (see test_cgroups.py)")


@NO_MEMORY_CGROUP
@pytest.mark.parametrize(("memory", "limit"), [(64, 448), (256, 640)])
async def test_what_job_code_holds_in_javascript_counts_against_its_memory(pooled: PyodideExecutor, tmp_path: Path,
                                                                          memory: int, limit: int) -> None:
    """V8's own objects were outside every count: a 64 MiB job held 512 MiB more in ArrayBuffers (and reached
    1.1 GiB in all), while the node had set aside only the job's memory. Then a 256 MiB job still held them,
    while its runner was allowed a second copy of the job's memory."""
    owner = f"requester-a/sweep-12-{memory}"
    with trio.fail_after(120):
        held = await pooled.run(request(tmp_path, HOLD_IN_JAVASCRIPT, owner=owner, index=0, memory=memory << 20))
        after = await pooled.run(request(tmp_path, "print('next')", owner=owner, index=1, memory=memory << 20))
    assert held.stdout == "" and held.exit_code == 137, held.stdout
    assert f"shoal: out of memory: the job's processes reached {limit} MiB, all the Python runtime may hold for a " \
           f"job of {memory} MiB" in held.stderr, held.stderr
    assert (after.exit_code, after.stdout) == (0, "next\n")


WRITE_A_LARGE_FILE = """\
with open("/tmp/data", "wb") as f:
    for _ in range(470):
        f.write(b"x" * (1 << 20))
    print(f.tell() >> 20)
"""


@NO_MEMORY_CGROUP
async def test_a_file_that_fills_its_jobs_memory_is_written_whole(pooled: PyodideExecutor, tmp_path: Path) -> None:
    """A file in /tmp grew by being copied into a larger array, and the old one and the new were resident
    together: a 512 MiB job writing 470 MiB held twice the file, and went past its memory cgroup."""
    with trio.fail_after(120):
        result = await pooled.run(request(tmp_path, WRITE_A_LARGE_FILE, owner="requester-a/sweep-15", index=0,
                                          memory=512 << 20))
    assert (result.exit_code, result.stdout) == (0, "470\n"), result.stderr[-300:]


REPLACE_A_FILE = """\
import os
data = b"x" * (60 << 20)
for _ in range(12):
    with open("/tmp/scratch", "wb") as f:
        f.write(data)
    os.remove("/tmp/scratch")
print("done")
"""


@NO_MEMORY_CGROUP
async def test_files_written_and_deleted_over_and_over_are_freed(pooled: PyodideExecutor, tmp_path: Path) -> None:
    """A deleted file's array was garbage that V8 kept: a 256 MiB job writing a 60 MiB file and deleting it,
    twelve times, counted at most 120 MiB and went past its memory cgroup on the fourth round."""
    with trio.fail_after(120):
        result = await pooled.run(request(tmp_path, REPLACE_A_FILE, owner="requester-a/sweep-16", index=0))
    assert (result.exit_code, result.stdout) == (0, "done\n"), result.stderr[-300:]


FILL_THE_MEMORY = """\
import sys
if int(sys.argv[2]) % 2 == 0:  # about 200 MiB of heap: a float and its slot in the list
    print(sys.argv[2], len([i * 0.5 for i in range(200 * (1 << 20) // 32)]))
else:  # a 220 MiB file in /tmp
    with open("/tmp/data", "wb") as f:
        for _ in range(220):
            f.write(b"x" * (1 << 20))
        print(sys.argv[2], f.tell())
"""


async def test_a_sweep_whose_indexes_fill_their_memory_runs_every_index(pooled: PyodideExecutor,
                                                                        tmp_path: Path) -> None:
    """The runner kept the last interpreter referenced while it collected before the next one, so both were
    held at once: every second index of a 256 MiB sweep that filled its heap went past its memory cgroup.
    Then an interpreter reset in place kept the files its job wrote in memory until V8 chose to collect them:
    the index after one that filled /tmp went past it too (index 2 here, once in CI with 200 MiB files)."""
    owner = "requester-a/sweep-14"
    with trio.fail_after(300):
        results = [await pooled.run(request(tmp_path, FILL_THE_MEMORY, owner=owner, index=i)) for i in range(3)]
    assert [(r.exit_code, r.stdout) for r in results] == [
        (0, "0 6553600\n"), (0, f"1 {220 << 20}\n"), (0, "2 6553600\n")], [r.stderr[-300:] for r in results]
    assert pooled.statistics().reused_runs == 2


async def test_owners_never_share_a_process(pooled: PyodideExecutor, tmp_path: Path) -> None:
    code = "import os; print(os.environ['i'])"
    for i, owner in enumerate(["requester-a/sweep-3", "requester-b/sweep-3", "requester-a/sweep-4",
                               "requester-a/sweep-4"]):
        result = await pooled.run(request(tmp_path, code, owner=owner, index=i))
        assert result.exit_code == 0 and result.stdout == f"{i}\n", result.stderr
    stats = pooled.statistics()
    assert stats.reused_runs == 1  # only the last: its owner's second job
    assert stats.warm_runs + stats.cold_runs == 3


async def test_a_runaway_index_is_killed_and_its_siblings_run_on(pooled: PyodideExecutor, tmp_path: Path) -> None:
    owner = "requester-a/sweep-5"
    (parked,) = node_processes()  # the pool's interpreter: it runs index 0, then waits for index 1
    ok = await pooled.run(request(tmp_path, "print('before')", owner=owner, index=0))
    assert ok.stdout == "before\n" and pooled.statistics().warm_runs == 1
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError), trio.fail_after(1.5):
        await pooled.run(request(tmp_path, "while True:\n    pass\n", owner=owner, index=1, timeout=1.0))
    assert trio.current_time() - t0 < 3.0
    with trio.move_on_after(3):
        while parked in node_processes():  # killed with its index
            await trio.sleep(0.05)
    assert parked not in node_processes()
    after = await pooled.run(request(tmp_path, "print('after')", owner=owner, index=2))
    assert after.exit_code == 0 and after.stdout == "after\n"


async def test_a_job_without_an_owner_is_its_process_last(pooled: PyodideExecutor, tmp_path: Path) -> None:
    code = "import sys; print(sorted(m for m in sys.modules if 'shoal' in m))"
    before = node_processes()
    alone = await pooled.run(request(tmp_path, code, owner="", index=0))
    assert alone.exit_code == 0 and alone.stdout == "[]\n", alone.stderr  # the runner's driver is not the job's
    assert pooled.statistics().parked == 0 and pooled.statistics().warm_runs == 1
    with trio.move_on_after(10):
        while before & node_processes():  # killed after its one job, not kept for another
            await trio.sleep(0.05)
    assert not before & node_processes()
    shared = await pooled.run(request(tmp_path, code, owner="requester-a/sweep-6", index=0))
    assert shared.stdout == alone.stdout and pooled.statistics().parked == 1


async def test_the_runner_loads_no_interpreter_after_a_last_job(cache_dir: Path, tmp_path: Path) -> None:
    executor = PyodideExecutor(cache_dir, pool_size=0, unsandboxed=True)
    snapshot = await executor._ensure_snapshot()
    read_fd, write_fd = os.pipe()
    process = await trio.lowlevel.open_process(
        [*executor._node_command(), "--control-fd", str(write_fd), "--snapshot", str(snapshot)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, pass_fds=(write_fd,), cwd=executor.runner_dir)
    os.close(write_fd)
    control = trio.lowlevel.FdStream(read_fd)
    received = b""

    async def message() -> dict:
        nonlocal received
        while b"\n" not in received:
            received += await control.receive_some(4096)
        line, received = received.split(b"\n", 1)
        return json.loads(line)

    job = {"seed": "00", "mounts": [], "cwd": None, "main": None, "code": "print(1)", "argv": [], "env": {},
           "wheels": [], "memory_limit": 0}
    try:
        with trio.fail_after(300):
            assert (await message())["event"] == "ready"
            for last in (False, True):
                await process.stdin.send_all(json.dumps({**job, "last": last}).encode() + b"\n")
                assert (await message())["event"] == "exit"
                if not last:
                    assert (await message())["event"] == "ready"  # the next job's interpreter
        with trio.move_on_after(3):
            extra = await message()
            pytest.fail(f"the runner sent {extra} after its last job")
        await process.stdin.aclose()
        with trio.fail_after(30):
            assert await process.wait() == 0
    finally:
        process.kill()
        await control.aclose()


# Reset in place (runner.mjs Checkpoint): the interpreter that ran an index is put back as it was loaded and
# runs the next. Each case: what index 0 does, and a program that prints what index 1 could see of it.
LEAK_PATHS = {
    "module global": ("import json, builtins\njson.LEAKED = 1\nbuiltins.LEAKED = 2\nLEAKED = 3\n",
                      "import json, builtins\nprint(hasattr(json, 'LEAKED'), hasattr(builtins, 'LEAKED'),"
                      " 'LEAKED' in globals())\n"),
    "stdlib module mutated": ("import json, os.path\njson.dumps = lambda *a, **k: 'patched'\n"
                              "os.path.join = None\n",
                              "import json, os.path\nprint(json.dumps([1]), os.path.join('a', 'b'))\n"),
    "imports": ("import sideeffect, xml.dom.minidom, sys\nsys.modules['fake'] = sys\n",
                "import sys\nprint(len(sys.modules), sorted(sys.modules)[-5:], 'xml.dom.minidom' in sys.modules,"
                " hasattr(sys, 'imported_sideeffect'), 'fake' in sys.modules)\n"),
    "files": ("import os\nos.makedirs('/tmp/a/b')\nopen('/tmp/x', 'w').write('x' * 100000)\n"
              "open('/home/pyodide/y', 'w').write('y')\n"
              "os.rename('/tmp', '/tmp2')\n",
              "import os\nprint(sorted(os.listdir('/tmp')), sorted(os.listdir('/home/pyodide')),"
              " sorted(os.listdir('/')), sorted(os.listdir('/lib')))\nopen('/tmp/new', 'w').close()\n"
              "print(os.stat('/tmp/new').st_ino, os.stat('/tmp/new').st_mtime)\n"),
    "cwd": ("import os\nos.chdir('/tmp')\n", "import os\nprint(os.getcwd(), os.environ['PWD'])\n"),
    "environment": ("import os\nos.environ['LEAKED'] = '1'\nos.putenv('PUT', '2')\nos.umask(0o077)\n",
                    "import os\nprint(sorted(os.environ), os.umask(0))\n"),
    "entropy and clock": ("import os, random, time, uuid\nrandom.seed(42)\nos.urandom(5000)\n"
                          "[time.time() for _ in range(1000)]\nuuid.uuid4()\n",
                          "import os, random, time, uuid, secrets\nprint(random.random(), os.urandom(8).hex(),"
                          " secrets.token_hex(4), uuid.uuid4(), time.time(), time.monotonic())\n"),
    "interpreter settings": ("import sys, gc, warnings\nsys.setrecursionlimit(123)\nsys.path.insert(0, '/x')\n"
                             "gc.disable()\nwarnings.simplefilter('error')\nsys.stdout = None\n",
                             "import sys, gc, warnings\nprint(sys.getrecursionlimit(), sys.path[:3], gc.isenabled(),"
                             " warnings.filters[0])\n"),
    "open files": ("kept = [open('/tmp/f%d' % i, 'w') for i in range(5)]\nr = open('/context/sideeffect.py')\n",
                   "f = open('/tmp/g', 'w')\nprint(f.fileno())\n"),
    "memory growth": ("x = bytearray(96 << 20)\n", "import sys\nprint(len(sys.modules))\n"),
}


@pytest.mark.parametrize("case", list(LEAK_PATHS))
async def test_a_reset_interpreter_keeps_nothing_of_the_previous_index(
        pooled: PyodideExecutor, tmp_path: Path, case: str) -> None:
    leave, look = LEAK_PATHS[case]
    owner = f"requester-a/leak-{case}"
    first = await pooled.run(request(tmp_path, leave, owner=owner, index=0))
    assert first.exit_code == 0, first.stderr
    seen = await pooled.run(request(tmp_path, look, owner=owner, index=1))
    assert pooled.statistics().reused_runs == 1
    # Memory that grew cannot be put back: the next index gets a freshly loaded interpreter instead.
    assert pooled.statistics().reset_runs == (0 if case == "memory growth" else 1)
    fresh = await pooled.run(request(tmp_path, look, owner="requester-b/look", index=1))
    assert seen.exit_code == fresh.exit_code == 0, seen.stderr
    assert (seen.stdout, seen.stderr) == (fresh.stdout, fresh.stderr)


async def test_a_sweep_resets_one_interpreter_for_index_after_index(pooled: PyodideExecutor, tmp_path: Path) -> None:
    results = [await pooled.run(request(tmp_path, PROGRAM, owner="requester-a/sweep-7", index=i)) for i in range(5)]
    stats = pooled.statistics()
    assert stats.reused_runs == stats.reset_runs == 4
    assert [r.stdout.split("\n", 1)[0] for r in results] == [f"index {i} ['--index', '{i}']" for i in range(5)]


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root node runs its sandboxes as other uids")
async def test_each_interpreter_runs_as_a_host_uid_of_its_own(cache_dir: Path, tmp_path: Path) -> None:
    """Per-uid limits (processes and threads, pending signals, inotify) are each interpreter's own: the warm
    pool's and a job's Node.js run as two uids, neither 65534 nor the node's, and a uid is free again once
    its interpreter is gone."""
    executor = PyodideExecutor(cache_dir, pool_size=2)
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run_pool)
        with trio.fail_after(READY_WAIT * 2):
            while executor.statistics().idle < 2:
                await trio.sleep(0.1)
        uids = [psutil.Process(pid).uids().real for pid in node_processes()]
        result = await executor.run(request(tmp_path, "print('ran')", owner="requester-a/sweep-9", index=0))
        assert result.exit_code == 0 and result.stdout == "ran\n", result.stderr
        nursery.cancel_scope.cancel()
    assert len(uids) == 2 and len(set(uids)) == 2, uids
    assert min(uids) >= UIDS_START  # never root, never the 65534 every sandbox once shared
    assert not node_processes()
    again = executor.sandbox.new_slot()
    try:
        assert again.owner == min(uids)  # handed out again, now that its interpreter is gone
    finally:
        again.remove()


@pytest.mark.skipif(os.geteuid() != 0, reason="only a root node runs its sandboxes as other uids")
async def test_a_job_cancelled_while_its_interpreter_starts_leaves_no_uid_taken(
        cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    executor = PyodideExecutor(cache_dir, pool_size=0)
    sandbox = executor.sandbox
    assert executor.problem() is None  # checked now, with a slot of its own
    make_slot = sandbox.new_slot
    slots = []

    def cancelled_once_made():  # the job is cancelled just as its sandbox's slot (and uid) is made
        slots.append(make_slot())
        trio.from_thread.run_sync(scope.cancel)
        return slots[-1]

    monkeypatch.setattr(sandbox, "new_slot", cancelled_once_made)
    with trio.CancelScope() as scope:
        await executor.run(request(tmp_path, "print('never')", owner="requester-a/sweep-8", index=0))
    assert scope.cancelled_caught and len(slots) == 1
    assert not slots[0].path.exists()
    monkeypatch.undo()
    again = sandbox.new_slot()
    try:
        assert again.owner == slots[0].owner  # given back: the lowest free uid again
    finally:
        again.remove()
    assert not node_processes()
