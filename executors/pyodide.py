"""The ``python`` engine: CPython compiled to WebAssembly (Pyodide) under Node.js, offline and deterministic.

A job runs as ``python main.py ARGS`` (``engine.main``, a path inside the job; relative paths are inside
``/context``) or ``python -c CODE ARGS``. The context (``/context``) is the working directory, inputs are
read-only at their paths, outputs writable at theirs; the WebAssembly heap may grow to ``resources.memory``
(beyond it, MemoryError). ``engine.requirements`` name pure-Python wheel files
shipped with the job; they are installed offline before the program starts. Exit codes are CPython's: 0,
the ``SystemExit`` code, 1 with the traceback on stderr for an exception or a syntax error, 2 when the
script is missing.

Determinism (see ``pyodide_runner/runner.mjs``): entropy, wall clock and monotonic clock are derived from
the job's seed and a virtual clock, ``PYTHONHASHSEED=0``, file metadata is normalised, listings are
sorted, there is no network. The same program with the same inputs prints the same bytes on every node,
whether its interpreter was pre-started or not.

Process model: every job gets its own Node.js process, used once and killed afterwards. Interpreters
start from a memory snapshot of a loaded Pyodide, made once per node (and version) in ``cache_dir``.
``run_pool`` keeps ``pool_size`` of them loaded and waiting, so a job starts in tens of milliseconds
instead of seconds; without the pool, ``run`` starts one itself (cold).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from executors._common import CONTEXT_DIR, DirMount, Tail, host_path, job_path, job_seed, plan_mounts
from executors.base import ExecutorError, RunRequest
from jobs import PythonEngine, RunResult

log = logging.getLogger(__name__)

RUNNER_DIR = Path(__file__).with_name("pyodide_runner")
WARM_UP_ROUNDS = 30  # runs of typical code before "ready", so V8 has compiled the interpreter's hot paths
START_TIMEOUT = 180.0  # seconds a pool interpreter may take to load on a busy machine before it is given up
SNAPSHOT_TIMEOUT = 600.0  # seconds to build the memory snapshot (once per node and version)
POOL_RETRY_DELAY = 5.0  # seconds between attempts when pool interpreters fail to start
_CONTROL_LINE_LIMIT = 1 << 20  # bytes of one control message from the runner
# A wheel file name: NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl (PEP 427)
_WHEEL = re.compile(
    r"^(?P<name>[^-/]+)-(?P<version>[^-/]+)(-\d[^-/]*)?-(?P<py>[^-/]+)-(?P<abi>[^-/]+)-(?P<plat>[^-/]+)\.whl$"
)


@dataclass(frozen=True)
class PoolStatistics:
    pool_size: int
    running: bool  # whether run_pool is serving
    idle: int  # interpreters loaded and waiting for a job
    warm_runs: int  # jobs that got a pre-started interpreter
    cold_runs: int  # jobs that had to start one


@dataclass(frozen=True)
class _Prepared:
    message: bytes  # the job line for the runner
    failure: str | None = None  # a problem with the job found before any interpreter is spent
    failure_code: int = 1


class _Runner:
    """One Node.js process with Pyodide loaded, serving at most one job."""

    def __init__(self, process: trio.Process, control: trio.lowlevel.FdStream) -> None:
        self.process = process
        self.control = control
        self._pending = b""

    @property
    def alive(self) -> bool:
        return self.process.poll() is None

    async def message(self) -> dict[str, Any] | None:
        """The next control message, or None once the runner closed the channel."""
        while b"\n" not in self._pending:
            try:
                chunk = await self.control.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                chunk = b""
            if not chunk:
                return None
            self._pending += chunk
            if len(self._pending) > _CONTROL_LINE_LIMIT:
                raise ExecutorError("the Pyodide runner sent an oversized control message")
        line, self._pending = self._pending.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as e:
            raise ExecutorError(f"the Pyodide runner sent a malformed control message: {line[:200]!r}") from e

    async def wait_ready(self) -> None:
        msg = await self.message()
        if msg is not None and msg.get("event") == "ready":
            return
        stderr = Tail(8192)
        with trio.move_on_after(5):
            await _pump(self.process.stderr, stderr)
        detail = msg.get("message") if msg else stderr.text().strip()
        raise ExecutorError(f"the Python runtime (Pyodide) failed to start: {detail or 'no output'}")

    async def aclose(self) -> None:
        """Kill the process (if still running) and wait for it; safe to call more than once, and when cancelled."""
        with trio.CancelScope(shield=True):
            if self.process.poll() is None:
                self.process.kill()
            await self.process.wait()
            for stream in (self.control, self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    await stream.aclose()


class PyodideExecutor:
    """Runs ``python`` jobs in single-use Pyodide interpreters, optionally from a warm pool.

    Args:
        cache_dir: where the Pyodide memory snapshot is kept (~30 MB, built on first use in 5-20 s).
        pool_size: interpreters ``run_pool`` keeps loaded and waiting (each ~150 MB of memory).
        node: the Node.js executable; found on PATH by default.
        runner_dir: the folder holding runner.mjs and node_modules/pyodide (``scripts/install-pyodide``).
    """

    name = "python"

    def __init__(
        self, cache_dir: Path, *, pool_size: int = 2, node: str | None = None, runner_dir: Path = RUNNER_DIR
    ) -> None:
        if pool_size < 0:
            raise ValueError("pool_size cannot be negative")
        self.cache_dir = Path(cache_dir)
        self.pool_size = pool_size
        # Runs worth starting at once: a starting interpreter keeps a core busy for a second, so
        # twenty at once on two cores (what 0.1-CPU jobs would allow) take longer than two at a time.
        self.max_parallel = max(1, os.cpu_count() or 1)
        self.node = node or shutil.which("node") or "node"
        self.runner_dir = Path(runner_dir)
        self._idle: list[_Runner] = []
        self._refill = trio.Event()
        self._pool_running = False
        self._snapshot: Path | None = None
        self._snapshot_lock = trio.Lock()
        self._warm_runs = 0
        self._cold_runs = 0

    def is_installed(self) -> bool:
        return (
            shutil.which(self.node) is not None
            and (self.runner_dir / "runner.mjs").is_file()
            and (self.runner_dir / "node_modules" / "pyodide" / "pyodide.mjs").is_file()
        )

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(self.pool_size, self._pool_running, len(self._idle), self._warm_runs, self._cold_runs)

    async def prepare(self, request: RunRequest | None = None) -> None:
        """Build the memory snapshot now, if missing (outside a job's timeout); else the first job or the pool does.

        Raises:
            ExecutorError: Pyodide is not installed or does not load.
        """
        if not self.is_installed():
            raise ExecutorError("Pyodide is not installed on this node (run scripts/install-pyodide)")
        await self._ensure_snapshot()

    # The pool -----------------------------------------------------------------------------------------------

    async def run_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``pool_size`` interpreters loaded until cancelled; then kill those still waiting.

        Signals ``started`` once the pool is first full (or its first interpreter failed to start: jobs then
        start cold while the pool keeps retrying). Builds the snapshot first if needed.
        """
        if self._pool_running:
            raise RuntimeError("the Pyodide pool is already running")
        self._pool_running = True
        signalled = False
        try:
            while True:
                self._idle = [r for r in self._idle if r.alive]
                if len(self._idle) >= self.pool_size:
                    if not signalled:
                        task_status.started()
                        signalled = True
                    self._refill = trio.Event()
                    await self._refill.wait()
                    continue
                try:
                    with trio.fail_after(START_TIMEOUT):
                        runner = await self._start_runner()
                except Exception as e:  # never take the node down: jobs start cold meanwhile
                    log.warning("Pyodide pool: an interpreter failed to start (retrying in %g s): %s",
                                POOL_RETRY_DELAY, e, exc_info=not isinstance(e, ExecutorError | trio.TooSlowError))
                    if not signalled:
                        task_status.started()
                        signalled = True
                    await trio.sleep(POOL_RETRY_DELAY)
                    continue
                self._idle.append(runner)
        finally:
            self._pool_running = False
            idle, self._idle = self._idle, []
            for runner in idle:
                await runner.aclose()

    def _take_warm(self) -> _Runner | None:
        while self._idle:
            runner = self._idle.pop(0)
            if runner.alive:
                return runner
            self._refill.set()
        return None

    # One job ------------------------------------------------------------------------------------------------

    async def run(self, request: RunRequest) -> RunResult:
        spec = request.spec.engine
        if not isinstance(spec, PythonEngine):
            raise ExecutorError(f"the python executor cannot run a {spec.name!r} job", retryable=False)
        started = time.time()
        prepared = await trio.to_thread.run_sync(_prepare, request)
        if prepared.failure is not None:
            return RunResult(exit_code=prepared.failure_code, stderr=prepared.failure, started_at=started,
                             finished_at=time.time())
        runner = self._take_warm()
        if runner is not None:
            self._warm_runs += 1
            self._refill.set()
        try:
            if runner is not None:
                try:
                    await runner.process.stdin.send_all(prepared.message)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    await runner.aclose()  # died while waiting; start one for this job instead
                    self._warm_runs -= 1
                    runner = None
            if runner is None:
                self._cold_runs += 1
                runner = await self._start_runner()
                await runner.process.stdin.send_all(prepared.message)
            return await self._collect(runner, started)
        finally:
            if runner is not None:
                await runner.aclose()

    async def _collect(self, runner: _Runner, started: float) -> RunResult:
        stdout, stderr = Tail(), Tail()
        messages: list[dict[str, Any]] = []
        broken: list[ExecutorError] = []

        async def read_control() -> None:
            try:
                while (msg := await runner.message()) is not None:
                    messages.append(msg)
            except ExecutorError as e:  # kept for after the nursery, so it is not wrapped in a group
                broken.append(e)
                runner.process.kill()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_pump, runner.process.stdout, stdout)
            nursery.start_soon(_pump, runner.process.stderr, stderr)
            nursery.start_soon(read_control)
        returncode = await runner.process.wait()
        if broken:
            raise broken[0]
        exits = [m for m in messages if m.get("event") == "exit"]
        errors = [m for m in messages if m.get("event") == "error"]
        if exits:
            exit_code = int(exits[0]["code"])
        elif errors:
            raise ExecutorError(f"the Pyodide runner failed: {errors[0].get('message', '')[:2000]}")
        else:  # the process ended without reporting, e.g. the program called js.process.exit or V8 gave up
            exit_code = returncode if returncode >= 0 else 128 - returncode
            stderr.write(f"\nthe Python runtime stopped unexpectedly (exit status {returncode})\n".encode())
        return RunResult(
            exit_code=exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            started_at=started,
            finished_at=time.time(),
        )

    # Interpreters -------------------------------------------------------------------------------------------

    async def _start_runner(self) -> _Runner:
        """A new interpreter, loaded and ready for one job. Killed again if anything goes wrong."""
        if not self.is_installed():
            raise ExecutorError("Pyodide is not installed on this node (run scripts/install-pyodide)")
        snapshot = await self._ensure_snapshot()
        read_fd, write_fd = os.pipe()
        try:
            process = await trio.lowlevel.open_process(
                [*self._node_command(), "--control-fd", str(write_fd), "--snapshot", str(snapshot),
                 "--warm-up", str(WARM_UP_ROUNDS)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                pass_fds=(write_fd,),
                env=_node_env(),
                cwd=self.runner_dir,
            )
        except OSError as e:
            os.close(read_fd)
            raise ExecutorError(f"cannot start Node.js ({self.node}): {e}") from e
        finally:
            os.close(write_fd)
        runner = _Runner(process, trio.lowlevel.FdStream(read_fd))
        try:
            await runner.wait_ready()
        except BaseException:
            await runner.aclose()
            raise
        return runner

    def _node_command(self) -> list[str]:
        return [self.node, "--no-warnings", str(self.runner_dir / "runner.mjs")]

    async def _ensure_snapshot(self) -> Path:
        """The memory snapshot of a freshly loaded Pyodide, built once per runner version and Node.js version.

        Loading Pyodide the same way gives the same bytes on every machine (checked), so every node's
        interpreters start from the same state.
        """
        async with self._snapshot_lock:
            if self._snapshot is not None and self._snapshot.exists():
                return self._snapshot
            version = await trio.run_process([self.node, "--version"], capture_stdout=True, check=False)
            key = hashlib.sha256(version.stdout)
            for name in ("runner.mjs", "driver.py", "package-lock.json"):
                key.update((self.runner_dir / name).read_bytes())
            path = self.cache_dir / f"pyodide-{key.hexdigest()[:20]}.snapshot"
            if not path.exists():
                await trio.to_thread.run_sync(lambda: self.cache_dir.mkdir(parents=True, exist_ok=True))
                tmp = path.with_name(f"{path.name}.{os.getpid()}.{id(self)}.tmp")
                log.info("building the Pyodide memory snapshot in %s", path)
                try:
                    with trio.fail_after(SNAPSHOT_TIMEOUT):
                        result = await trio.run_process(
                            [*self._node_command(), "--make-snapshot", str(tmp)],
                            capture_stdout=True, capture_stderr=True, check=False, env=_node_env(),
                            cwd=self.runner_dir,
                        )
                    if result.returncode != 0:
                        detail = result.stderr.decode(errors="replace").strip()[-2000:]
                        raise ExecutorError(f"cannot prepare the Python runtime (Pyodide snapshot): {detail}")
                    os.replace(tmp, path)
                except trio.TooSlowError as e:
                    raise ExecutorError("preparing the Python runtime (Pyodide snapshot) took too long") from e
                finally:
                    tmp.unlink(missing_ok=True)
                for old in self.cache_dir.glob("pyodide-*.snapshot"):
                    if old != path:
                        old.unlink(missing_ok=True)
            self._snapshot = path
            return path


async def _pump(stream: trio.abc.ReceiveStream | None, sink: Tail) -> None:
    if stream is None:
        return
    try:
        while chunk := await stream.receive_some(65536):
            sink.write(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _node_env() -> dict[str, str]:
    """Node.js gets nothing from the node's environment that a job could observe."""
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TZ": "UTC", "LANG": "C.UTF-8"}


def _prepare(request: RunRequest) -> _Prepared:
    """Mounts, the script and the wheels, checked before an interpreter is spent. Blocking (worker thread)."""
    spec = request.spec.engine
    assert isinstance(spec, PythonEngine)
    mounts = plan_mounts(request, request.work_dir)
    pairs = [(m.target, m.host) for m in mounts]
    main = job_path(spec.main) if spec.main is not None else None
    if main is not None:
        host = host_path(main, pairs)
        if host is None or not host.is_file():
            return _Prepared(b"", f"python: can't open file {main!r}: [Errno 2] No such file or directory\n", 2)
    wheels = []
    for requirement in spec.requirements:
        wheel, problem = _check_wheel(requirement, pairs)
        if problem:
            return _Prepared(b"", f"shoal: cannot install requirement {requirement!r}: {problem}\n", 1)
        wheels.append({"host": str(wheel), "path": job_path(requirement)})
    job = {
        "seed": job_seed(request).hex(),
        "mounts": [_mount_json(m) for m in mounts],
        "cwd": CONTEXT_DIR if any(m.target == CONTEXT_DIR for m in mounts) else None,
        "main": main,
        "code": spec.code,
        "argv": list(spec.args),
        "env": dict(request.spec.env),
        "wheels": wheels,
        "memory_limit": request.spec.resources.memory,  # bytes of WebAssembly heap; 0 means no limit
    }
    return _Prepared(json.dumps(job).encode() + b"\n")


def _mount_json(m: DirMount) -> dict[str, Any]:
    return {"host": str(m.host), "target": m.target, "writable": m.writable}


def _check_wheel(requirement: str, mounts: list[tuple[str, Path]]) -> tuple[Path | None, str | None]:
    """The host file of a requirement that is a pure-Python wheel, or why it is not one."""
    name = requirement.rsplit("/", 1)[-1]
    m = _WHEEL.match(name)
    if m is None:
        return None, (
            "not a wheel file; the client resolves requirements to pure-Python wheels (*-none-any.whl) "
            "and ships them in the job's context"
        )
    if m["abi"] != "none" or m["plat"] != "any":
        return None, (
            f"not a pure-Python wheel (built for {m['py']}/{m['abi']}/{m['plat']}); "
            "only wheels tagged none-any run in Pyodide"
        )
    host = host_path(requirement, mounts)
    if host is None or not host.is_file():
        return None, "no such file in the job's context or inputs"
    if not zipfile.is_zipfile(host):
        return None, "the file is not a valid wheel (not a zip archive)"
    return host, None

