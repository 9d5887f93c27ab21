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

Containment (``executors/sandbox.py``): every Node.js process runs inside a bubblewrap sandbox that holds only
``/usr``, the runner with its Pyodide package, the memory snapshot (all read-only) and the slot into which its
job's context and inputs (read-only) and outputs (writable) are placed when the job arrives; no network and no
sockets (``socket_filter``), its own PID namespace, uid 65534 (on a root node, a host uid of its own: per-uid
limits are not shared), rlimits (memory, CPU time, file size, processes, no core files) tightened to the
job's resources when it arrives, and where the node can make one
(``executors/cgroups.py``), a memory cgroup that holds all its processes to ``resident_limit`` (the job's
memory plus ``RUNTIME_RESIDENT``): JavaScript objects that job code reaching Node.js makes count too.
Inside, Node's permission model lets it read only those paths, write only the outputs, and start no processes,
workers or addons; and job code that imports ``js`` or ``pyodide_js`` gets an ImportError. Without bubblewrap
the engine is not offered, unless the operator passes ``unsandboxed=True`` (``shoal serve
--unsafe-unsandboxed-python``).

Process model: every job gets an interpreter as loaded from a memory snapshot of a loaded Pyodide (made once
per node and version in ``cache_dir``). The Node.js process around it may serve more: once it has run a job
that has an owner (``RunRequest.owner``: one requester's sweep), it resets that interpreter in place to its
state once loaded (or, when that cannot be done exactly, loads a new one; see ``pyodide_runner/runner.mjs``)
and waits for the next job *of the same owner*, for ``PARK_SECONDS``; jobs of other
owners never share a process. A sweep's indexes thus pay for a process start once, not once each. A job
without an owner is its process's last: the runner loads no interpreter after it. ``run_pool`` keeps
``pool_size`` processes loaded and waiting for their first job, so a job starts in milliseconds instead of
seconds; it starts replacements when no job runs (see ``REFILL_DEFER_SECONDS``), and without the pool,
``run`` starts one itself (cold). A job that ends any other way than by exiting (timeout, cancellation, a
limit, a crash) takes its process with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from executors._common import (
    CONTEXT_DIR,
    DirMount,
    Tail,
    Written,
    disk_overrun,
    host_path,
    job_path,
    job_seed,
    own_again,
    plan_mounts,
    watch_disk,
    written_in,
)
from executors.base import Executor, ExecutorError, RunRequest
from executors.cgroups import MemoryCgroup
from executors.runtime_install import node_too_old
from executors.sandbox import (
    NOBODY,
    SLOT_TARGET,
    Limits,
    Sandbox,
    SandboxedProcess,
    Slot,
    cpu_seconds_used,
    descendants,
    filter_descriptor,
    socket_filter,
)
from executors.users import JobUsers
from jobs import PythonEngine, RunResult
from jobs.spec import format_bytes
from storage.trees import Unwalkable, entries, remove_tree

log = logging.getLogger(__name__)

RUNNER_DIR = Path(__file__).with_name("pyodide_runner")
WARM_UP_ROUNDS = 30  # runs of typical code before "ready", so V8 has compiled the interpreter's hot paths
# seconds of getting an interpreter ready (a cold start on a busy machine) that do not count against a job's
# timeout; well within deadlines.result_grace (60 s), which covers it on the requester's side
START_ALLOWANCE = 30.0
# seconds a job waits for a started or parked runner's next interpreter; then it gets a new process (within
# its start allowance): a job that broke WebAssembly.instantiate once held its owner's next job forever
READY_WAIT = 15.0
START_TIMEOUT = 180.0  # seconds a pool interpreter may take to load on a busy machine before it is given up
SNAPSHOT_TIMEOUT = 600.0  # seconds to build the memory snapshot (once per node and version)
# seconds before the pool's next attempt when an interpreter (or the snapshot) failed to start, doubled after each
# failure up to POOL_RETRY_MAX: a node whose disk is full would rebuild a 30 MB snapshot every few seconds
POOL_RETRY_DELAY = 5.0
POOL_RETRY_MAX = 300.0
_CONTROL_LINE_LIMIT = 1 << 20  # bytes of one control message from the runner
# Private writable memory Node.js, V8 and a loaded Pyodide need besides the job's WebAssembly heap (measured:
# about 0.45 GiB after warm-up); RLIMIT_DATA is the job's memory plus this, and a runner's memory cgroup holds
# it to this before its first job.
RUNTIME_MEMORY = 1 << 30
# Memory Node.js, V8 and Pyodide keep resident besides the job's heap, where the sandbox has a memory cgroup
# (executors/cgroups.py). Measured on a 64 MiB job: 250 MiB at hand-over, 278 MiB with the job's heap full,
# 340 MiB at most over 100 jobs of one owner in one process (the runner collects old interpreters first).
RUNTIME_RESIDENT = 384 << 20
KILL_WAIT = 5.0  # seconds aclose waits for a sandbox's processes to be gone after SIGKILL
MISSING_MODULE_HINT = ("shoal: the python engine (Pyodide) has Python's standard library and the pure-Python wheels "
                       "shipped with -r; numpy, scipy or pandas run with --image shoal/python-sci\n")
FORGED_CONTROL = "shoal: the program wrote to the Python runner's control channel, and was stopped"
OUTPUT_GRACE = 10.0  # seconds the output a runner counted in its exit message may take to arrive after it
CPU_GRACE = 10  # seconds of CPU time beyond the job's timeout before the kernel stops the runner
IDLE_CPU_LIMIT = 3600  # CPU seconds a runner may use before its first job (start, warm-up): a soft limit
RUNNER_CPU_LIMIT = 8 * 24 * 3600  # CPU seconds a runner may use in all (hard); each job gets a soft limit below
PARK_SECONDS = 5.0  # how long a runner waits for its owner's next job before it is closed
# Starting a pool interpreter takes a core for a second or more; while jobs run, the pool waits up to this long
# for them to finish first, so that the start does not slow them down (a job still finds the others idle),
REFILL_DEFER_SECONDS = 2.0
# and for this long after the last one ended, while the node publishes its result.
REFILL_SETTLE_SECONDS = 0.25
MAX_JOBS_PER_RUNNER = 500  # jobs before a runner process is replaced (bounds what V8 may accumulate)
# A wheel file name: NAME-VERSION[-BUILD]-PYTHON-ABI-PLATFORM.whl (PEP 427)
_WHEEL = re.compile(
    r"^(?P<name>[^-/]+)-(?P<version>[^-/]+)(-\d[^-/]*)?-(?P<py>[^-/]+)-(?P<abi>[^-/]+)-(?P<plat>[^-/]+)\.whl$"
)


def resident_limit(memory: int) -> int:
    """What a runner's memory cgroup holds all its processes to, for jobs of ``memory`` bytes: what the job
    counts (its heap and in-memory files) and the runtime beside it.

    No second copy of the job's memory: a large /tmp file grows in place (runner.mjs ``growInPlace``). A
    copy once held the old array and the new together, and a 900 MiB file took a 1 GiB job to 1.9 GiB.
    """
    return memory + RUNTIME_RESIDENT


@dataclass(frozen=True)
class PoolStatistics:
    pool_size: int
    running: bool  # whether run_pool is serving
    idle: int  # interpreters loaded and waiting for a job
    warm_runs: int  # jobs that got a pre-started interpreter
    cold_runs: int  # jobs that had to start one
    reused_runs: int = 0  # jobs served by a process that had served their owner before
    parked: int = 0  # processes waiting for their owner's next job
    reset_runs: int = 0  # jobs that ran in the previous job's interpreter, reset in place (runner.mjs)


@dataclass(frozen=True)
class _Prepared:
    job: dict[str, Any]  # the job line for the runner, with host paths
    mounts: list[DirMount]
    failure: str | None = None  # a problem with the job found before any interpreter is spent
    failure_code: int = 1


class _BadControl(ExecutorError):
    """A control line that is not JSON, or too long."""


class _Runner:
    """One Node.js process with Pyodide loaded, serving jobs one at a time, all of one owner."""

    def __init__(self, process: trio.Process | SandboxedProcess, control: trio.lowlevel.FdStream,
                 slot: Slot | None = None, cgroup: MemoryCgroup | None = None) -> None:
        self.process = process
        self.control = control
        self.slot = slot  # the sandbox's job directories (None: unsandboxed)
        self.cgroup = cgroup  # the sandbox's memory cgroup (None: rlimits only)
        self.owner: tuple[str, int, int] | None = None  # (owner, memory, disk) of its jobs, fixed by the first
        self.jobs = 0  # jobs handed to it
        self.ready = False  # a fresh interpreter is loaded and waits (its "ready" was read)
        self.reset = False  # that interpreter is the previous job's, reset in place
        self.last = False  # its current job is its last (it loads no interpreter after it, and is closed)
        self._pending = b""
        self._node_pid: int | None = None

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
                raise _BadControl("the Pyodide runner sent an oversized control message")
        line, self._pending = self._pending.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError as e:
            raise _BadControl(f"the Pyodide runner sent a malformed control message: {line[:200]!r}") from e

    async def wait_ready(self) -> None:
        if self.ready:
            return
        msg = await self.message()
        if msg is not None and msg.get("event") == "ready":
            self.ready = True
            self.reset = msg.get("reset") is True
            return
        stderr = Tail(8192)
        with trio.move_on_after(5):
            await _pump(self.process.stderr, stderr)
        detail = msg.get("message") if msg else stderr.text().strip()
        raise ExecutorError(f"the Python runtime (Pyodide) failed to start: {detail or 'no output'}")

    async def aclose(self) -> None:
        """Kill the process (if still running) and wait for it; safe to call more than once, and when cancelled."""
        with trio.CancelScope(shield=True):
            inside = descendants(self.process.pid) if self.slot is not None else []
            if self.process.poll() is None:
                self.process.kill()
            for pid in inside:  # they would die with bubblewrap anyway; this way they are gone on return
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            await self.process.wait()
            with trio.move_on_after(KILL_WAIT):
                while any(_alive(pid) for pid in inside):
                    await trio.sleep(0.005)
            outlived = [pid for pid in inside if _alive(pid)]
            if outlived:  # its uid stays taken: a sandbox given it would share those processes' limits
                log.warning("processes %s of a closed Pyodide sandbox outlived their kill", outlived)
            for stream in (self.control, self.process.stdin, self.process.stdout, self.process.stderr):
                if stream is not None:
                    await stream.aclose()
            if self.slot is not None:
                slot, self.slot = self.slot, None
                await trio.to_thread.run_sync(lambda: slot.remove(give_back_uid=not outlived))
            if self.cgroup is not None:
                cgroup, self.cgroup = self.cgroup, None
                await trio.to_thread.run_sync(cgroup.remove)

    def interpreter_pid(self) -> int | None:
        """The host pid of Node.js itself (inside bubblewrap's processes), or None once it is gone."""
        if self.slot is None:
            return self.process.pid
        if self._node_pid is not None and _alive(self._node_pid):
            return self._node_pid
        for pid in descendants(self.process.pid):
            try:
                if Path(f"/proc/{pid}/comm").read_text().strip() == "node":
                    self._node_pid = pid
                    return pid
            except OSError:
                continue
        return None


class PyodideExecutor(Executor):
    """Runs ``python`` jobs in single-use Pyodide interpreters, optionally from a warm pool.

    Args:
        cache_dir: where the Pyodide memory snapshot is kept (~30 MB, built on first use in 5-20 s).
        pool_size: interpreters ``run_pool`` keeps loaded and waiting (each ~150 MB of memory).
        node: the Node.js executable; found on PATH by default.
        runner_dir: the folder holding runner.mjs and node_modules/pyodide (``scripts/install-pyodide``).
        unsandboxed: run Node.js without the OS sandbox (the operator's explicit, logged choice); by default
            a node whose sandbox cannot start does not offer the engine (``problem()`` says why).
        node_label: the node's label: on a root node its sandboxes run as uids of the node's range
            (``executors.users``), which its docker jobs share; by default, a range of this process's.
    """

    start_allowance = START_ALLOWANCE  # run() holds the job to its timeout from its hand-over

    name = "python"

    def __init__(
        self, cache_dir: Path, *, pool_size: int = 2, node: str | None = None, runner_dir: Path = RUNNER_DIR,
        unsandboxed: bool = False, node_label: str | None = None,
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
        self._snapshot_failure: str | None = None  # why the last build of the snapshot failed (None: it did not)
        self._retry_at = 0.0  # time.monotonic() of the pool's next attempt
        self._warm_runs = 0
        self._cold_runs = 0
        self._reused_runs = 0
        self._reset_runs = 0
        self._parked: dict[tuple[str, int, int], list[tuple[float, _Runner]]] = {}
        self._closing: set[_Runner] = set()  # parked runners past their time, being closed
        self._in_flight = 0  # jobs running now
        self._quiet = trio.Event()  # set when no job runs
        self._quiet.set()
        self._last_end = -math.inf  # trio time the last job ended
        self.unsandboxed = unsandboxed
        node_path = Path(shutil.which(self.node) or self.node).resolve()
        users = JobUsers(node_label, shared=NOBODY) if node_label else None
        self.sandbox = None if unsandboxed else Sandbox([self.runner_dir.resolve(), node_path.parent], users=users)
        if unsandboxed:
            log.warning("UNSAFE: the python engine runs jobs WITHOUT the OS sandbox (--unsafe-unsandboxed-python):"
                        " any job can read and change what this node's user can")

    def is_installed(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why this node cannot run python jobs (None: it can): what ``shoal id`` and the log say."""
        if problem := self._missing():
            return problem
        if self._snapshot_failure is not None:  # until the pool's next build succeeds
            wait = max(0, math.ceil(self._retry_at - time.monotonic()))
            return f"{self._snapshot_failure}; retrying in {wait} s"
        return None

    def _missing(self) -> str | None:
        """What this node lacks to start an interpreter at all (None: nothing)."""
        if shutil.which(self.node) is None:
            return f"Node.js ({self.node}) is not installed"
        if problem := node_too_old(self.node):
            return problem
        if not (self.runner_dir / "runner.mjs").is_file() or not (
                self.runner_dir / "node_modules" / "pyodide" / "pyodide.mjs").is_file():
            return "Pyodide is not installed on this node (run `shoal pyodide install`)"
        if self.sandbox is not None and (problem := self.sandbox.problem()):
            return f"the job sandbox cannot start: {problem} (or run with --unsafe-unsandboxed-python)"
        return None

    def containment_note(self) -> str | None:
        if self.sandbox is None:
            return "jobs run WITHOUT the OS sandbox (--unsafe-unsandboxed-python)"
        if self.sandbox.problem() is not None:
            return None
        notes = []
        if why := self.sandbox.no_memory_cgroups():
            notes.append(f"memory held by rlimits alone, not by a memory cgroup: {why}")
        if not self.sandbox.disables_nested_userns():
            notes.append("job code that reaches the OS may make user namespaces of its own (bubblewrap 0.8 or "
                         "later keeps it from them)")
        return "; ".join(notes) or None

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(self.pool_size, self._pool_running, len(self._idle), self._warm_runs, self._cold_runs,
                              self._reused_runs, sum(len(v) for v in self._parked.values()), self._reset_runs)

    async def prepare(self, request: RunRequest | None = None) -> None:
        """Build the memory snapshot now, if missing (outside a job's timeout); else the first job or the pool does.

        Raises:
            ExecutorError: Pyodide is not installed or does not load.
        """
        await self.snapshot()

    async def snapshot(self) -> Path:
        """The memory snapshot's file, built first if missing.

        Raises:
            ExecutorError: Pyodide is not installed or does not load.
        """
        if (problem := self._missing()) is not None:
            raise ExecutorError(problem)
        return await self._ensure_snapshot()

    # The pool -----------------------------------------------------------------------------------------------

    async def run_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep ``pool_size`` interpreters loaded until cancelled; then kill those still waiting.

        Signals ``started`` once the pool is first full (or its first interpreter failed to start: jobs then
        start cold while the pool keeps retrying). Builds the snapshot first if needed.
        """
        if self._missing() is not None:  # nothing to keep warm; jobs are refused with the reason
            task_status.started()
            return
        if self._pool_running:
            raise RuntimeError("the Pyodide pool is already running")
        self._pool_running = True
        signalled = False
        delay = POOL_RETRY_DELAY
        try:
            while True:
                await self._close_leftovers()
                await self._close_expired()
                self._idle = [r for r in self._idle if r.alive]
                if len(self._idle) >= self.pool_size:
                    if not signalled:
                        task_status.started()
                        signalled = True
                    self._refill = trio.Event()
                    with trio.move_on_after(PARK_SECONDS / 2 if self._parked else math.inf):
                        await self._refill.wait()
                    continue
                if self._idle:  # a job can still start warm meanwhile: let the running ones finish first
                    await self._settle()
                try:
                    with trio.fail_after(START_TIMEOUT):
                        runner = await self._start_runner()
                except Exception as e:  # never take the node down: jobs start cold meanwhile
                    log.warning("Pyodide pool: an interpreter failed to start (retrying in %g s): %s",
                                delay, e, exc_info=not isinstance(e, ExecutorError | trio.TooSlowError))
                    if not signalled:
                        task_status.started()
                        signalled = True
                    self._retry_at = time.monotonic() + delay
                    await trio.sleep(delay)
                    delay = min(delay * 2, POOL_RETRY_MAX)
                    continue
                delay = POOL_RETRY_DELAY
                self._idle.append(runner)
        finally:
            self._pool_running = False
            idle, self._idle = self._idle, []
            parked, self._parked = self._parked, {}
            closing, self._closing = self._closing, set()
            for runner in [*idle, *closing, *(r for waiting in parked.values() for _, r in waiting)]:
                await runner.aclose()
            if self.sandbox is not None and not self._in_flight:  # its folder holds a copy of the snapshot (30 MB)
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(self.sandbox.close)

    async def _settle(self) -> None:
        """Wait until no job has run for REFILL_SETTLE_SECONDS, or REFILL_DEFER_SECONDS at most, or no
        interpreter is idle any more (the next job would start cold)."""
        deadline = trio.current_time() + REFILL_DEFER_SECONDS
        while self._idle and trio.current_time() < deadline:
            if self._quiet.is_set() and trio.current_time() >= self._last_end + REFILL_SETTLE_SECONDS:
                return
            await trio.sleep(0.05)

    async def _close_expired(self) -> None:
        """Close the runners that waited longer than PARK_SECONDS for their owner's next job."""
        now = time.monotonic()
        expired = [r for waiting in self._parked.values() for since, r in waiting if now - since > PARK_SECONDS]
        for key in list(self._parked):
            self._parked[key] = [(t, r) for t, r in self._parked[key] if now - t <= PARK_SECONDS]
            if not self._parked[key]:
                del self._parked[key]
        for runner in expired:
            await runner.aclose()

    def _park(self, runner: _Runner) -> bool:
        """Keep ``runner`` for its owner's next job (False: it may not wait; the caller closes it)."""
        if runner.last or not self._pool_running or runner.owner is None or runner.jobs >= MAX_JOBS_PER_RUNNER:
            return False
        parked = sorted(((t, r) for waiting in self._parked.values() for t, r in waiting), key=lambda p: p[0])
        if len(parked) >= self.max_parallel:  # bounded memory: the longest-waiting one makes room
            oldest = parked[0][1]
            self._parked = {k: [(t, r) for t, r in v if r is not oldest] for k, v in self._parked.items()}
            self._closing.add(oldest)
            oldest.process.kill()
        self._parked.setdefault(runner.owner, []).append((time.monotonic(), runner))
        self._refill.set()  # the pool loop times the wait out
        return True

    def _take_parked(self, owner: tuple[str, int, int]) -> _Runner | None:
        waiting = self._parked.get(owner, [])
        while waiting:
            _, runner = waiting.pop()
            if not waiting:
                del self._parked[owner]
            if runner.alive:
                return runner
            self._closing.add(runner)
            runner.process.kill()
        return None

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
        owner = (request.owner, request.spec.resources.memory, request.disk_limit) if request.owner else None
        await self._close_leftovers()
        with self._job_running():
            return await self._run(request, prepared, owner, started)

    @contextlib.contextmanager
    def _job_running(self) -> Iterator[None]:
        """Counts the jobs running now; the pool starts interpreters when none does (or after a while)."""
        self._in_flight += 1
        if self._in_flight == 1:
            self._quiet = trio.Event()
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight:
                self._last_end = trio.current_time()
                self._quiet.set()

    async def _run(self, request: RunRequest, prepared: _Prepared, owner: tuple[str, int, int] | None,
                   started: float) -> RunResult:
        runner = self._take_parked(owner) if owner is not None else None
        reused = runner is not None
        if reused:
            self._reused_runs += 1
        else:
            runner = self._take_warm()
            if runner is not None:
                self._warm_runs += 1
                self._refill.set()
        outputs: list[tuple[Path, Path]] = []
        kept = False
        try:
            if runner is not None:
                try:
                    outputs = await self._hand_over(runner, request, prepared, owner)
                except (trio.BrokenResourceError, trio.ClosedResourceError, ExecutorError):
                    await runner.aclose()  # died while waiting; start one for this job instead
                    if reused:
                        self._reused_runs -= 1
                    else:
                        self._warm_runs -= 1
                    runner = None
            if runner is None:
                self._cold_runs += 1
                try:  # as the pool's: a start stuck at "ready" (the host out of processes) once held a job 600 s
                    with trio.fail_after(START_TIMEOUT):
                        runner = await self._start_runner()
                except trio.TooSlowError:
                    raise ExecutorError(f"the python interpreter did not start within {START_TIMEOUT:g} s") from None
                outputs = await self._hand_over(runner, request, prepared, owner)
            finished = False
            try:
                with trio.fail_after(request.spec.timeout):  # the job's clock: from its hand-over
                    result, finished = await self._collect(runner, started, request, outputs)
            finally:
                if not finished:
                    runner.process.kill()
                await trio.to_thread.run_sync(_move_outputs, outputs)
            if finished and runner.slot is not None and not runner.last:
                await trio.to_thread.run_sync(runner.slot.clear)
            kept = finished and runner.alive and self._park(runner)
            return result
        finally:
            if runner is not None and not kept:
                await self._dispose(runner)

    async def _dispose(self, runner: _Runner) -> None:
        """Kill ``runner`` now; with the pool running, the pool waits for it and removes its slot, not the job."""
        if self._pool_running:
            runner.process.kill()
            self._closing.add(runner)
            self._refill.set()
        else:
            await runner.aclose()

    async def _close_leftovers(self) -> None:
        closing, self._closing = self._closing, set()
        for runner in closing:
            await runner.aclose()

    async def _hand_over(self, runner: _Runner, request: RunRequest, prepared: _Prepared,
                         owner: tuple[str, int, int] | None) -> list[tuple[Path, Path]]:
        """Wait for the runner's fresh interpreter, place the job's files in its sandbox, set its rlimits,
        send it the job.

        Returns (sandbox output folder, the job's output folder) pairs, to move back after the run.
        """
        with trio.move_on_after(READY_WAIT) as waited:  # a job may have broken the process's next interpreter
            await runner.wait_ready()
        if waited.cancelled_caught:
            raise ExecutorError(f"the python interpreter was not ready within {READY_WAIT:g} s")
        runner.ready = False
        self._reset_runs += runner.reset
        first = runner.jobs == 0
        runner.jobs += 1
        runner.owner = owner
        # Its last job, when it cannot serve another: it then loads no interpreter after this one
        runner.last = owner is None or not self._pool_running or runner.jobs >= MAX_JOBS_PER_RUNNER
        job, outputs = dict(prepared.job), []
        if runner.slot is not None:
            job, outputs = await trio.to_thread.run_sync(_lay_out, runner.slot, prepared)
            pid = runner.interpreter_pid()
            if pid is None:
                raise trio.BrokenResourceError("the interpreter is gone")
            assert self.sandbox is not None
            cpu = int(cpu_seconds_used(pid) + request.spec.timeout) + CPU_GRACE
            # One call (each may start a prlimit process): the job's soft limits, and with its first job the
            # hard limits that hold for all its jobs (the owner includes memory and disk)
            memory = request.spec.resources.memory
            data = memory + RUNTIME_MEMORY if first and memory else None  # RLIMIT_DATA
            disk = (request.disk_limit or None) if first else None
            limits = Limits(memory=data, cpu_seconds=cpu, file_size=request.write_limit or disk,
                            file_size_hard=disk, soft=True, processes=runner.slot.process_limit)
            try:
                await limits.apply(pid, runner.slot.owner)
            except (OSError, ValueError) as e:
                raise trio.BrokenResourceError(f"cannot limit the interpreter: {e}") from e
            if first and runner.cgroup is not None:
                resident = resident_limit(memory) if memory else None
                if not await trio.to_thread.run_sync(runner.cgroup.set_limit, resident):
                    raise trio.BrokenResourceError(f"cannot hold the interpreter's memory to {resident} bytes")
        # the runner collects old interpreters before loading one that this would not leave room for
        job["resident_limit"] = runner.cgroup.limit() if runner.cgroup is not None and job.get("memory_limit") else 0
        job["last"] = runner.last
        await runner.process.stdin.send_all(json.dumps(job).encode() + b"\n")
        return outputs

    async def _collect(self, runner: _Runner, started: float, request: RunRequest,
                       outputs: list[tuple[Path, Path]]) -> tuple[RunResult, bool]:
        """The job's result, and whether it finished cleanly (its runner may serve another job).

        The job's output is what the runner's stdout and stderr carry until its "exit" message, which
        counts the bytes; the runner itself ending (a limit, a crash, a kill) also ends the job.
        """
        disk = request.write_limit
        tails = {"stdout": Tail.of(request, "stdout"), "stderr": Tail.of(request, "stderr")}
        read = {"stdout": 0, "stderr": 0}
        expected: dict[str, int] = {}
        messages: list[dict[str, Any]] = []
        broken: list[ExecutorError] = []
        forged: list[_BadControl] = []
        over_disk: list[Written] = []

        async def kill() -> None:
            runner.process.kill()

        # all the sandbox may write, not only its outputs: a job that reached Node's fs wrote beside them
        watched = [runner.slot.rw] if runner.slot is not None else [p for p, _ in outputs]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch_disk, watched, disk, request.max_entries, kill, over_disk,
                               lambda: [runner.process.pid])
            async with trio.open_nursery() as streams:

                def check_done() -> None:
                    if expected and all(read[k] >= expected[k] for k in read):
                        streams.cancel_scope.cancel()

                async def pump(name: str, stream: trio.abc.ReceiveStream | None) -> None:
                    if stream is None:
                        return
                    try:
                        while chunk := await stream.receive_some(65536):
                            tails[name].write(chunk)
                            read[name] += len(chunk)
                            check_done()
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass

                async def read_control() -> None:
                    try:
                        while (msg := await runner.message()) is not None:
                            if not _reports_the_end(msg):  # the program found the channel (job code can reach
                                raise _BadControl(str(msg)[:200])  # Node.js): 24 MiB of "{}" lines held the node
                            messages.append(msg)
                            if msg["event"] == "error":  # it ends after saying so
                                return
                            if msg["event"] == "exit":
                                if "reusable" in msg:  # the job left a callback behind: it serves no other job
                                    runner.last = True
                                expected.update(stdout=msg["stdout"], stderr=msg["stderr"])
                                check_done()
                                # The bytes it counted are on their way. A runner that never sends them must
                                # not hold its job until the timeout: it is stopped, and the job ends as reported.
                                await trio.sleep(OUTPUT_GRACE)
                                log.warning("a python runner reported its job's exit, then sent %s of the %s bytes "
                                            "it counted within %g s: stopped", read, expected, OUTPUT_GRACE)
                                runner.process.kill()
                                return
                    except _BadControl as e:  # while its job runs, only the job writes what the runner would not
                        forged.append(e)
                        runner.process.kill()
                    except ExecutorError as e:  # kept for after the nursery, so it is not wrapped in a group
                        broken.append(e)
                        runner.process.kill()

                streams.start_soon(pump, "stdout", runner.process.stdout)
                streams.start_soon(pump, "stderr", runner.process.stderr)
                streams.start_soon(read_control)
            nursery.cancel_scope.cancel()
        # What the job wrote past the runner's count by a synchronous write (process._rawDebug, fs.writeSync) is
        # in the pipe before the exit message was sent, but may not have been read when the count was met:
        # left there, it went to the owner's next index and the miscounting process served it.
        for name, stream in (("stdout", runner.process.stdout), ("stderr", runner.process.stderr)):
            read[name] += _drain_ready(stream, tails[name]) if stream is not None else 0
        stdout, stderr = tails["stdout"], tails["stderr"]
        finished = bool(expected) and read == expected and not over_disk and runner.alive
        if not finished:  # e.g. more bytes than it counted: the process cannot be trusted with another job
            runner.process.kill()
        returncode = None if finished else await runner.process.wait()
        if broken:
            raise broken[0]
        if forged:
            stderr.write(f"\n{FORGED_CONTROL}\n".encode())
            return RunResult(exit_code=1, stdout=stdout.text(), stderr=stderr.text(),
                             stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
                             started_at=started, finished_at=time.time()), False
        # RLIMIT_FSIZE stops a single file at exactly ``disk`` bytes, and the job sees EFBIG: when it then failed,
        # it failed for its disk (not when it failed of its own accord with a file of another length)
        reached = bool(disk) and not any(m.get("code") == 0 for m in messages) and \
            await trio.to_thread.run_sync(_a_file_of, watched, disk)
        if not over_disk and watched:
            written = await trio.to_thread.run_sync(written_in, watched, request.max_entries)
            if written.past(disk) or reached:
                over_disk.append(written)
        if over_disk:
            line = disk_overrun(over_disk[0], disk, request.max_entries, reached=reached)
            stderr.write(f"\n{line}\n".encode())
            return RunResult(exit_code=1, stdout=stdout.text(), stderr=stderr.text(),
                             stdout_truncated=stdout.truncated, stderr_truncated=stderr.truncated,
                             started_at=started, finished_at=time.time()), False
        exits = [m for m in messages if m.get("event") == "exit"]
        errors = [m for m in messages if m.get("event") == "error"]
        if exits:
            exit_code = int(exits[0]["code"])
        elif errors:
            raise ExecutorError(f"the Pyodide runner failed: {errors[0].get('message', '')[:2000]}")
        else:  # the process ended without reporting: a limit (CPU time, memory, file size) or V8 gave up
            assert returncode is not None
            exit_code = returncode if returncode >= 0 else 128 - returncode
            if runner.cgroup is not None and runner.cgroup.oom_kills():
                held, memory = format_bytes(runner.cgroup.limit()), format_bytes(request.spec.resources.memory)
                stderr.write(f"\nshoal: out of memory: the job's processes reached {held}, all the Python runtime may "
                             f"hold for a job of {memory} (resources.memory); JavaScript objects count too\n".encode())
            else:
                stderr.write(f"\nthe Python runtime stopped unexpectedly ({_describe_status(returncode)})\n".encode())
        if exit_code and "ModuleNotFoundError: No module named" in stderr.text()[-2000:]:
            stderr.write(MISSING_MODULE_HINT.encode())
        return RunResult(
            exit_code=exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            started_at=started,
            finished_at=time.time(),
        ), finished

    # Interpreters -------------------------------------------------------------------------------------------

    async def _start_runner(self) -> _Runner:
        """A new interpreter, loaded and ready for one job. Killed again if anything goes wrong."""
        if (problem := self._missing()) is not None:
            raise ExecutorError(problem)
        snapshot = await self._ensure_snapshot()
        read_fd, write_fd = os.pipe()
        slot = cgroup = seccomp = None
        try:
            options = ["--control-fd", str(write_fd), "--warm-up", str(WARM_UP_ROUNDS)]
            if self.sandbox is None:
                process = await trio.lowlevel.open_process(
                    [*self._node_command(), *options, "--snapshot", str(snapshot)],
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                    pass_fds=(write_fd,), env=_node_env(), cwd=self.runner_dir,
                )
            else:
                sandbox = self.sandbox
                shared = await trio.to_thread.run_sync(sandbox.share, snapshot, snapshot.name)
                slot = await trio.to_thread.run_sync(sandbox.new_slot)
                cgroup = await trio.to_thread.run_sync(sandbox.memory_cgroup, slot)
                if cgroup is not None and not cgroup.set_limit(RUNTIME_MEMORY):
                    raise OSError(f"cannot limit the memory of cgroup {cgroup.path}")
                program = socket_filter()
                seccomp = filter_descriptor(program) if program else None
                argv = sandbox.command(
                    [*self._node_command(sandboxed=shared), *options, "--snapshot", str(shared)],
                    slot=slot, env=_node_env(sandboxed=True), extra_ro=[shared], cgroup=cgroup, seccomp=seccomp,
                    limits=Limits(cpu_seconds=IDLE_CPU_LIMIT, cpu_seconds_hard=RUNNER_CPU_LIMIT,
                                  processes=slot.process_limit))
                inherited = (write_fd,) if seccomp is None else (write_fd, seccomp)
                process = SandboxedProcess(argv, pass_fds=inherited)
        except BaseException as e:  # cancelled too (a job's start timeout): the slot's uid is given back
            os.close(read_fd)
            if slot is not None:
                slot.remove()
            if cgroup is not None:
                cgroup.remove()
            if isinstance(e, OSError):
                raise ExecutorError(f"cannot start Node.js ({self.node}): {e}") from e
            raise
        finally:
            os.close(write_fd)
            if seccomp is not None:
                os.close(seccomp)
        runner = _Runner(process, trio.lowlevel.FdStream(read_fd), slot, cgroup)
        try:
            await runner.wait_ready()
        except BaseException:
            await runner.aclose()
            raise
        return runner

    def _node_command(self, sandboxed: Path | None = None) -> list[str]:
        """Node.js and the runner; ``sandboxed`` (the snapshot's path) adds Node's permission model."""
        runner_dir = self.runner_dir.resolve() if sandboxed else self.runner_dir
        permissions = [] if sandboxed is None else [
            "--experimental-permission", f"--allow-fs-read={runner_dir}/*", f"--allow-fs-read={sandboxed}",
            f"--allow-fs-read={SLOT_TARGET}/*", f"--allow-fs-write={SLOT_TARGET}/rw/*"]
        # --single-threaded-gc: on a node busy with many runners, parallel collector threads cost more CPU
        # than they save time (measured: about 10-20 % less CPU per job)
        return [self.node, "--no-warnings", "--expose-gc", "--single-threaded-gc", "--v8-pool-size=1", *permissions,
                str(runner_dir / "runner.mjs")]

    async def _ensure_snapshot(self) -> Path:
        """The memory snapshot of a freshly loaded Pyodide, built once per runner version and Node.js version.

        Loading Pyodide the same way gives the same bytes on every machine (checked), so every node's
        interpreters start from the same state. Until a build succeeds after one failed, the engine is not
        offered (``problem()``); the pool retries.
        """
        async with self._snapshot_lock:
            if self._snapshot is not None and self._snapshot.exists():
                return self._snapshot
            try:
                self._snapshot = await self._build_snapshot()
            except OSError as e:  # e.g. a full disk
                self._snapshot_failure = f"cannot prepare the Python runtime (Pyodide snapshot): {e}"
                raise ExecutorError(self._snapshot_failure) from e
            except ExecutorError as e:
                self._snapshot_failure = str(e)
                raise
            self._snapshot_failure = None
            return self._snapshot

    async def _build_snapshot(self) -> Path:
        """The snapshot's file for this runner and Node.js, built if missing (holding ``_snapshot_lock``)."""
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
        return path


def _drain_ready(stream: Any, tail: Tail) -> int:
    """Read what ``stream`` (a non-blocking pipe) holds now into ``tail``, without waiting; the bytes read."""
    got = 0
    try:
        while chunk := os.read(stream.fileno(), 65536):
            tail.write(chunk)
            got += len(chunk)
    except OSError:  # nothing more now (EAGAIN), or the pipe is gone
        pass
    return got


def _reports_the_end(msg: Any) -> bool:
    """Whether a control message is one the runner sends while a job runs: its exit (code, byte counts, and
    ``reusable: false`` when the job left a callback behind), or its own failure."""
    if not isinstance(msg, dict):
        return False
    if msg.get("event") == "exit":
        counts = all(type(msg.get(k)) is int for k in ("code", "stdout", "stderr"))
        return counts and msg.get("reusable", False) is False
    return msg.get("event") == "error" and isinstance(msg.get("message", ""), str)


async def _pump(stream: trio.abc.ReceiveStream | None, sink: Tail) -> None:
    if stream is None:
        return
    try:
        while chunk := await stream.receive_some(65536):
            sink.write(chunk)
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


def _node_env(*, sandboxed: bool = False) -> dict[str, str]:
    """Node.js gets nothing from the node's environment that a job could observe. One thread in libuv's pool
    (four by default), as in V8's (``--v8-pool-size``): a job reaching Node keeps no more of them busy, and
    a python run counts as one core."""
    path = "/usr/bin:/bin" if sandboxed else os.environ.get("PATH", "/usr/bin:/bin")
    return {"PATH": path, "TZ": "UTC", "LANG": "C.UTF-8", "UV_THREADPOOL_SIZE": "1"}


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, or a pid reused by another program, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def _describe_status(returncode: int) -> str:
    if returncode == -signal.SIGXCPU or returncode == -signal.SIGKILL:
        return f"killed by signal {-returncode}: the CPU time or memory limit was reached"
    if returncode == -signal.SIGXFSZ:
        return "a file grew past the job's disk limit (resources.disk)"
    return f"exit status {returncode}"


def _lay_out(slot: Slot, prepared: _Prepared) -> tuple[dict[str, Any], list[tuple[Path, Path]]]:
    """The job's directories placed in the slot, and its job line with the paths the sandbox sees.

    Blocking (worker thread). Returns the job and (slot output folder, the job's output folder) pairs.
    """
    job = dict(prepared.job)
    mounts, outputs, inside = [], [], []
    for m in prepared.mounts:
        if m.writable:
            host, seen = slot.place_writable()
            outputs.append((host, m.host))
        else:
            seen = slot.place_read_only(m.host)
        mounts.append({"host": seen, "target": m.target, "writable": m.writable})
        inside.append((m.target, seen))
    job["mounts"] = mounts
    job["wheels"] = [{"host": _seen_at(w["path"], inside), "path": w["path"]} for w in job["wheels"]]
    return job, outputs


def _seen_at(path: str, mounts: list[tuple[str, str]]) -> str:
    """Where the sandbox sees job path ``path``, through the (target, sandbox path) mount with the longest target."""
    target, seen = max(((t, s) for t, s in mounts if path == t or path.startswith(t.rstrip("/") + "/")),
                       key=lambda pair: len(pair[0]))
    return seen + path[len(target):]


def _move_outputs(outputs: list[tuple[Path, Path]]) -> None:
    """What the job wrote in its sandbox, moved to the job's output folders. Blocking."""
    for written, dest in outputs:
        if not written.exists():
            continue
        remove_tree(dest)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(written, dest)
        own_again(dest)


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
            return _Prepared({}, [], f"python: can't open file {main!r}: [Errno 2] No such file or directory\n", 2)
    wheels = []
    for requirement in spec.requirements:
        wheel, problem = _check_wheel(requirement, pairs)
        if problem:
            return _Prepared({}, [], f"shoal: cannot install requirement {requirement!r}: {problem}\n", 1)
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
    return _Prepared(job, mounts)


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


def _a_file_of(dirs: list[Path], size: int) -> bool:
    """Whether a file under ``dirs`` is ``size`` bytes long. Blocking."""
    with contextlib.suppress(Unwalkable):
        return any(stat.S_ISREG(st.st_mode) and st.st_size == size for d in dirs for _, st in entries(d))
    return False
