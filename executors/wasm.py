"""The ``wasm`` engine: WASI (preview 1) modules under wasmtime, deterministic by construction.

What a module sees:
  * argv ``[module, *args]``, the job's env, an empty stdin;
  * inputs read-only at their job paths, declared outputs writable at theirs (directories);
  * clocks, sleeps and randomness replaced by deterministic ones seeded from the job: every read of a
    clock advances a virtual clock by ``CLOCK_STEP_NS`` (wall time starts at ``EPOCH_SECONDS``), a sleep
    (``poll_oneoff`` on a clock) jumps the virtual clock instead of waiting, ``random_get`` is a stream
    derived from the job seed;
  * files' times at the epoch, inode numbers in the order the run first sees each file, one link each,
    directories of 4096 bytes, directory listings sorted by name (the host's differ from node to node);
  * no threads, NaN canonicalization, deterministic relaxed SIMD.

Where it runs: compiled by one child process, run by another (``executors.wasm_child``), never in the
node's own process, whose descriptors, memory and GIL every job
shares. Limits:
  * memory: ``resources.memory`` caps the store's one linear memory (``memory.grow`` beyond it fails, and
    a run that then fails says so in its stderr) and its tables to a quarter of it; the process as a whole
    is held to that and ``RUN_MEMORY_FLOOR`` (RLIMIT_DATA);
  * descriptors: ``OPEN_FILES`` (RLIMIT_NOFILE), whatever the module opens;
  * disk: the node's disk watch, and no one file past the limit (RLIMIT_FSIZE);
  * output: past ``DRAIN_FREELY`` of a stream, the node reads it at 16 MB/s at most (all but its tail is
    dropped): a module writing faster waits, within its timeout;
  * time: the caller's deadline kills the process (and CPU time past the job's timeout, RLIMIT_CPU);
  * compiling: the job's memory (at least ``COMPILE_MEMORY_FLOOR``), CPU time and timeout.

A trap is a normal result: exit code 134 (what ``wasmtime run`` reports) and the trap in stderr.
Compiled modules are cached by content hash in ``cache_dir``; the least recently used beyond
``CACHE_BYTES`` are deleted.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import importlib.metadata
import json
import logging
import math
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from executors._common import (
    CLOCK_STEP_NS,
    EPOCH_SECONDS,
    DirMount,
    Tail,
    Written,
    disk_overrun,
    host_path,
    job_path,
    job_seed,
    plan_mounts,
    watch_disk,
    written_past,
)
from executors.base import Executor, ExecutorError, RunRequest
from executors.sandbox import Limits
from jobs import RunResult, WasmEngine, format_bytes
from jobs.spec import SEEN_WHILE_RUNNING

try:
    import wasmtime

    from executors.wasm_child import CONFIG_VERSION, INVALID_MODULE, TRAP_EXIT_CODE
    _WASMTIME_VERSION = importlib.metadata.version("wasmtime")
except ImportError:  # pragma: no cover - wasmtime is a dependency; is_installed() reports it
    wasmtime = None  # type: ignore[assignment]
    TRAP_EXIT_CODE = 134

CACHE_BYTES = 1024**3  # compiled modules kept; beyond it the least recently used go
COMPILE_MEMORY_FLOOR = 256 * 1024**2  # compiling may take this much however small the job: the interpreter's share
# a run's process beyond its module's memory: the interpreter, wasmtime and code (128 MiB), and the folder listings
# it keeps (``wasm_child.MAX_LISTED_BYTES``: 16 MiB of names, about twice that as Python objects). Without the
# listings' share, a run listing a big folder through many descriptors peaked at 166 of its 208 MiB here, and ran
# out of memory now and then in CI (a retryable failure of the node, never a result)
RUN_MEMORY_FLOOR = 160 * 1024**2
OPEN_FILES = 1024  # descriptors a run may hold open: the interpreter's few, and the module's
KILL_WAIT = 5.0  # seconds to wait for a killed run's process to be gone
START_TIMEOUT = 30.0  # seconds for a run's process to say it started (a new interpreter, on a busy node)
SERVER_RESTART = 10.0  # seconds before the fork server is started again when it ended, or did not start
MAX_OUTCOME_BYTES = 64 * 1024  # a run's outcome JSON; more is no outcome (its trap text is cut short in the child)
# after this much of a stream, the node reads on at 16 MB/s at most (a chunk of 64 KiB each DRAIN_PAUSE): output
# past the kept tail is dropped, and a module writing without end cost the node up to half a core (a full pipe
# now slows the module instead)
DRAIN_FREELY = 16 * 1024**2
DRAIN_PAUSE = 0.004
_CHILD = str(Path(__file__).with_name("wasm_child.py"))

log = logging.getLogger(__name__)


def _module_job_path(engine: WasmEngine, request: RunRequest) -> str:
    """Where the module lives inside the job: a path, or the job path of the ``ipfs://`` input it names."""
    module = engine.module
    if module.startswith("ipfs://"):
        cid = module.removeprefix("ipfs://").strip("/")
        for spec in request.spec.inputs:
            if spec.source.removeprefix("ipfs://").strip("/") == cid:
                return spec.path
        raise ExecutorError(f"module {module} is not among the job's inputs", retryable=False)
    return job_path(module)


