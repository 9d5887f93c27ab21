"""The python executor against real Node.js and Pyodide (installed by scripts/install-pyodide)."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest
import trio

from executors.base import ExecutorError, Mount, RunRequest
from executors.pyodide import PyodideExecutor
from jobs import JobSpec, OutputSpec, PythonEngine, Resources
from tests.integration.test_escape import BYPASS

pytestmark = pytest.mark.skipif(
    not PyodideExecutor(Path("/nonexistent")).is_installed(), reason="Pyodide not installed: scripts/install-pyodide"
)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot for the whole module: building it takes seconds."""
    return tmp_path_factory.mktemp("pyodide-cache")


@pytest.fixture
def executor(cache_dir: Path) -> PyodideExecutor:
    return PyodideExecutor(cache_dir, pool_size=1)


def request(
    tmp_path: Path,
    *,
    main: str | None = None,
    code: str | None = None,
    args: list[str] | None = None,
    context: dict[str, str | bytes] | None = None,
    inputs: dict[str, str] | None = None,
    requirements: list[str] | None = None,
    seed: bytes = b"seed-1",
) -> RunRequest:
    ctx = tmp_path / "context"
    ctx.mkdir(exist_ok=True)
    for name, content in (context or {}).items():
        path = ctx / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    mounts = [Mount(ctx, "/context")]
    if inputs:
        data = tmp_path / "inputs"
        data.mkdir(exist_ok=True)
        for name, text in inputs.items():
            (data / name).write_text(text)
        mounts.append(Mount(data, "/inputs"))
    work = tmp_path / f"work-{time.monotonic_ns()}"
    spec = JobSpec(
        engine=PythonEngine(main=main, code=code, args=args or [], requirements=requirements or []),
        outputs=[OutputSpec(name="results", path="/outputs")],
    )
    return RunRequest("job-1", "job-1-ex", spec, work, work / "outputs", tuple(mounts), seed)


def node_children() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True) if "node" in p.name()}


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    before = node_children()
    yield
    assert node_children() <= before, "a Node.js process outlived the test"


async def test_hello_world(executor: PyodideExecutor, tmp_path: Path) -> None:
    assert executor.is_installed()
    result = await executor.run(request(tmp_path, code="print('hello from pyodide')"))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello from pyodide\n", "")
    assert result.started_at is not None and result.finished_at is not None
    assert executor.statistics().cold_runs == 1


MAIN = """\
import os, sys
from helper import shout

print(sys.argv, os.getcwd())
print(open("notes.txt").read().strip())          # the context is the working directory
data = open("/inputs/data.txt").read()
with open("/outputs/result.txt", "w") as f:
    f.write(shout(data))
try:
    open("/inputs/data.txt", "w")
except OSError as e:
    print("inputs are read-only:", e.strerror)
"""


async def test_main_reads_inputs_and_writes_outputs(executor: PyodideExecutor, tmp_path: Path) -> None:
    req = request(
        tmp_path,
        main="main.py",
        args=["--n", "3"],
        context={"main.py": MAIN, "helper.py": "def shout(s):\n    return s.upper()\n", "notes.txt": "context ok"},
        inputs={"data.txt": "some data"},
    )
    result = await executor.run(req)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [
        "['/context/main.py', '--n', '3'] /context",
        "context ok",
        "inputs are read-only: Read-only file system",
    ]
    assert (req.outputs_dir / "results" / "result.txt").read_text() == "SOME DATA"
    assert (tmp_path / "inputs" / "data.txt").read_text() == "some data"


async def test_exit_code(executor: PyodideExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, code="import sys\nprint('bye', file=sys.stderr)\nsys.exit(3)"))
    assert (result.exit_code, result.stderr) == (3, "bye\n")


@pytest.mark.parametrize("value", ["False", "True", "-1", "'no way'"])
async def test_sys_exit_ends_the_program_as_cpython_does(executor: PyodideExecutor, tmp_path: Path,
                                                         value: str) -> None:
    code = f"import sys\nsys.exit({value})"
    cpython = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    result = await executor.run(request(tmp_path, code=code))
    assert (result.exit_code, result.stderr) == (cpython.returncode, cpython.stderr)


