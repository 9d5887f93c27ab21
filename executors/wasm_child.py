"""What a wasm job's child processes do: compile its module, and run it. Never the node's own process.

Compiling: Cranelift's memory and time grow with the module, outside anything a store limits: one 4 MB
function took 500 MB and seconds, and a module may hold many, compiled on every core. In the node's process
that was memory and CPU no job paid for, and a compile no deadline could stop (a worker thread cannot be
cancelled). So the node runs ``python -I wasm_child.py compile MODULE OUT ALIVE`` held to the job's own
memory (RLIMIT_DATA), CPU time and timeout, compiling on one thread, and loads the machine code it wrote; it
ends when the descriptor ALIVE does (the node's end of it closed). Exit 0: ``OUT`` holds the compiled
module; 2: the module is not valid WebAssembly (the reason on stderr).

Running: a module's open files, tables and host calls were the node's when wasmtime ran in its process: one
job opening files in a loop took every descriptor the node had (its API, peers, store and other jobs then
failed with EMFILE), and sixteen full tables held eight times the job's memory there. ``python -I
wasm_child.py run`` holds them in a process of its own, under its own limits (see ``executors.wasm``),
which a kill ends whole. It reads the run's JSON on stdin (``executors.wasm._run_request``); the module
writes to this process's stdout and stderr; the outcome goes to the descriptor ``outcome_fd`` as JSON,
``{"exit_code": N, "trap": ..., "memory_used": ...}``, or ``{"refused": why, "damaged": ..., "retryable": ...}``
(the job cannot run: ``damaged``, the node compiles the module again and runs it afresh; ``retryable``, another
node may run it). Clocks, sleeps, randomness and what the module learns of its files are made deterministic here
(see ``executors.wasm``).

It imports wasmtime and cryptography, and nothing of the node: a run starts in a tenth of a second.
"""

from __future__ import annotations

import ctypes
import itertools
import json
import os
import resource
import signal
import socket
import struct
import sys
import threading
from collections.abc import Callable

import wasmtime
from cryptography.hazmat.primitives.hashes import SHAKE256, XOFHash

# Bumped when the engine configuration changes, so cached machine code of an older one is not reused.
CONFIG_VERSION = 2
INVALID_MODULE = 2  # exit code: the module is not valid WebAssembly


def engine_config(*, parallel: bool = True) -> wasmtime.Config:
    """The one engine configuration of wasm jobs (compiled code loads only into an engine configured alike)."""
    config = wasmtime.Config()
    config.cranelift_nan_canonicalization = True
    config.wasm_threads = False
    config.wasm_relaxed_simd_deterministic = True
    config.parallel_compilation = parallel  # the child compiles on one core: a job's CPU is one core or more
    return config


def compile_module(module: str, out: str, alive: str) -> int:
    """Compile ``module`` into ``out``; exit at once when the descriptor ``alive`` reaches its end (the node,
    which holds its other end, is gone)."""
    threading.Thread(target=_exit_at_end, args=(int(alive),), daemon=True).start()
    with open(module, "rb") as f:
        wasm = f.read()
    try:
        compiled = wasmtime.Module(wasmtime.Engine(engine_config(parallel=False)), wasm)
    except wasmtime.WasmtimeError as e:
        print(_bounded(str(e)), file=sys.stderr)
        return INVALID_MODULE
    with open(out, "wb") as f:
        f.write(compiled.serialize())
    return 0


def _exit_at_end(fd: int) -> None:
    while os.read(fd, 1):
        pass
    os._exit(1)


def _bounded(text: str, lines: int = 40, width: int = 200) -> str:
    """A message of wasmtime's, as the node is told it: it may echo a line of the module (a 20 MB line of a
    .wat file), or name a function once per frame of a backtrace (a 10 MB name, 200 MB of trap)."""
    kept = [line if len(line) <= width else line[:width] + "…" for line in text.splitlines()[:lines]]
    return "\n".join(kept) + ("\n…" if len(text.splitlines()) > lines else "")