def _module_file(spec: WasmEngine, request: RunRequest) -> Path:
    host = host_path(_module_job_path(spec, request), ((m.target, m.source) for m in request.inputs))
    if host is None or not host.is_file():
        raise ExecutorError(f"module {spec.module} is not among the job's inputs", retryable=False)
    return host


@dataclass
class _Outcome:
    exit_code: int
    note: str = ""  # appended to stderr: a trap, the memory limit


def _limits(request: RunRequest) -> dict[str, int]:
    """A run's process's rlimits, which it sets on itself before it reads anything of the job."""
    memory, disk = request.spec.resources.memory, request.write_limit
    limits = {"RLIMIT_NOFILE": OPEN_FILES, "RLIMIT_CORE": 0, "RLIMIT_CPU": math.ceil(request.spec.timeout) + 1}
    if memory:
        limits["RLIMIT_DATA"] = memory + memory // 4 + RUN_MEMORY_FLOOR
    if disk:  # no one file grows past the disk limit between two of the disk watch's looks (the write fails,
        limits["RLIMIT_FSIZE"] = disk + 1  # EFBIG: Python ignores SIGXFSZ; the watch then stops the run)
    return limits


def _run_request(request: RunRequest, spec: WasmEngine, compiled: Path, mounts: list[DirMount]) -> bytes:
    """What the run's process (``executors.wasm_child``) reads from its connection."""
    return json.dumps({
        "compiled": str(compiled),
        "argv": [_module_job_path(spec, request), *spec.args],
        "env": sorted(request.spec.env.items()),
        "mounts": [(str(m.host), m.target, m.writable) for m in mounts],
        "entrypoint": spec.entrypoint,
        "memory": request.spec.resources.memory,
        "epoch_ns": EPOCH_SECONDS * 1_000_000_000,
        "clock_step_ns": CLOCK_STEP_NS,
        "random_key": hashlib.sha256(b"wasm random_get:" + job_seed(request)).hexdigest(),
    }).encode()


async def _drain(stream: trio.abc.ReceiveStream, sink: Callable[[bytes], object]) -> None:
    read = 0
    async with stream:
        while chunk := await stream.receive_some(65536):
            sink(chunk)
            read += len(chunk)
            if read > DRAIN_FREELY:
                await trio.sleep(DRAIN_PAUSE)


async def _read_pid(connection: trio.SocketStream) -> int:
    """The first line a run's process writes: its pid (written before it reads the job: it is still there)."""
    line = b""
    with trio.move_on_after(START_TIMEOUT):
        while not line.endswith(b"\n") and len(line) < 32:
            if not (chunk := await connection.receive_some(32 - len(line))):
                break
            line += chunk
    if not line.endswith(b"\n") or not line[:-1].isdigit():
        raise ExecutorError("the wasm runtime's process did not start")
    return int(line)


def _told(said: bytes) -> dict:
    try:
        told = json.loads(said)
    except ValueError:
        return {}
    return told if isinstance(told, dict) else {}


def _outcome(told: dict, killed: bool, memory: int) -> _Outcome:
    """The run's end, from what its process ``told`` on its connection, and whether the node ``killed`` it."""
    if "refused" in told:
        raise ExecutorError(str(told["refused"]), retryable=bool(told.get("retryable")))
    if not isinstance(told.get("exit_code"), int):
        if killed:  # the disk limit, or the job's deadline
            return _Outcome(TRAP_EXIT_CODE, "interrupted: the run was stopped")
        # the system killed it (out of memory: the node's state, not the job's), it ran out of CPU time (the
        # node's speed), or its runtime out of memory (Rust's allocator aborts on RLIMIT_DATA, at a point that
        # depends on the interpreter): a result saying so would differ from other nodes'. Never told by its
        # stderr, which the module writes too.
        raise ExecutorError("the run's process ended without an outcome on this node: the system killed it, it "
                            "ran out of CPU time, or its runtime ran out of memory", retryable=True)
    if told.get("memory_at_start"):
        return _Outcome(TRAP_EXIT_CODE, f"the module needs more memory at start than the job's limit of "
                                        f"{format_bytes(memory)} (resources.memory)")
    code, note, used = told["exit_code"], str(told.get("trap") or ""), told.get("memory_used")
    # memory.grow beyond the limit returns -1 and programs then fail: flag runs that got close
    if code and memory and isinstance(used, int) and used * 2 >= memory:
        note = (note + "\n" if note else "") + (
            f"memory limit: the module had {format_bytes(used)} of linear memory when it failed; "
            f"growing beyond the job's limit of {format_bytes(memory)} (resources.memory) is refused")
    return _Outcome(code, note)