async def test_exception_fails_with_traceback(executor: PyodideExecutor, tmp_path: Path) -> None:
    program = "def f():\n    raise ValueError('boom')\n\nprint('before')\nf()\n"
    result = await executor.run(request(tmp_path, main="main.py", context={"main.py": program}))
    assert result.exit_code == 1
    assert result.stdout == "before\n"
    assert result.stderr == (
        "Traceback (most recent call last):\n"
        '  File "/context/main.py", line 5, in <module>\n'
        "    f()\n"
        "    ~^^\n"
        '  File "/context/main.py", line 2, in f\n'
        "    raise ValueError('boom')\n"
        "ValueError: boom\n"
    )


async def test_syntax_error(executor: PyodideExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, main="main.py", context={"main.py": "print('ok')\nif True\n"}))
    assert result.exit_code == 1
    assert result.stdout == ""  # nothing ran
    assert '  File "/context/main.py", line 2' in result.stderr
    assert "SyntaxError" in result.stderr


async def test_missing_script_fails_like_python(executor: PyodideExecutor, tmp_path: Path) -> None:
    result = await executor.run(request(tmp_path, main="nope.py"))
    assert result.exit_code == 2
    assert "can't open file '/context/nope.py'" in result.stderr


async def test_memory_limit_raises_memory_error(executor: PyodideExecutor, tmp_path: Path) -> None:
    program = "blocks = []\nwhile True:\n    blocks.append(bytearray(1 << 20))\n"
    req = request(tmp_path, code=program)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="96MiB")}))
    result = await executor.run(req)
    assert result.exit_code == 1
    assert "MemoryError" in result.stderr
    assert "memory limit: the program needed more than 96 MiB (resources.memory)" in result.stderr


async def test_a_program_that_gets_over_a_memory_error_is_not_told_it_failed(executor: PyodideExecutor,
                                                                            tmp_path: Path) -> None:
    program = "try:\n    bytearray(1 << 30)\nexcept MemoryError:\n    print('smaller then')\n"
    result = await executor.run(request(tmp_path, code=program))
    assert (result.exit_code, result.stdout, result.stderr) == (0, "smaller then\n", "")


FILL_TMP = """
import os
chunk, written = b"x" * (1 << 20), 0
try:
    with open("/tmp/fill", "wb") as f:
        while written < 2048:
            f.write(chunk)
            written += 1
except OSError as e:
    print(written, e.strerror)
os.remove("/tmp/fill")
with open("/tmp/again", "wb") as f:  # the room of a deleted file comes back
    f.write(chunk * 20)
print("again")
"""


async def test_files_kept_in_memory_count_against_the_memory_limit(executor: PyodideExecutor, tmp_path: Path) -> None:
    """Files in /tmp live in the runner's JavaScript memory, beside the heap the limit held: a 64 MiB job
    kept 300 MiB there, and writing more took the runner down (a node error, retried elsewhere)."""
    req = request(tmp_path, code=FILL_TMP)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="96MiB")}))
    result = await executor.run(req)
    assert result.exit_code == 0, result.stderr
    (written, why), again = result.stdout.splitlines()[0].split(" ", 1), result.stdout.splitlines()[1]
    assert int(written) < 96 and why == "No space left on device" and again == "again"
    assert "counting the files it keeps in memory (/tmp)" in result.stderr


GROWN_IN_PLACE = """
with open("/tmp/f", "wb") as f:  # 20 MiB: past 8 MiB the file's array grows in place
    for i in range(20):
        f.write(bytes([i]) * (1 << 20))
with open("/tmp/f", "r+b") as f:
    f.truncate(12 << 20)
    f.seek(15 << 20)
    f.write(b"end")  # a hole of zeros before it
first = open("/tmp/f", "rb").read()
with open("/tmp/f", "r+b") as f:
    f.truncate(1 << 20)  # back below 8 MiB
    f.seek(9 << 20)
    f.write(b"again")
second = open("/tmp/f", "rb").read()
print(first == b"".join(bytes([i]) * (1 << 20) for i in range(12)) + bytes(3 << 20) + b"end",
      second == bytes(1 << 20) + bytes(8 << 20) + b"again")
"""