RANDOM_CHUNK = 1024**2  # random_get's bytes made and written at a time
MAX_SUBSCRIPTIONS = 1 << 16  # per poll_oneoff: 3 MiB of subscriptions; more is refused (EINVAL)
# bytes of directory listings kept for fd_readdir's next calls, all descriptors together (the oldest dropped
# past it, to be listed again): one copy per open descriptor, without a bound, ran the run out of memory at a
# point that differed from run to run
MAX_LISTED_BYTES = 16 << 20
LISTED_ENTRY_BYTES = 128  # what an entry kept takes besides its name
MAX_TABLES = 16  # per run: a module needs one or two
MIN_TABLE_ELEMENTS = 100_000  # elements per table at least, whatever the memory limit: as earlier releases allowed
TABLE_ELEMENT_BYTES = 8  # what wasmtime keeps per element (a pointer)
TRAP_EXIT_CODE = 134  # what `wasmtime run` exits with on a trap (128 + SIGABRT)
_WASI = "wasi_snapshot_preview1"
_PR_SET_PDEATHSIG = 1
# WASI errno values
_ESUCCESS, _EFAULT, _EINVAL, _ENAMETOOLONG = 0, 21, 28, 37
_DIRECTORY = 3  # WASI filetype
_FILESTAT = struct.Struct("<QQB7xQQQQQ")  # dev, ino, filetype, nlink, size, atim, mtim, ctim
_DIRENT = struct.Struct("<QQIB3x")  # d_next, d_ino, d_namlen, d_type; the name follows
# A module of our own calling wasmtime's stat and readdir with a memory of its own: a Python host function
# cannot call them itself (they take the memory of the instance calling them), and both instances share the
# store's WASI context, the module's open files with it.
_FILE_FACTS = wasmtime.wat2wasm("""(module
  (import "wasi_snapshot_preview1" "fd_filestat_get" (func $fd_filestat_get (param i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_filestat_get"
    (func $path_filestat_get (param i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_readdir" (func $fd_readdir (param i32 i32 i32 i64 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_unlink_file" (func $path_unlink_file (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_remove_directory"
    (func $path_remove_directory (param i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_rename" (func $path_rename (param i32 i32 i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_close" (func $fd_close (param i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_renumber" (func $fd_renumber (param i32 i32) (result i32)))
  (memory (export "memory") 17 17)
  (func (export "fd_filestat_get") (param i32 i32) (result i32)
    (call $fd_filestat_get (local.get 0) (local.get 1)))
  (func (export "path_filestat_get") (param i32 i32 i32 i32 i32) (result i32)
    (call $path_filestat_get (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "fd_readdir") (param i32 i32 i32 i64 i32) (result i32)
    (call $fd_readdir (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4)))
  (func (export "path_unlink_file") (param i32 i32 i32) (result i32)
    (call $path_unlink_file (local.get 0) (local.get 1) (local.get 2)))
  (func (export "path_remove_directory") (param i32 i32 i32) (result i32)
    (call $path_remove_directory (local.get 0) (local.get 1) (local.get 2)))
  (func (export "path_rename") (param i32 i32 i32 i32 i32 i32) (result i32)
    (call $path_rename (local.get 0) (local.get 1) (local.get 2) (local.get 3) (local.get 4) (local.get 5)))
  (func (export "fd_close") (param i32) (result i32) (call $fd_close (local.get 0)))
  (func (export "fd_renumber") (param i32 i32) (result i32) (call $fd_renumber (local.get 0) (local.get 1))))""")
_ROOM = 65536 - 8  # of its first page: a stat at 0 and paths after it
# the other 16 pages: a listing's chunk, then its length. wasmtime reads a folder afresh for each chunk asked of
# it, so a listing costs time quadratic in its chunks: in 64 KiB ones, 40,000 entries took 24 s
_LIST_AT, _LIST_ROOM = 65536, 16 * 65536 - 8
_PATH_AT = _FILESTAT.size