class _Process:
    """A process of the wasm engine (the fork server, a run), watched by pidfd: a run forked by the fork server
    is not the node's child, and the kernel reaps it."""

    def __init__(self, argv: list[str] | None = None, *pass_fds: int, parent: _Process | None = None) -> None:
        self.pid: int | None = None
        self.pidfd = -1
        self.parent = parent  # the fork server that forked it
        self._popen = None if argv is None else subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=pass_fds)
        if self._popen is not None:
            self.attach(self._popen.pid)

    def attach(self, pid: int) -> None:
        self.pid, self.pidfd = pid, os.pidfd_open(pid)

    def kill(self) -> None:
        if self.pidfd >= 0:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)

    def ended(self) -> bool:
        return self.pidfd < 0 or bool(select.select([self.pidfd], [], [], 0)[0])

    async def wait(self) -> int | None:
        """Until it has ended; its exit status when it was the node's child."""
        if self.pidfd >= 0:
            await trio.lowlevel.wait_readable(self.pidfd)
        return None if self._popen is None else self._popen.wait()

    async def stop(self) -> None:
        self.kill()
        with trio.CancelScope(shield=True), trio.move_on_after(KILL_WAIT):
            await self.wait()
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1


class WasmExecutor(Executor):
    """Runs each ``wasm`` job in a process of its own (``executors.wasm_child``), killed when its run is cancelled.

    Args:
        cache_dir: where compiled modules are kept, named by the SHA-256 of the module and the engine
            configuration. Created if missing; safe to share between executors of the same wasmtime version.
    """

    name = "wasm"

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_parallel = max(1, os.cpu_count() or 1)  # a run takes a whole core, whatever its job states
        self._server: trio.socket.SocketType | None = None  # the fork server's control socket, while it runs
        self._forker: _Process | None = None  # and the fork server

    def is_installed(self) -> bool:
        return self.problem() is None

    def problem(self) -> str | None:
        """Why this node cannot run wasm jobs (None: it can): each run is a process of this interpreter."""
        if wasmtime is None:
            return "wasmtime is not installed"
        if not os.access(sys.executable, os.X_OK):
            return f"this node's user may not run its own interpreter {sys.executable} (a run's process)"
        return None

    async def run_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep a fork server (``executors.wasm_child.serve``) that starts each run's process, until cancelled.
        Without it (it is restarting, or no pool runs) each run starts a new interpreter, 80 ms slower."""
        if not self.is_installed():
            task_status.started()
            return
        while True:
            ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            with ours:
                try:
                    server = _Process([sys.executable, "-I", _CHILD, "serve", str(theirs.fileno())], theirs.fileno())
                except OSError as e:  # runs start new interpreters meanwhile (and fail as this did)
                    log.warning("the wasm fork server did not start: %s; trying again in %g s", e, SERVER_RESTART)
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    await trio.sleep(SERVER_RESTART)
                    continue
                finally:
                    theirs.close()
                try:
                    self._server, self._forker = trio.socket.from_stdlib_socket(ours), server
                    task_status.started()
                    task_status = trio.TASK_STATUS_IGNORED
                    status = await server.wait()
                finally:
                    self._server = self._forker = None
                    await server.stop()
            log.warning("the wasm fork server ended (exit status %s); starting another", status)
            await trio.sleep(SERVER_RESTART)

    async def run(self, request: RunRequest) -> RunResult:
        engine_spec = request.spec.engine
        if not isinstance(engine_spec, WasmEngine):
            raise ExecutorError(f"the wasm executor cannot run a {engine_spec.name!r} job", retryable=False)
        if (problem := self.problem()) is not None:
            raise ExecutorError(f"this node cannot run wasm jobs: {problem}")
        started = time.time()
        stdout, stderr = Tail.of(request, "stdout"), Tail.of(request, "stderr")
        outputs = [m.source for m in request.output_mounts()]
        over_disk: list[Written] = []
        mounts = await trio.to_thread.run_sync(plan_mounts, request, request.work_dir)
        for _ in range(2):
            compiled = await self._compiled(request, engine_spec)
            told, killed = await self._run_process(request, engine_spec, compiled, mounts, stdout, stderr,
                                                   over_disk)
            if not told.get("damaged"):
                break
            compiled.unlink(missing_ok=True)  # compiled again
        result = _outcome(told, killed, request.spec.resources.memory)
        ended = isinstance(told.get("exit_code"), int)
        if ended or not over_disk:  # the outputs as the module left them, not what the watch saw on the way
            written = await written_past(outputs, request.write_limit, request.max_entries)
            over_disk = [] if written is None else [written]
        if over_disk:  # how far the run got depends on when the disk watch looked: its output is dropped
            line = disk_overrun(over_disk[0], request.write_limit, request.max_entries)
            if not ended:  # stopped midway: the watch may have seen a passing overshoot another node's missed
                raise ExecutorError(line + SEEN_WHILE_RUNNING, retryable=False)
            result, stdout, stderr = _Outcome(1, line), Tail(), Tail()
        if result.note:
            stderr.write(("\n" if stderr.total else "").encode() + result.note.encode() + b"\n")
        return RunResult(
            exit_code=result.exit_code,
            stdout=stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=stdout.truncated,
            stderr_truncated=stderr.truncated,
            started_at=started,
            finished_at=time.time(),
        )

    async def _run_process(self, request: RunRequest, spec: WasmEngine, compiled: Path, mounts: list[DirMount],
                           stdout: Tail, stderr: Tail, over_disk: list[Written]) -> tuple[dict, bool]:
        """Run the compiled module in a process of its own until it ends, or the disk watch or the caller ends
        it: (what it told of its end, whether the node killed it)."""
        outputs = [m.source for m in request.output_mounts()]
        ours, theirs = socket.socketpair()
        (out, out_end), (err, err_end) = os.pipe(), os.pipe()
        connection = trio.SocketStream(trio.socket.from_stdlib_socket(ours))
        streams = (connection, trio.lowlevel.FdStream(out), trio.lowlevel.FdStream(err))
        try:
            process = await self._start(_limits(request), theirs.fileno(), out_end, err_end)
        except BaseException:
            for stream in streams:
                await stream.aclose()
            raise
        finally:
            for fd in (theirs.detach(), out_end, err_end):
                os.close(fd)
        said, killed = bytearray(), False

        async def kill() -> None:
            nonlocal killed
            killed = True
            process.kill()

        async def talk() -> None:
            await connection.send_all(_run_request(request, spec, compiled, mounts))
            await connection.send_eof()
            while chunk := await connection.receive_some(65536):
                said.extend(chunk)
                if len(said) > MAX_OUTCOME_BYTES:  # not an outcome the child writes: none at all
                    said.clear()
                    process.kill()
                    return

        try:
            pid = await _read_pid(connection)
            if process.pid is None:  # forked: no child of the node's
                process.attach(pid)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch_disk, outputs, request.write_limit, request.max_entries, kill,
                                   over_disk, lambda: [process.pid])
                async with trio.open_nursery() as talking:  # until the process is gone (or killed)
                    talking.start_soon(_drain, streams[1], stdout.write)
                    talking.start_soon(_drain, streams[2], stderr.write)
                    talking.start_soon(talk)
                await process.wait()
                nursery.cancel_scope.cancel()
        finally:
            await process.stop()
            for stream in streams:
                await stream.aclose()
        told = _told(bytes(said))
        if not told and not killed and process.parent is not None and process.parent.ended():
            # its run ended with it (PR_SET_PDEATHSIG): the node's failure, not the job's
            raise ExecutorError("the wasm fork server ended during the run; it runs again", retryable=True)
        return told, killed

    async def _start(self, limits: dict[str, int], connection: int, stdout: int, stderr: int) -> _Process:
        """A run's process: forked by the fork server, or (none running) a new interpreter."""
        if self._server is not None:
            fds = array.array("i", (connection, stdout, stderr))
            with contextlib.suppress(OSError):  # it is gone: the pool starts another
                await self._server.sendmsg([json.dumps(limits).encode()],
                                           [(socket.SOL_SOCKET, socket.SCM_RIGHTS, fds)])
                return _Process(parent=self._forker)
        argv = [sys.executable, "-I", _CHILD, "run", str(connection), str(stdout), str(stderr), json.dumps(limits)]
        return _Process(argv, connection, stdout, stderr)

    async def prepare(self, request: RunRequest) -> None:
        """Compile the job's module into the cache before its run (a large module takes seconds)."""
        spec = request.spec.engine
        if isinstance(spec, WasmEngine) and wasmtime is not None:
            await self._compiled(request, spec)

    # Compiling, and the cache of compiled modules ---------------------------------------------------------

    async def _compiled(self, request: RunRequest, spec: WasmEngine) -> Path:
        """The job's module compiled: from the cache, or by a child process held to the job's memory (at
        least ``COMPILE_MEMORY_FLOOR``), CPU time and timeout (see ``executors.wasm_child``)."""
        module = _module_file(spec, request)
        digest = await trio.to_thread.run_sync(_file_digest, module)
        cached = self.cache_dir / f"{digest}.v{CONFIG_VERSION}-wasmtime{_WASMTIME_VERSION}.cwasm"
        if await trio.to_thread.run_sync(_touch, cached):
            return cached
        await trio.to_thread.run_sync(lambda: self.cache_dir.mkdir(parents=True, exist_ok=True))
        fd, tmp = tempfile.mkstemp(dir=self.cache_dir, suffix=".tmp")
        os.close(fd)
        memory, timeout = max(request.spec.resources.memory, COMPILE_MEMORY_FLOOR), request.spec.timeout
        limits = Limits(memory=memory, cpu_seconds=max(1, math.ceil(timeout)))
        # the compiler ends when this pipe does, with the node: trio starts it from a worker thread, and
        # PR_SET_PDEATHSIG would end it with that thread (a kill -9 of the node left compiles running for hours)
        try:
            alive, held = os.pipe()
        except OSError:
            Path(tmp).unlink(missing_ok=True)
            raise
        argv = [*limits.prlimit_args(), sys.executable, "-I", _CHILD, "compile", str(module), tmp, str(alive)]
        try:
            with trio.move_on_after(timeout) as deadline:
                done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False,
                                              pass_fds=(alive,))
            # Only an invalid module fails every node alike. Time, CPU and memory are this node's to spend on
            # compiling, which a node that compiled the module before skips: a client that had two nodes compile
            # it got the third, running it cold under a short timeout, outvoted until it was quarantined.
            if deadline.cancelled_caught:
                raise ExecutorError(f"compiling the module took longer than the job's timeout of {timeout:g} s "
                                    "on this node", retryable=True)
            if done.returncode != 0:
                raise ExecutorError(_compile_failure(done.returncode, done.stderr, memory),
                                    retryable=done.returncode != INVALID_MODULE)
            os.replace(tmp, cached)
        finally:
            os.close(alive)
            os.close(held)
            Path(tmp).unlink(missing_ok=True)
        await trio.to_thread.run_sync(self._trim_cache, cached)
        return cached

    def _trim_cache(self, keep: Path) -> None:
        """Delete the least recently used compiled modules beyond ``CACHE_BYTES`` (each job may add one), and
        what compilers killed with their node (kill -9) left half written an hour ago or more."""
        for partial in self.cache_dir.glob("*.tmp"):
            with contextlib.suppress(OSError):
                if partial.stat().st_mtime < time.time() - 3600:
                    partial.unlink()
        entries = []
        for path in self.cache_dir.glob("*.cwasm"):
            with contextlib.suppress(OSError):
                st = path.stat()
                entries.append((st.st_mtime, st.st_size, path))
        total = sum(size for _, size, _ in entries)
        for _, size, path in sorted(entries):
            if total <= CACHE_BYTES:
                break
            if path != keep:
                path.unlink(missing_ok=True)
                total -= size


def _file_digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _touch(path: Path) -> bool:
    """Mark a cached module as just used (the cache keeps what was used last); False if it is not there."""
    try:
        os.utime(path)
        return True
    except FileNotFoundError:
        return False


def _compile_failure(returncode: int, stderr: bytes, memory: int) -> str:
    said = stderr.decode(errors="replace").strip()
    if returncode == INVALID_MODULE:
        return f"the module is not valid WebAssembly: {said[-500:]}"
    if "memory allocation" in said:  # Rust's allocator aborts when RLIMIT_DATA refuses it memory
        return f"compiling the module needs more than {format_bytes(memory)} of memory (resources.memory)"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return "compiling the module took more CPU time than the job's timeout"
    return f"compiling the module failed (exit code {returncode}): {said[-300:]}"