async def test_a_large_file_reads_back_what_was_written_through_growth_truncation_and_holes(
        executor: PyodideExecutor, tmp_path: Path) -> None:
    req = request(tmp_path, code=GROWN_IN_PLACE)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="256MiB")}))
    result = await executor.run(req)
    assert (result.exit_code, result.stdout) == (0, "True True\n"), result.stderr[-300:]


WHOLE_FILES = """
blob, written = b"x" * (16 << 20), 0
try:
    for i in range(40):
        open(f"/tmp/f{i}", "wb").write(blob)  # each file's first bytes given whole (Emscripten's fast path)
        written += 1
except OSError as e:
    print(written, e.strerror)
"""

SHRINK_FOR_CREDIT = """
import os
blob = b"x" * (16 << 20)
for i in range(36):  # each file holds 16 MiB for a moment, then 1 byte
    open(f"/tmp/c{i}", "wb").write(blob)
    os.truncate(f"/tmp/c{i}", 1)
try:
    keep = bytearray(512 << 20)
    print("held 512 MiB")
except MemoryError:
    print("MemoryError")
"""


async def test_files_written_whole_count_and_shrinking_one_gives_back_no_more_than_it_took(
        executor: PyodideExecutor, tmp_path: Path) -> None:
    """A plain ``open(...).write(data)`` of a new file went past the count (16 files, 512 MiB held by a 64 MiB
    job); and shrinking such a file then counted below zero, which let the heap itself grow past the limit."""
    for code, expected in ((WHOLE_FILES, "No space left on device"), (SHRINK_FOR_CREDIT, "MemoryError")):
        req = request(tmp_path, code=code)
        req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(memory="96MiB")}))
        result = await executor.run(req)
        assert result.exit_code == 0, result.stderr
        assert result.stdout.strip().endswith(expected), result.stdout
        if code is WHOLE_FILES:
            assert int(result.stdout.split()[0]) < 6


