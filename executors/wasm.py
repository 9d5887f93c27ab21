"""The ``wasm`` engine: WASI (preview 1) modules under wasmtime, deterministic by construction.

What a module sees:
  * argv ``[module, *args]``, the job's env, an empty stdin;
  * inputs read-only at their job paths, declared outputs writable at theirs (directories);
  * clocks, sleeps and randomness replaced by deterministic ones seeded from the job: every read of a
    clock advances a virtual clock by ``CLOCK_STEP_NS`` (wall time starts at ``EPOCH_SECONDS``), a sleep
    (``poll_oneoff`` on a clock) jumps the virtual clock instead of waiting, ``random_get`` is a stream
    derived from the job seed;
  * no threads, NaN canonicalization, deterministic relaxed SIMD.
Not covered: file times, inode numbers and directory listing order come from the host file system (a
shadowed WASI function cannot call wasmtime's own implementation, which needs the calling instance).

Limits:
  * memory: ``resources.memory`` caps the store's linear memory; ``memory.grow`` beyond it fails, and
    a run that then fails says so in its stderr;
  * time: the caller's deadline. Cancellation bumps the run's engine epoch, so the module traps at its
    next loop back-edge or call and the worker thread ends;
  * compiling: a child process held to the job's memory, CPU time and timeout (``executors.wasm_compile``);
  * host calls: the functions below run in the node's process with the GIL, so each call's work is bounded:
    ``random_get`` makes its bytes ``RANDOM_CHUNK`` at a time and stops when the run is cancelled,
    ``poll_oneoff`` takes at most ``MAX_SUBSCRIPTIONS``; wasmtime's own ``fd_read``/``fd_write`` run without
    the GIL and refuse a buffer of 128 MiB or more (ENOMEM).

A trap is a normal result: exit code 134 (what ``wasmtime run`` reports) and the trap in stderr.
Compiled modules are cached by content hash in ``cache_dir``; the least recently used beyond
``CACHE_BYTES`` are deleted.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import math
import os
import signal
import struct
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import outcome
import trio
from cryptography.hazmat.primitives.hashes import SHAKE256, XOFHash

from executors._common import (
    CLOCK_STEP_NS,
    EPOCH_SECONDS,
    DirMount,
    Tail,
    disk_limit_message,
    host_path,
    job_path,
    job_seed,
    plan_mounts,
    watch_disk,
    written_past,
)
from executors.base import Executor, ExecutorError, RunRequest
from executors.sandbox import Limits
from jobs import RunResult, ShoalError, WasmEngine, format_bytes

try:
    import wasmtime

    from executors.wasm_compile import CONFIG_VERSION, INVALID_MODULE, engine_config
    _WASMTIME_VERSION = importlib.metadata.version("wasmtime")
except ImportError:  # pragma: no cover - wasmtime is a dependency; is_installed() reports it
    wasmtime = None  # type: ignore[assignment]

CACHE_BYTES = 1024**3  # compiled modules kept; beyond it the least recently used go
COMPILE_MEMORY_FLOOR = 256 * 1024**2  # compiling may take this much however small the job: the interpreter's share
_COMPILER = str(Path(__file__).with_name("wasm_compile.py"))
RANDOM_CHUNK = 1024**2  # random_get's bytes made and written at a time
MAX_SUBSCRIPTIONS = 1 << 16  # per poll_oneoff: 3 MiB of subscriptions; more is refused (EINVAL)
MAX_TABLES = 16  # per run: a module needs one or two
MIN_TABLE_ELEMENTS = 100_000  # elements per table at least, whatever the memory limit
TRAP_EXIT_CODE = 134  # what `wasmtime run` exits with on a trap (128 + SIGABRT)
_WASI = "wasi_snapshot_preview1"
_EPOCH_NS = EPOCH_SECONDS * 1_000_000_000
# WASI errno values
_ESUCCESS, _EFAULT, _EINVAL, _ENOTSUP = 0, 21, 28, 58


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


class WasmExecutor(Executor):
    """Runs ``wasm`` jobs in a worker thread. One wasmtime engine per run, so cancelling one run stops only it.

    Args:
        cache_dir: where compiled modules are kept, named by the SHA-256 of the module and the engine
            configuration. Created if missing; safe to share between executors of the same wasmtime version.
    """

    name = "wasm"

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)
        self.max_parallel = max(1, os.cpu_count() or 1)  # a run takes a whole core, whatever its job states
        # runs' threads, apart from trio's default pool: forty running modules once held every thread the
        # node's store writes need
        self._threads = trio.CapacityLimiter(self.max_parallel)

    def is_installed(self) -> bool:
        return wasmtime is not None

    async def run(self, request: RunRequest) -> RunResult:
        engine_spec = request.spec.engine
        if not isinstance(engine_spec, WasmEngine):
            raise ExecutorError(f"the wasm executor cannot run a {engine_spec.name!r} job", retryable=False)
        if wasmtime is None:
            raise ExecutorError("wasmtime is not installed on this node")
        started = time.time()
        engine = wasmtime.Engine(engine_config())
        module = await self._module(request, engine_spec, engine)
        store = wasmtime.Store(engine)
        store.set_epoch_deadline(1)  # set before the worker starts: any later epoch bump interrupts the run
        job = _Run(request, engine_spec, store, module, engine)
        over_disk: list[int] = []

        async def interrupt() -> None:
            job.interrupt()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(_interrupt_when_cancelled, job)
            nursery.start_soon(watch_disk, [m.source for m in request.output_mounts()], request.write_limit,
                               request.max_entries, interrupt, over_disk, lambda: [os.getpid()])
            try:
                captured = await trio.to_thread.run_sync(outcome.capture, job.run, limiter=self._threads)
            finally:
                nursery.cancel_scope.cancel()
        result = captured.unwrap()  # raised here, not inside the nursery, so errors are not wrapped in a group
        stderr = job.stderr
        if not over_disk and (written := await written_past(
                [m.source for m in request.output_mounts()], request.write_limit, request.max_entries)) is not None:
            over_disk.append(written)
        if over_disk:
            line = disk_limit_message(over_disk[0], request.write_limit, request.max_entries)
            result = _Outcome(result.exit_code or 1, line)
        if result.note:
            stderr.write(("\n" if stderr.total else "").encode() + result.note.encode() + b"\n")
        return RunResult(
            exit_code=result.exit_code,
            stdout=job.stdout.text(),
            stderr=stderr.text(),
            stdout_truncated=job.stdout.truncated,
            stderr_truncated=stderr.truncated,
            started_at=started,
            finished_at=time.time(),
        )

    async def prepare(self, request: RunRequest) -> None:
        """Compile the job's module into the cache before its run (a large module takes seconds)."""
        spec = request.spec.engine
        if isinstance(spec, WasmEngine) and wasmtime is not None:
            await self._compiled(request, spec)

    # Compiling, and the cache of compiled modules ---------------------------------------------------------

    async def _module(self, request: RunRequest, spec: WasmEngine, engine: wasmtime.Engine) -> wasmtime.Module:
        for _ in range(2):
            compiled = await self._compiled(request, spec)
            try:
                return await trio.to_thread.run_sync(wasmtime.Module.deserialize_file, engine, str(compiled))
            except wasmtime.WasmtimeError:
                compiled.unlink(missing_ok=True)  # damaged: compiled again
        raise ExecutorError("the compiled module could not be loaded")

    async def _compiled(self, request: RunRequest, spec: WasmEngine) -> Path:
        """The job's module compiled: from the cache, or by a child process held to the job's memory (at
        least ``COMPILE_MEMORY_FLOOR``), CPU time and timeout (see ``executors.wasm_compile``)."""
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
        argv = [*limits.prlimit_args(), sys.executable, "-I", _COMPILER, str(module), tmp]
        try:
            with trio.move_on_after(timeout) as deadline:
                done = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
            if deadline.cancelled_caught:
                raise ExecutorError(f"compiling the module took longer than the job's timeout of {timeout:g} s",
                                    retryable=False)
            if done.returncode != 0:
                raise ExecutorError(_compile_failure(done.returncode, done.stderr, memory), retryable=False)
            os.replace(tmp, cached)
        finally:
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