def table_elements(memory: int) -> int:
    """Elements per table: all ``MAX_TABLES`` full take at most a quarter of the job's memory."""
    return max(MIN_TABLE_ELEMENTS, memory // (4 * MAX_TABLES * TABLE_ELEMENT_BYTES))


class _VirtualClock:
    """Time as the module sees it: moves ``step_ns`` per read, and jumps for sleeps."""

    def __init__(self, epoch_ns: int, step_ns: int) -> None:
        self.epoch_ns = epoch_ns
        self.step_ns = step_ns
        self.monotonic_ns = 0
        self.end_ns = 2**64 - 1 - epoch_ns  # a WASI timestamp is 64 bits: the clocks stop there

    def read(self, clock_id: int) -> int:
        self.monotonic_ns = min(self.monotonic_ns + self.step_ns, self.end_ns)
        return self.now(clock_id)

    def now(self, clock_id: int) -> int:
        return self.epoch_ns + self.monotonic_ns if clock_id == 0 else self.monotonic_ns

    def advance_to(self, clock_id: int, deadline_ns: int) -> None:
        target = deadline_ns - self.epoch_ns if clock_id == 0 else deadline_ns
        self.monotonic_ns = min(max(self.monotonic_ns, target), self.end_ns)


class _Run:
    """One run of one module, as ``request`` (the JSON from the node) describes it."""

    def __init__(self, request: dict) -> None:
        self.request = request
        self.engine = wasmtime.Engine(engine_config())
        self.store = wasmtime.Store(self.engine)
        self.clock = _VirtualClock(request["epoch_ns"], request["clock_step_ns"])
        self.random_key = bytes.fromhex(request["random_key"])
        self.random_calls = 0

    def run(self) -> dict:
        request = self.request
        try:
            module = wasmtime.Module.deserialize_file(self.engine, request["compiled"])
        except wasmtime.WasmtimeError as e:  # damaged: the node compiles it again
            return _refused(f"the compiled module could not be loaded: {e}", damaged=True)
        wasi = wasmtime.WasiConfig()
        wasi.argv = request["argv"]
        wasi.env = request["env"]
        wasi.inherit_stdout()
        wasi.inherit_stderr()
        for host, target, writable in request["mounts"]:
            try:
                wasi.preopen_dir(host, target, fs_mutable=writable)
            except wasmtime.WasmtimeError as e:
                return _refused(f"cannot give the module {target} ({host}): {e}")
        self.store.set_wasi(wasi)
        limit = request["memory"]
        if limit:
            # one linear memory held to the limit, and tables (wasmtime keeps them in this process too) of a
            # quarter of it together
            # (and the 17 pages, 1.06 MiB, of ``_FILE_FACTS``)
            self.store.set_limits(memory_size=limit, memories=2, tables=MAX_TABLES,
                                  table_elements=table_elements(limit))
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        self.files = _FileFacts(self.store, linker, request["epoch_ns"])  # before the shadows: wasmtime's own
        self._shadow_wasi(linker)
        instance: wasmtime.Instance | None = None
        try:
            instance = linker.instantiate(self.store, module)
            entry = instance.exports(self.store).get(request["entrypoint"])
            if not isinstance(entry, wasmtime.Func):
                return _refused(f"the module exports no function {request['entrypoint']!r}")
            entry(self.store)
            return {"exit_code": 0}
        except wasmtime.ExitTrap as e:
            return self._outcome(e.code, "", instance)
        except (wasmtime.Trap, wasmtime.WasmtimeError) as e:
            if instance is None and limit and "memory" in str(e).lower():
                return {"exit_code": TRAP_EXIT_CODE, "memory_at_start": True}
            return self._outcome(TRAP_EXIT_CODE, f"error: {_bounded(str(e))}", instance)
        except MemoryError:  # where the process's memory runs out depends on its interpreter, not the module alone
            return _refused("the run's process ran out of memory on this node", retryable=True)
        except Exception as e:  # a host function of ours failed on what the module passed it: a trap too
            return self._outcome(TRAP_EXIT_CODE, f"error: a host call failed: {type(e).__name__}", instance)

    def _outcome(self, code: int, trap: str, instance: wasmtime.Instance | None) -> dict:
        """A run's end, with the linear memory it had when it failed (the node says when the limit is the
        likely cause)."""
        used = None
        if code and instance is not None:
            memory = instance.exports(self.store).get("memory")
            if isinstance(memory, wasmtime.Memory):
                used = memory.data_len(self.store)
        return {"exit_code": code, "trap": trap, "memory_used": used}

    # Deterministic WASI ----------------------------------------------------------------------------------

    def _shadow_wasi(self, linker: wasmtime.Linker) -> None:
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.allow_shadowing = True

        def define(name: str, params: list[wasmtime.ValType], fn: Callable[..., int]) -> None:
            linker.define_func(_WASI, name, wasmtime.FuncType(params, [i32]), fn, access_caller=True)

        define("clock_time_get", [i32, i64, i32], self._clock_time_get)
        define("clock_res_get", [i32, i32], self._clock_res_get)
        define("random_get", [i32, i32], self._random_get)
        define("poll_oneoff", [i32, i32, i32, i32], self._poll_oneoff)
        define("fd_filestat_get", [i32, i32], self.files.fd_filestat_get)
        define("path_filestat_get", [i32, i32, i32, i32, i32], self.files.path_filestat_get)
        define("fd_readdir", [i32, i32, i32, i64, i32], self.files.fd_readdir)
        define("path_unlink_file", [i32, i32, i32], self.files.path_unlink_file)
        define("path_remove_directory", [i32, i32, i32], self.files.path_remove_directory)
        define("path_rename", [i32, i32, i32, i32, i32, i32], self.files.path_rename)
        define("fd_close", [i32], self.files.fd_close)
        define("fd_renumber", [i32, i32], self.files.fd_renumber)

    def _clock_time_get(self, caller: wasmtime.Caller, clock_id: int, precision: int, out: int) -> int:
        if not 0 <= clock_id <= 3:
            return _EINVAL
        return _ESUCCESS if _write(caller, out, struct.pack("<Q", self.clock.read(clock_id))) else _EFAULT

    def _clock_res_get(self, caller: wasmtime.Caller, clock_id: int, out: int) -> int:
        if not 0 <= clock_id <= 3:
            return _EINVAL
        return _ESUCCESS if _write(caller, out, struct.pack("<Q", self.clock.step_ns)) else _EFAULT

    def _random_get(self, caller: wasmtime.Caller, buf: int, length: int) -> int:
        self.random_calls += 1
        buf, length = buf & 0xFFFFFFFF, length & 0xFFFFFFFF
        if _memory(caller, buf, length) is None:
            return _EFAULT  # before making the bytes: 4 GiB asked of a one-page memory were once made for nothing
        # The same stream (the shake_256 of the key and the call's number: nodes compare the results of
        # deterministic jobs), made and written a chunk at a time: in one piece, 2 GiB took 6 GiB of memory.
        stream = XOFHash(SHAKE256(digest_size=sys.maxsize))
        stream.update(self.random_key + self.random_calls.to_bytes(8, "little"))
        for start in range(0, length, RANDOM_CHUNK):
            _write(caller, buf + start, stream.squeeze(min(RANDOM_CHUNK, length - start)))
        return _ESUCCESS

    def _poll_oneoff(self, caller: wasmtime.Caller, subs: int, events: int, nsubs: int, nevents_out: int) -> int:
        """Never waits: file descriptors are always ready, and a sleep jumps the virtual clock to its end."""
        nsubs &= 0xFFFFFFFF
        if not 0 < nsubs <= MAX_SUBSCRIPTIONS:
            return _EINVAL  # 44 million (2 GiB) once took a minute and 12 GiB
        raw = _read(caller, subs, 48 * nsubs)
        if raw is None:
            return _EFAULT
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
            epoch = self.clock.epoch_ns
            first = min(clocks, key=lambda c: c[2] - (epoch if c[1] == 0 else 0))
            self.clock.advance_to(first[1], first[2])
            for userdata, clock_id, deadline in clocks:
                if self.clock.now(clock_id) >= deadline:
                    out += struct.pack("<QHBxxxxxQHxxxxxx", userdata, 0, 0, 0, 0)
        written = _write(caller, events, bytes(out)) and _write(caller, nevents_out, struct.pack("<I", len(out) // 32))
        return _ESUCCESS if written else _EFAULT


class _FileFacts:
    """What the module learns of its files, without the host's facts. wasmtime answers stat and readdir with
    the host file system's times, inode numbers, link counts, directory sizes and listing order, which differ
    from node to node and from run to run: honest nodes' results differed on a job that printed them, and a
    client could have nodes outvoted at will. Each answer here is wasmtime's with those replaced: times at the
    epoch, inode numbers in the order the run first sees each file (a file removed takes its number with it: ext4
    gives a new file the number of one just deleted, tmpfs never does), one link, directories of 4096 bytes,
    listings sorted by name."""

    def __init__(self, store: wasmtime.Store, linker: wasmtime.Linker, epoch_ns: int) -> None:
        exports = linker.instantiate(store, wasmtime.Module(store.engine, _FILE_FACTS)).exports(store)
        self.memory, self.stat, self.path_stat, self.readdir, self.unlink, self.rmdir, self.rename, self.close, \
            self.renumber = (exports[name] for name in (
                "memory", "fd_filestat_get", "path_filestat_get", "fd_readdir", "path_unlink_file",
                "path_remove_directory", "path_rename", "fd_close", "fd_renumber"))
        self.epoch_ns = epoch_ns
        self.inodes: dict[int, int] = {}  # wasmtime's inode number -> the one the module is told
        self.numbers = itertools.count(1)
        # fd -> the number of the file it holds open, removed since (its host inode number may go to a new file)
        self.removed_open: dict[int, int] = {}
        # fd -> the directory's inode (wasmtime's) and its entries (name, number, type), sorted; the oldest first
        self.listings: dict[int, tuple[int, list[tuple[bytes, int, int]], int]] = {}  # ..., and its bytes
        self.listed_bytes = 0

    def fd_filestat_get(self, caller: wasmtime.Caller, fd: int, out: int) -> int:
        return self.stat(caller, fd, 0) or self._put_stat(caller, out, fd)

    def fd_close(self, caller: wasmtime.Caller, fd: int) -> int:
        errno = self.close(caller, fd)
        if not errno:
            self._closed(fd)
        return errno

    def fd_renumber(self, caller: wasmtime.Caller, fd: int, to: int) -> int:
        errno = self.renumber(caller, fd, to)
        if not errno and fd != to:
            number = self.removed_open.get(fd)
            self._closed(fd)
            self._closed(to)
            if number is not None:
                self.removed_open[to] = number
        return errno

    def _closed(self, fd: int) -> None:
        """What was kept of ``fd``'s file is dropped with it: the next file it names is another."""
        self.removed_open.pop(fd, None)
        self._unlist(fd)

    def path_filestat_get(self, caller: wasmtime.Caller, fd: int, flags: int, path: int, length: int,
                          out: int) -> int:
        length &= 0xFFFFFFFF
        return self._copy_path(caller, path, length, _PATH_AT) \
            or self.path_stat(caller, fd, flags, _PATH_AT, length, 0) or self._put_stat(caller, out)

    def path_unlink_file(self, caller: wasmtime.Caller, fd: int, path: int, length: int) -> int:
        return self._removing(caller, fd, path, length, self.unlink, directory=False)

    def path_remove_directory(self, caller: wasmtime.Caller, fd: int, path: int, length: int) -> int:
        return self._removing(caller, fd, path, length, self.rmdir, directory=True)

    def path_rename(self, caller: wasmtime.Caller, fd: int, old: int, old_length: int, new_fd: int, new: int,
                    new_length: int) -> int:
        """A rename onto an existing name removes what was there."""
        old_length, new_length = old_length & 0xFFFFFFFF, new_length & 0xFFFFFFFF
        new_at = _PATH_AT + old_length
        errno = self._copy_path(caller, old, old_length, _PATH_AT) \
            or self._copy_path(caller, new, new_length, new_at)
        if errno:
            return errno
        moved, replaced = self._host_inode(caller, fd, _PATH_AT, old_length), \
            self._host_inode(caller, new_fd, new_at, new_length)  # a directory replaced is gone whole
        errno = self.rename(caller, fd, _PATH_AT, old_length, new_fd, new_at, new_length)
        if not errno and replaced is not None and moved is not None and replaced[0] != moved[0]:
            self._forget(*replaced)
        return errno

    def _removing(self, caller: wasmtime.Caller, fd: int, path: int, length: int, remove: wasmtime.Func, *,
                  directory: bool) -> int:
        length &= 0xFFFFFFFF
        errno = self._copy_path(caller, path, length, _PATH_AT)
        if errno:
            return errno
        removed = self._host_inode(caller, fd, _PATH_AT, length)
        errno = remove(caller, fd, _PATH_AT, length)
        if not errno and removed is not None:
            self._forget(*removed)
        return errno

    def _copy_path(self, caller: wasmtime.Caller, path: int, length: int, at: int) -> int:
        """Copy the module's path into our memory at ``at``; 0, or an errno."""
        if _memory(caller, path, length) is None:
            return _EFAULT
        if at + length > _ROOM:
            return _ENAMETOOLONG  # wasmtime's own limit is 4096 bytes (Linux's)
        self.memory.write(caller, _read(caller, path, length), at)
        return _ESUCCESS

    def _host_inode(self, caller: wasmtime.Caller, fd: int, at: int, length: int) -> tuple[int, int] | None:
        """The inode number (wasmtime's) and link count of what the path at ``at`` names (not following a
        link), or None. A directory has one link here: removed, or replaced by a rename, it is gone (its host
        count also counts its subdirectories' ``..``)."""
        if self.path_stat(caller, fd, 0, at, length, 0):
            return None
        _dev, inode, kind, links, *_rest = self._stat_read(caller)
        return inode, 1 if kind == _DIRECTORY else links

    def _forget(self, inode: int, links: int) -> None:
        """A file's last link is gone: the host may give its inode number to the next file made."""
        if links <= 1:
            self.inodes.pop(inode, None)

    def fd_readdir(self, caller: wasmtime.Caller, fd: int, buf: int, length: int, cookie: int,
                   used_out: int) -> int:
        """The entries from ``cookie`` (their index in the sorted listing), listed afresh from the start."""
        cookie &= 2**64 - 1
        errno = self.stat(caller, fd, 0)  # a closed descriptor, or one now naming another file, lists afresh
        if errno:
            return errno
        directory = self._stat_read(caller)[1]
        if cookie == 0 or self.listings.get(fd, (None, None, 0))[0] != directory:
            listing = self._list(caller, fd)
            if isinstance(listing, int):
                return listing
            self._keep_listing(fd, directory, listing)
        else:
            listing = self.listings[fd][1]
        length &= 0xFFFFFFFF
        out = bytearray()
        entries = listing
        for index in range(min(cookie, len(entries)), len(entries)):
            if len(out) >= length:
                break
            name, number, kind = entries[index]
            out += _DIRENT.pack(index + 1, number, len(name), kind) + name
        out = out[:length]  # a last entry cut short: the module asks again with more room
        written = _write(caller, buf, bytes(out)) and _write(caller, used_out, struct.pack("<I", len(out)))
        return _ESUCCESS if written else _EFAULT

    def _keep_listing(self, fd: int, directory: int, listing: list[tuple[bytes, int, int]]) -> None:
        """Keep ``listing`` for ``fd``'s next calls, within MAX_LISTED_BYTES (a listing dropped is listed again:
        the same entries, sorted, so what the module reads never depends on what was kept)."""
        self._unlist(fd)
        size = sum(len(name) + LISTED_ENTRY_BYTES for name, _, _ in listing)
        while self.listings and self.listed_bytes + size > MAX_LISTED_BYTES:
            self._unlist(next(iter(self.listings)))
        if size <= MAX_LISTED_BYTES:
            self.listings[fd] = (directory, listing, size)
            self.listed_bytes += size

    def _unlist(self, fd: int) -> None:
        if (kept := self.listings.pop(fd, None)) is not None:
            self.listed_bytes -= kept[2]

    def _list(self, caller: wasmtime.Caller, fd: int) -> list[tuple[bytes, int, int]] | int:
        """The directory's entries as wasmtime lists them, sorted by name (``.`` and ``..`` first); or an
        errno."""
        entries, cookie = [], 0
        while True:
            errno = self.readdir(caller, fd, _LIST_AT, _LIST_ROOM, cookie, _LIST_AT + _LIST_ROOM)
            if errno:
                return errno
            used = struct.unpack("<I", self.memory.read(caller, _LIST_AT + _LIST_ROOM, _LIST_AT + _LIST_ROOM + 4))[0]
            chunk, at = bytes(self.memory.read(caller, _LIST_AT, _LIST_AT + used)), 0
            while at + _DIRENT.size <= used:
                following, inode, name_length, kind = _DIRENT.unpack_from(chunk, at)
                end = at + _DIRENT.size + name_length
                if end > used:
                    break
                entries.append((chunk[at + _DIRENT.size : end], inode, kind))
                cookie, at = following, end
            if used < _LIST_ROOM or at == 0:  # the end (no entry is near the room: names are 255 bytes at most)
                break
        # numbered as listed, in name order: a number read later from a kept listing would be the host's at that
        # time, which ext4 may have given a new file since
        listed = sorted(entries, key=lambda entry: (entry[0] not in (b".", b".."), entry[0]))
        return [(name, self._inode(inode), kind) for name, inode, kind in listed]

    def _put_stat(self, caller: wasmtime.Caller, out: int, fd: int | None = None) -> int:
        _dev, inode, kind, links, size, *_times = self._stat_read(caller)
        size = 4096 if kind == _DIRECTORY else size
        epoch = self.epoch_ns
        if links == 0 and fd is not None:  # removed, still open: its host number may go to the next file made
            number = self.removed_open.setdefault(fd, self.inodes.pop(inode, None) or next(self.numbers))
        else:
            number = self._inode(inode)
        stat = _FILESTAT.pack(1, number, kind, 1, size, epoch, epoch, epoch)
        return _ESUCCESS if _write(caller, out, stat) else _EFAULT

    def _stat_read(self, caller: wasmtime.Caller) -> tuple:
        """The fields of the stat wasmtime last wrote at the start of our memory."""
        return _FILESTAT.unpack(self.memory.read(caller, 0, _FILESTAT.size))

    def _inode(self, host: int) -> int:
        if host not in self.inodes:
            self.inodes[host] = next(self.numbers)
        return self.inodes[host]


def _refused(why: str, *, damaged: bool = False, retryable: bool = False) -> dict:
    """The outcome of a job that cannot run (not the module's failure): the node says why."""
    return {"refused": why, "damaged": damaged, "retryable": retryable or damaged}


def _memory(caller: wasmtime.Caller, ptr: int, length: int) -> wasmtime.Memory | None:
    """The module's memory, if ``length`` bytes at ``ptr`` are inside it (None: EFAULT)."""
    memory = caller.get("memory")
    if isinstance(memory, wasmtime.Memory) and (ptr & 0xFFFFFFFF) + length <= memory.data_len(caller):
        return memory
    return None


def _write(caller: wasmtime.Caller, ptr: int, data: bytes) -> bool:
    memory = _memory(caller, ptr, len(data))
    if memory is not None:
        memory.write(caller, data, ptr & 0xFFFFFFFF)  # wasm passes pointers as signed i32
    return memory is not None


def _read(caller: wasmtime.Caller, ptr: int, length: int) -> bytes | None:
    memory = _memory(caller, ptr, length)
    ptr &= 0xFFFFFFFF
    return None if memory is None else bytes(memory.read(caller, ptr, ptr + length))


def _die_with_parent() -> bool:
    """Be killed when the process that started this one ends (the node, or the fork server)."""
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    return os.getppid() == parent


def _run_one(connection: socket.socket, stdout: int, stderr: int, limits: dict[str, int]) -> int:
    """One run, in this process: held to ``limits`` (RLIMIT_* names) before it reads anything of the job, it
    writes its pid to ``connection``, reads the run's JSON from it to the end, runs, and writes the outcome."""
    if not _die_with_parent():
        return 1
    for name, value in limits.items():
        resource.setrlimit(getattr(resource, name), (value, value))
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    os.close(stdout)
    os.close(stderr)
    with connection, connection.makefile("rwb") as stream:
        stream.write(b"%d\n" % os.getpid())
        stream.flush()
        outcome = _Run(json.loads(stream.read())).run()
        stream.write(json.dumps(outcome, ensure_ascii=False).encode())  # a bounded trap stays within the node's cap
    return 0


def serve(control: socket.socket) -> int:
    """The fork server: for each message on ``control`` (the run's limits, and its connection, stdout and
    stderr as descriptors), a process forked from this one runs it (``_run_one``). A run forked costs about
    5 ms where a new interpreter importing wasmtime cost 65 (``python -m benchmarks.wasm``); nothing of one
    run is in this process, and every run starts from the same state, as a new process would."""
    if not _die_with_parent():
        return 1
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps the runs: the node watches them by pidfd
    while True:
        message, fds, _flags, _address = socket.recv_fds(control, 65536, 3)
        if not message:
            return 0  # the node closed it
        if len(fds) != 3:
            for fd in fds:
                os.close(fd)
            continue
        try:
            forked = os.fork()
        except OSError:  # that run does not start (the node says so and runs it again); the server goes on
            forked = -1
        if forked == 0:
            status = 1
            try:
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                control.close()
                status = _run_one(socket.socket(fileno=fds[0]), fds[1], fds[2], json.loads(message))
            finally:
                os._exit(status)
        for fd in fds:
            os.close(fd)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "compile":
        sys.exit(compile_module(*arguments))
    if command == "serve":
        sys.exit(serve(socket.socket(fileno=int(arguments[0]))))
    connection, stdout, stderr, limits = arguments  # run: one run, then exit
    sys.exit(_run_one(socket.socket(fileno=int(connection)), int(stdout), int(stderr), json.loads(limits)))