def wheel(path: Path, name: str = "tinypkg", version: str = "1.0") -> Path:
    """A minimal pure-Python wheel, zipped by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": "def greet(who):\n    return f'hello {who} from " + name + "'\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)
    return path


async def test_requirements_are_installed_offline(executor: PyodideExecutor, tmp_path: Path) -> None:
    wheel(tmp_path / "context" / "wheels" / "tinypkg-1.0-py3-none-any.whl")
    req = request(
        tmp_path,
        code="import tinypkg\nprint(tinypkg.greet('job'))",
        requirements=["wheels/tinypkg-1.0-py3-none-any.whl"],
    )
    result = await executor.run(req)
    assert (result.exit_code, result.stdout) == (0, "hello job from tinypkg\n"), result.stderr


async def test_a_requirement_that_is_not_a_pure_python_wheel_fails_clearly(
    executor: PyodideExecutor, tmp_path: Path
) -> None:
    platform_wheel = "wheels/numpy-2.0.0-cp312-cp312-manylinux_2_17_x86_64.whl"
    wheel(tmp_path / "context" / platform_wheel, "numpy", "2.0.0")
    for requirement, reason in [
        (platform_wheel, "not a pure-Python wheel"),
        ("requests==2.32", "not a wheel file"),
        ("wheels/absent-1.0-py3-none-any.whl", "no such file"),
    ]:
        result = await executor.run(request(tmp_path, code="print(1)", requirements=[requirement]))
        assert result.exit_code == 1
        assert requirement in result.stderr and reason in result.stderr
    assert executor.statistics().cold_runs == 0  # refused before spending an interpreter


async def test_deadline_kills_a_cold_start(executor: PyodideExecutor, tmp_path: Path) -> None:
    t0 = trio.current_time()
    with pytest.raises(trio.TooSlowError), trio.fail_after(0.3):
        await executor.run(request(tmp_path, code="print(1)"))
    assert trio.current_time() - t0 < 2.0


async def test_deadline_kills_a_running_program_promptly(executor: PyodideExecutor, tmp_path: Path) -> None:
    before = node_children()
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run_pool)
        (runner_pid,) = node_children() - before
        t0 = trio.current_time()
        with pytest.raises(trio.TooSlowError), trio.fail_after(1.5):
            await executor.run(request(tmp_path, code="while True:\n    pass\n"))
        assert trio.current_time() - t0 < 3.0
        while not gone(runner_pid) and trio.current_time() - t0 < 3.0:  # killed; the kernel may lag a moment
            await trio.sleep(0.05)
        assert gone(runner_pid)
        assert executor.statistics().warm_runs == 1
        nursery.cancel_scope.cancel()  # stops the pool and kills the interpreter it was starting


async def test_a_stopped_pool_leaves_no_sandbox_folder(executor: PyodideExecutor, tmp_path: Path) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(executor.run_pool)
        result = await executor.run(request(tmp_path, code="print(6 * 7)"))
        assert result.stdout == "42\n"
        root = executor.sandbox.root()
        assert any(root.glob("*.snapshot"))  # the interpreters' copy of the snapshot
        nursery.cancel_scope.cancel()
    assert not root.exists()  # a stopped node leaves nothing of it in /tmp


DETERMINISM = """\
import asyncio, datetime, os, random, secrets, tempfile, time, uuid
print("random", random.random(), random.getrandbits(64), random.choice("abcdefgh"))
print("urandom", os.urandom(8).hex(), secrets.token_hex(8), random.SystemRandom().random())
print("uuid4", uuid.uuid4())
print("time", time.time(), time.monotonic(), time.perf_counter(), datetime.datetime.now().isoformat())
t = time.monotonic(); time.sleep(5); print("slept", round(time.monotonic() - t, 1))
print("hash", hash("abc"), hash(b"abc"), hash(("a", 1)))
print("set", list({"apple", "banana", "cherry", "date", "elderberry", "fig"}))
print("dict", list({str(i): i for i in range(5)}))
print("tempfile", os.path.basename(tempfile.mktemp()))
async def race():
    finished = []
    async def sleeper(i):
        await asyncio.sleep(10 - i)
        finished.append(i)
    await asyncio.gather(*(sleeper(i) for i in range(3)))
    return finished
print("asyncio", asyncio.run(race()), round(time.monotonic() - t, 1))
"""


async def test_deterministic_across_runs_executors_and_warm_or_cold(cache_dir: Path, tmp_path: Path) -> None:
    pooled = PyodideExecutor(cache_dir, pool_size=1)
    cold = PyodideExecutor(cache_dir, pool_size=0)
    req = request(tmp_path, code=DETERMINISM)
    async with trio.open_nursery() as nursery:
        await nursery.start(pooled.run_pool)
        warm = await pooled.run(req)  # an interpreter that was loaded before the job's seed was known
        nursery.cancel_scope.cancel()
    first_cold = await cold.run(req)
    second_cold = await cold.run(req)
    other_seed = await cold.run(request(tmp_path, code=DETERMINISM, seed=b"seed-2"))

    assert pooled.statistics().warm_runs == 1 and cold.statistics().cold_runs == 3
    assert warm.exit_code == 0, warm.stderr
    assert warm.stdout == first_cold.stdout == second_cold.stdout
    lines = dict(line.split(" ", 1) for line in first_cold.stdout.splitlines())
    assert lines["time"].startswith("1704067200.0")  # the virtual clock starts at 2024-01-01T00:00:00Z
    assert lines["slept"] == "5.0"  # sleeping moves the virtual clock, without waiting
    assert lines["asyncio"] == "[2, 1, 0] 15.0"  # asyncio runs on the same virtual clock
    differs = dict(line.split(" ", 1) for line in other_seed.stdout.splitlines())
    for key in ("random", "urandom", "uuid4", "tempfile"):
        assert differs[key] != lines[key], key
    assert differs["hash"] == lines["hash"] and differs["set"] == lines["set"]  # PYTHONHASHSEED=0 everywhere


FILE_FACTS = """\
import os
for name in "fbeadc":
    open(f"/outputs/{name}", "w").close()
os.mkdir("/outputs/sub")
with open("/outputs/data", "w") as f:
    f.write("x" * 5000)