async def _interrupt_when_cancelled(job: _Run) -> None:
    try:
        await trio.sleep_forever()
    finally:
        job.interrupt()


class _VirtualClock:
    """Time as the module sees it: moves ``CLOCK_STEP_NS`` per read, and jumps for sleeps."""

    def __init__(self) -> None:
        self.monotonic_ns = 0

    def read(self, clock_id: int) -> int:
        self.monotonic_ns += CLOCK_STEP_NS
        return _EPOCH_NS + self.monotonic_ns if clock_id == 0 else self.monotonic_ns

    def now(self, clock_id: int) -> int:
        return _EPOCH_NS + self.monotonic_ns if clock_id == 0 else self.monotonic_ns

    def advance_to(self, clock_id: int, deadline_ns: int) -> None:
        target = deadline_ns - _EPOCH_NS if clock_id == 0 else deadline_ns
        self.monotonic_ns = max(self.monotonic_ns, target)


class _Run:
    """One run of one module; everything here runs in the worker thread except ``interrupt``."""

    def __init__(
        self,
        request: RunRequest,
        spec: WasmEngine,
        store: wasmtime.Store,
        module: wasmtime.Module,
        engine: wasmtime.Engine,
    ) -> None:
        self.module = module
        self.request = request
        self.spec = spec
        self.engine = engine
        self.store = store
        self.stdout = Tail.of(request, "stdout")
        self.stderr = Tail.of(request, "stderr")
        self.clock = _VirtualClock()
        self.random_key = hashlib.sha256(b"wasm random_get:" + job_seed(request)).digest()
        self.random_calls = 0
        self._interrupted = threading.Event()

    def interrupt(self) -> None:
        self._interrupted.set()
        self.engine.increment_epoch()

    # The run ------------------------------------------------------------------------------------------------

    def run(self) -> _Outcome:
        module = self.module
        mounts = plan_mounts(self.request, self.request.work_dir)

        wasi = wasmtime.WasiConfig()
        wasi.argv = [_module_job_path(self.spec, self.request), *self.spec.args]
        wasi.env = sorted(self.request.spec.env.items())
        wasi.stdout_custom = self.stdout.write
        wasi.stderr_custom = self.stderr.write
        for m in mounts:
            _preopen(wasi, m)
        self.store.set_wasi(wasi)
        limit = self.request.spec.resources.memory
        if limit:
            # each linear memory is held to the limit: so one memory, and tables (which wasmtime allocates in
            # the node's process too) of at most a sixteenth of it in elements
            self.store.set_limits(memory_size=limit, memories=1, tables=MAX_TABLES,
                                  table_elements=max(MIN_TABLE_ELEMENTS, limit // 16))

        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self._shadow_wasi(linker, module)

        instance: wasmtime.Instance | None = None
        try:
            instance = linker.instantiate(self.store, module)
            entry = instance.exports(self.store).get(self.spec.entrypoint)
            if not isinstance(entry, wasmtime.Func):
                raise ExecutorError(f"the module exports no function {self.spec.entrypoint!r}", retryable=False)
            entry(self.store)
            return _Outcome(0)
        except wasmtime.ExitTrap as e:
            return self._failed(e.code, "", instance) if e.code else _Outcome(0)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            # its traceback holds wasmtime's frames, which hold it and the store: left to the cycle collector, the
            # files the module had open (the space of deleted ones too) outlived an interrupted run by minutes
            e.__traceback__ = None
            if self._interrupted.is_set():
                return _Outcome(TRAP_EXIT_CODE, "interrupted: the run was cancelled")
            if instance is None and limit and "memory" in str(e).lower():
                return _Outcome(
                    TRAP_EXIT_CODE,
                    f"the module needs more memory at start than the job's limit of {format_bytes(limit)} "
                    "(resources.memory)",
                )
            return self._failed(TRAP_EXIT_CODE, f"error: {e}", instance)

    def _failed(self, code: int, note: str, instance: wasmtime.Instance | None) -> _Outcome:
        """A failed run; says so when the memory limit is the likely cause."""
        limit = self.request.spec.resources.memory
        if limit and instance is not None:
            memory = instance.exports(self.store).get("memory")
            if isinstance(memory, wasmtime.Memory):
                used = memory.data_len(self.store)
                # memory.grow beyond the limit returns -1 and programs then fail: flag runs that got close.
                if used * 2 >= limit:
                    note = (note + "\n" if note else "") + (
                        f"memory limit: the module had {format_bytes(used)} of linear memory when it failed; "
                        f"growing beyond the job's limit of {format_bytes(limit)} (resources.memory) is refused"
                    )
        return _Outcome(code, note)

    # Deterministic WASI ----------------------------------------------------------------------------------

    def _shadow_wasi(self, linker: wasmtime.Linker, module: wasmtime.Module) -> None:
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.allow_shadowing = True

        def define(name: str, params: list[wasmtime.ValType], fn: Callable[..., int]) -> None:
            linker.define_func(_WASI, name, wasmtime.FuncType(params, [i32]), _errno(fn), access_caller=True)

        define("clock_time_get", [i32, i64, i32], self._clock_time_get)
        define("clock_res_get", [i32, i32], self._clock_res_get)
        define("random_get", [i32, i32], self._random_get)
        define("poll_oneoff", [i32, i32, i32, i32], self._poll_oneoff)

    def _clock_time_get(self, caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
        if not 0 <= clock_id <= 3:
            return _EINVAL
        _write(caller, out, struct.pack("<Q", self.clock.read(clock_id)))
        return _ESUCCESS

    def _clock_res_get(self, caller: wasmtime.Caller, clock_id: int, out: int) -> int:
        if not 0 <= clock_id <= 3:
            return _EINVAL
        _write(caller, out, struct.pack("<Q", CLOCK_STEP_NS))
        return _ESUCCESS

    def _random_get(self, caller: wasmtime.Caller, buf: int, length: int) -> int:
        self.random_calls += 1
        buf, length = buf & 0xFFFFFFFF, length & 0xFFFFFFFF
        if buf + length > _memory(caller).data_len(caller):
            raise _Fault  # before making the bytes: 4 GiB asked of a one-page memory were once made in the node
        # Made in one piece, 2 GiB held the node's GIL for seconds and took 6 GiB of its memory, out of reach of
        # the run's deadline. The same stream (the shake_256 of the key and the call's number: nodes compare the
        # results of deterministic jobs) is read a chunk at a time instead.
        stream = XOFHash(SHAKE256(digest_size=sys.maxsize))
        stream.update(self.random_key + self.random_calls.to_bytes(8, "little"))
        for start in range(0, length, RANDOM_CHUNK):
            if self._interrupted.is_set():
                raise wasmtime.Trap("interrupted: the run was cancelled")
            _write(caller, buf + start, stream.squeeze(min(RANDOM_CHUNK, length - start)))
        return _ESUCCESS

    def _poll_oneoff(self, caller: wasmtime.Caller, subs: int, events: int, nsubs: int, nevents_out: int) -> int:
        """Never waits: file descriptors are always ready, and a sleep jumps the virtual clock to its end."""
        nsubs &= 0xFFFFFFFF
        if not 0 < nsubs <= MAX_SUBSCRIPTIONS:
            return _EINVAL  # 44 million (2 GiB) once took the node a minute and 12 GiB
        raw = _read(caller, subs, 48 * nsubs)
        fds, clocks = [], []
        for i in range(nsubs):
            sub = raw[48 * i : 48 * (i + 1)]
            userdata, tag = struct.unpack_from("<QB", sub, 0)
            if tag == 0:
                clock_id, timeout, _precision, flags = struct.unpack_from("<IxxxxQQH", sub, 16)
                if not 0 <= clock_id <= 3:
                    return _EINVAL
                deadline = timeout if flags & 1 else self.clock.now(clock_id) + timeout
                clocks.append((userdata, clock_id, deadline))
            elif tag in (1, 2):
                fds.append((userdata, tag))
            else:
                return _EINVAL
        out = bytearray()
        if fds:
            for userdata, tag in fds:
                out += struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, tag, 0, 0)
        else:
            first = min(clocks, key=lambda c: c[2] - (_EPOCH_NS if c[1] == 0 else 0))
            self.clock.advance_to(first[1], first[2])
            for userdata, clock_id, deadline in clocks:
                if self.clock.now(clock_id) >= deadline:
                    out += struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, 0, 0, 0)
        _write(caller, events, bytes(out))
        _write(caller, nevents_out, struct.pack("<I", len(out) // 32))
        return _ESUCCESS


def _preopen(wasi: wasmtime.WasiConfig, mount: DirMount) -> None:
    try:
        wasi.preopen_dir(str(mount.host), mount.target, fs_mutable=mount.writable)
    except wasmtime.WasmtimeError as e:
        raise ExecutorError(f"cannot give the module {mount.target} ({mount.host}): {e}") from e


class _Fault(ShoalError):
    """A pointer from the module is outside its memory."""


def _memory(caller: wasmtime.Caller) -> wasmtime.Memory:
    memory = caller.get("memory")
    if not isinstance(memory, wasmtime.Memory):
        raise _Fault
    return memory


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> None:
    ptr &= 0xFFFFFFFF  # wasm passes pointers as signed i32
    memory = _memory(caller)
    if ptr + len(data) > memory.data_len(caller):
        raise _Fault
    memory.write(caller, data, ptr)


def _read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes:
    ptr &= 0xFFFFFFFF
    memory = _memory(caller)
    if ptr + length > memory.data_len(caller):
        raise _Fault
    return bytes(memory.read(caller, ptr, ptr + length))


def _errno(fn: Callable[..., int]) -> Callable[..., int]:
    def wrapper(caller: wasmtime.Caller, *args: int) -> int:
        try:
            return fn(caller, *args)
        except _Fault:
            return _EFAULT

    return wrapper