for path in ("/inputs", "/inputs/x", "/outputs", "/outputs/b", "/outputs/data"):
    s = os.stat(path)
    print(path, s.st_dev, s.st_ino, s.st_nlink, s.st_size, s.st_blocks, s.st_blksize, s.st_mtime_ns, s.st_ctime_ns)
import shutil
print("statvfs", *(tuple(os.statvfs(path)) for path in ("/inputs", "/outputs")), shutil.disk_usage("/outputs"))
print("listing", [(e.name, e.inode()) for e in os.scandir("/outputs")])
"""


async def test_what_a_program_learns_of_its_files_is_the_same_on_every_node(executor: PyodideExecutor,
                                                                          tmp_path: Path) -> None:
    """Host inode numbers, link counts, directory sizes and blocks differ between nodes: a client printing
    them had honest nodes outvoted on a job that is judged exactly; so did the host file system's free blocks
    and inodes (``os.statvfs``, ``shutil.disk_usage``)."""
    (tmp_path / "a").mkdir()
    first = await executor.run(request(tmp_path / "a", code=FILE_FACTS, inputs={"x": "data"}))
    (tmp_path / "b" / "inputs" / "more").mkdir(parents=True)  # another host link count and size
    elsewhere = await executor.run(request(tmp_path / "b", code=FILE_FACTS, inputs={"x": "data"}))
    assert first.exit_code == 0, first.stderr
    assert first.stdout == elsewhere.stdout
    facts = {line.split()[0]: [int(n) for n in line.split()[1:]] for line in first.stdout.splitlines()[:-2]}
    epoch = 1704067200 * 10**9
    for path, (dev, _ino, links, size, blocks, block_size, mtime, ctime) in facts.items():
        assert (dev, links, block_size, mtime, ctime) == (1, 1, 4096, epoch, epoch), path
        assert blocks == -(-size // 4096) * 8, path
    assert facts["/inputs"][3] == facts["/outputs"][3] == 4096 and facts["/outputs/data"][3] == 5000
    inodes = [facts[path][1] for path in facts]
    assert len(set(inodes)) == len(inodes)  # each file its own number
    statvfs = first.stdout.splitlines()[-2]
    assert statvfs.startswith("statvfs (4096, 4096, 1000000, 500000, 500000, ")  # Emscripten's figures, not the host's
    assert "usage(total=4096000000, used=2048000000, free=2048000000)" in statvfs
    listing = eval(first.stdout.splitlines()[-1].split(" ", 1)[1])
    assert [name for name, _ in listing] == ["a", "b", "c", "d", "data", "e", "f", "sub"]
    assert dict(listing)["b"] == facts["/outputs/b"][1]  # the number its stat gave


async def test_a_job_making_empty_files_without_end_stops_at_the_entry_cap(executor: PyodideExecutor,
                                                                           tmp_path: Path) -> None:
    """Empty files cost no bytes, yet each takes an inode: this job, with no disk limit at all, made them until
    the node's file system had none left. Entries are counted as it runs, up to the node's cap (here 5,000;
    50,000 by default)."""
    flood = "import itertools\nfor i in itertools.count():\n    open(f'/outputs/f{i}', 'w').close()"
    req = replace(request(tmp_path, code=flood), max_entries=5_000)
    assert req.write_limit == 0  # no limit on bytes
    with trio.fail_after(180):  # it would never end
        result = await executor.run(req)
    assert result.exit_code != 0
    assert result.stderr.endswith("disk limit exceeded: the outputs hold more than 5,000 files and folders\n"), \
        result.stderr
    made = sum(1 for _ in (req.outputs_dir / "results").iterdir())
    assert 5_000 < made < 10_000, made  # stopped within a poll of the cap


async def test_an_interpreters_start_does_not_count_against_the_jobs_timeout(cache_dir, tmp_path):
    """The run's clock started before the interpreter had: under load, sweep indexes of 10 ms failed 'timed
    out after 2 s' where interpreters start (a sweep's first indexes, a growing claim). It starts at the
    hand-over now; the job's own code is still held to its timeout."""
    from compute.runner import Runner
    from executors import ExecutorRegistry
    from jobs import Execution

    executor = PyodideExecutor(cache_dir, pool_size=1)  # cold: its first run starts an interpreter
    runner = Runner(ExecutorRegistry({"python": executor}), tmp_path / "work")

    def execution(code: str) -> Execution:
        spec = JobSpec(engine={"name": "python", "code": code}, timeout=0.5)
        return Execution(id=f"e-{len(code)}", job_id="j", node_id="n", requester="r", created_at=0, updated_at=0,
                         spec=spec)

    started = time.monotonic()
    quick = await runner.run(execution("print('quick')"))
    assert quick.error is None and quick.result.stdout == "quick\n", quick
    assert time.monotonic() - started > 0.5  # the interpreter's start took longer than the job may
    endless = await runner.run(execution("while True:\n    pass"))
    assert endless.error == "timed out after 0.5 s" and endless.result is None


async def test_a_limit_the_node_set_below_the_networks_fails_a_job_there_retryably(cache_dir, tmp_path, monkeypatch):
    """A client's job writing 80 MiB and stating no disk had the one node whose per-job disk was 64 MiB outvoted
    until it was quarantined; so did 150 files on a node taking 100 (the network takes 50,000). What a node
    cannot do for its own settings is its own: "try elsewhere", compared with no one's result."""
    from compute.runner import Runner
    from executors import ExecutorRegistry
    from jobs import Execution, Resources

    small = Resources(cpu=1, memory="1GiB", disk="2MiB")
    runner = Runner(ExecutorRegistry({"python": PyodideExecutor(cache_dir, pool_size=0)}), tmp_path / "work",
                    limits=small, max_output_entries=100)

    def execution(code: str, **resources: str) -> Execution:
        spec = JobSpec(engine={"name": "python", "code": code}, outputs=[{"name": "o", "path": "/outputs"}],
                       resources=resources)
        return Execution(id=f"e-{len(code)}-{len(resources)}", job_id="j", node_id="n", requester="r",
                         created_at=0, updated_at=0, spec=spec)

    big = "open('/outputs/big', 'wb').write(b'x' * 3 * 2**20)"
    many = "for i in range(150):\n    open(f'/outputs/{i}', 'w').close()"
    too_big, too_many = await runner.run(execution(big)), await runner.run(execution(many))
    assert too_big.result is None and too_big.retryable, too_big
    assert "this node's per-job disk is 2 MiB, less than the 1 GiB a job stating no resources.disk may use" \
        in too_big.error
    assert too_many.result is None and too_many.retryable, too_many
    assert too_many.error.endswith("more than 100 files and folders (this node's limit; the network's is 50,000)")
    # the network's own cap fails the job alike on every node: the job's failure, not retried
    monkeypatch.setattr("compute.runner.MAX_OUTPUT_ENTRIES", 100)
    at_the_cap = await runner.run(execution(many))
    assert at_the_cap.result is None and not at_the_cap.retryable, at_the_cap
    assert at_the_cap.error.endswith("more than 100 files and folders")
    # a disk the job states is its own, alike on every node: its run's result, compared with the others'
    stated = await runner.run(execution(big, disk="2MiB"))
    assert stated.error is None and stated.result.exit_code != 0, stated
    assert "disk limit exceeded" in stated.result.stderr


async def test_files_the_job_deleted_but_holds_open_count_against_its_disk(executor: PyodideExecutor,
                                                                          tmp_path: Path) -> None:
    """No walk of the job's folders finds a file deleted while open: a 100 MiB job held 2.9 GiB so, in files
    each under its file size limit, and completed. Four of 8 MiB now end a 20 MiB job, as any 32 MiB would."""
    code = ("import os\nheld = []\nfor i in range(4):\n    f = open(f'/outputs/f{i}', 'wb', buffering=0)\n"
            "    os.unlink(f'/outputs/f{i}')\n    for _ in range(8):\n        f.write(b'x' * (1 << 20))\n"
            "    held.append(f)\nprint('held', flush=True)\nwhile True:\n    pass\n")
    req = request(tmp_path, code=code)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(disk="20MiB"), "timeout": 600}))
    with trio.fail_after(120):  # it would spin for its ten minutes
        result = await executor.run(req)
    assert result.exit_code != 0
    assert "disk limit exceeded: wrote more than 20971520 bytes (" in result.stderr, result.stderr
    # nothing written is left there: it was all held open (the kill may come between a file's creation and its
    # unlink, leaving that one empty, as in the docker engine's test)
    assert [f.stat().st_size for f in (req.outputs_dir / "results").iterdir()] in ([], [0])


async def test_a_missing_module_says_where_numpy_runs(executor: PyodideExecutor, tmp_path: Path) -> None:
    """``import numpy`` gave a bare ModuleNotFoundError, with no word of --image."""
    result = await executor.run(request(tmp_path, code="import numpy"))
    assert result.exit_code == 1
    assert "ModuleNotFoundError: No module named 'numpy'" in result.stderr
    assert result.stderr.endswith("numpy, scipy or pandas run with --image shoal/python-sci\n")
    result = await executor.run(request(tmp_path, code="import sys\nprint(sys.version_info[:2])\nsys.exit(3)"))
    assert result.exit_code == 3 and "--image" not in result.stderr
    assert result.stdout == "(3, 14)\n"  # as shoal run python --help and the README say


async def test_a_write_into_the_read_only_working_directory_says_where_to_write(executor: PyodideExecutor,
                                                                               tmp_path: Path) -> None:
    """``open("results.csv", "w")`` failed with a bare "[Errno 69] Read-only file system", no word of -o."""
    hint = ("shoal: /context (your working directory) is read-only; write outputs under a path given with "
            "-o NAME:/PATH, e.g. -o results:/outputs\n")
    code = "import os\ntry:\n    os.mkdir('out')\nexcept OSError:\n    pass\nopen('results.csv', 'w').write('1,2\\n')"
    result = await executor.run(request(tmp_path, code=code))
    assert result.exit_code == 1 and "OSError: [Errno 69] Read-only file system: 'results.csv'" in result.stderr
    assert result.stderr.endswith("'results.csv'\n" + hint) and result.stderr.count(hint) == 1, result.stderr
    # a program that caught it ran as meant; an input's refusal is not the working directory's
    caught = await executor.run(request(tmp_path, code="try:\n    open('r.csv', 'w')\nexcept OSError:\n    pass"))
    assert (caught.exit_code, caught.stderr) == (0, "")
    result = await executor.run(request(tmp_path, code="open('/inputs/data.txt', 'w')", inputs={"data.txt": "x"}))
    assert result.exit_code == 1 and "Read-only file system" in result.stderr and "shoal:" not in result.stderr


async def test_files_written_outside_the_outputs_are_said_to_be_lost(executor: PyodideExecutor, tmp_path: Path) -> None:
    """A job that wrote /results/r.csv with no output declared for it completed, and its files were gone: in
    a container the read-only root says so. /tmp and the home are scratch, said nothing of."""
    code = ("import os\nos.makedirs('/results')\nfor name in ('b.csv', 'a.csv'):\n"
            "    open(f'/results/{name}', 'w').write('1,2\\n')\n"
            "open('/tmp/scratch', 'w').write('x')\nopen(os.path.expanduser('~/cache'), 'w').write('x')\n"
            "open('/outputs/kept.txt', 'w').write('kept')\nprint('done')")
    result = await executor.run(request(tmp_path, code=code))
    assert result.exit_code == 0 and result.stdout == "done\n"
    assert result.stderr == ("shoal: the job wrote /results/a.csv and 1 more outside its outputs, in memory: not kept "
                             "(a folder is kept when the job declares it: -o NAME:/PATH)\n")
    result = await executor.run(request(tmp_path, code="open('/tmp/scratch', 'w').write('x')"))
    assert result.exit_code == 0 and result.stderr == ""


async def test_a_job_failing_of_its_own_accord_at_exactly_its_disk_is_not_said_to_pass_it(
        executor: PyodideExecutor, tmp_path: Path) -> None:
    """A run that failed with exactly its disk written was said to have passed it (the file size limit stops a
    file there): a job writing two one-byte files (a block each, with the outputs folder 12 KiB in all) under a
    12 KiB disk, then failing on its own, ended with "disk limit exceeded". Only a file stopped at the limit
    says so; a file written past it still does."""
    own = "open('/outputs/a', 'w').write('x')\nopen('/outputs/b', 'w').write('y')\nraise SystemExit('my own error')"
    past = "open('/outputs/a', 'wb').write(b'x' * (1 << 20))"
    for code, disk, said in ((own, "12KiB", "my own error\n"), (past, "64KiB", None)):
        req = request(tmp_path, code=code)
        req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(disk=disk)}))
        result = await executor.run(req)
        assert result.exit_code == 1, result
        if said is not None:
            assert result.stderr.endswith(said) and "disk limit" not in result.stderr, result.stderr
        else:
            assert result.stderr.endswith(f"disk limit exceeded: wrote more than {req.write_limit} bytes "
                                          "(resources.disk, less the staged inputs)\n"), result.stderr


async def test_a_job_within_its_disk_where_only_the_nodes_file_system_takes_more_fails_there_retryably(
        executor: PyodideExecutor, tmp_path: Path) -> None:
    """100 empty files of 200-character names take 59,392 bytes by the network's measure (their folders a block
    each, each file 512 bytes) and more of ext4 (their folder grows). Under a disk of exactly 59,392, the disk
    watch stopped the run on its file system alone, and the job's own failure became "wrote more than 59392
    bytes": a result that differed from a tmpfs node's. It is now this node's retryable error, or, where the
    file system holds it, the job's own failure."""
    code = ("import os\nos.mkdir('/outputs/d')\n"
            "for i in range(100):\n    open(f'/outputs/d/{i:03d}' + 'x' * 197, 'w').close()\n"
            "for _ in range(5_000_000):\n    pass\nraise SystemExit('my own error')")
    req = request(tmp_path, code=code)
    req = replace(req, spec=req.spec.model_copy(update={"resources": Resources(disk=59392)}))
    try:
        result = await executor.run(req)
    except ExecutorError as e:
        found = re.fullmatch(r"disk limit exceeded on this node: its file system took (\d+) bytes for what the job "
                             r"wrote, (\d+) of 59392 as the network counts it", str(e))
        assert e.retryable and found, e  # (the watch may look while the files are being made)
        took, counted = map(int, found.groups())
        assert counted <= 59392 < took, e
    else:
        assert result.exit_code == 1 and result.stderr.endswith("my own error\n"), result.stderr


# Reaches Node.js past the refusal of `import js`, keeps Node's thread pool busy with four chains of key
# derivations (seconds each), and busy-loops in Python besides.
MANY_CORES = BYPASS + """
js.eval("const crypto = process.getBuiltinModule('crypto');"
        "function again() { crypto.pbkdf2('p', 's', 3000000, 64, 'sha512', again); }"
        "for (let i = 0; i < 4; i++) again(); undefined")
x = 0
for i in range(25_000_000):
    x += 1
print("done")
"""


async def test_a_job_keeps_no_more_than_two_of_the_nodes_cores_busy(executor: PyodideExecutor, tmp_path: Path
                                                                    ) -> None:
    """A python job counts as one core, but Node's thread pool (four threads) is open to job code: one job at
    0.1 CPU kept five threads busy, every core of a larger host. Node now runs with one thread in each pool, so
    the job's process has a few threads however it uses them (counted, not timed: a loaded host gives busy
    threads little CPU)."""
    threads: dict[int, int] = {}  # pid of each Node.js process seen -> the most threads it had at once

    async def count() -> None:
        while True:
            for process in psutil.Process().children(recursive=True):
                if "node" in process.name():
                    with contextlib.suppress(psutil.Error):
                        threads[process.pid] = max(threads.get(process.pid, 0), process.num_threads())
            await trio.sleep(0.1)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(count)
        result = await executor.run(request(tmp_path, code=MANY_CORES))
        nursery.cancel_scope.cancel()
    assert (result.exit_code, result.stdout) == (0, "done\n"), result.stderr
    assert threads and max(threads.values()) <= 6, threads  # main, one pool thread each, V8's and Node's own
