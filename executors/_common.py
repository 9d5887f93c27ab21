"""What the engines share: the job's file system view, the seed, capture, and holding outputs to ``disk``.

Private to ``executors``: the executors import it; others use what ``executors/__init__.py`` exports.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import shutil
import stat
import sys
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import trio

from executors.base import DISK_POLL, ExecutorError, Mount, RunRequest, Stream
from jobs.model import MAX_CAPTURE
from storage.trees import MAX_DEPTH, MAX_PATH_BYTES, Unwalkable, entries

# The virtual wall clock of deterministic jobs starts here (2024-01-01T00:00:00Z) on every node, every day,
# and advances only when the job reads a clock.
EPOCH_SECONDS = 1_704_067_200
# How far a virtual clock moves per read: enough for "wait until t + x" loops to end, small enough to look real.
CLOCK_STEP_NS = 1_000_000

CONTEXT_DIR = "/context"  # where the CLI's packed working directory is mounted; relative job paths start here
TOO_DEEP = sys.maxsize  # what tree_size says of a tree it cannot walk (storage.trees.Unwalkable): more than any limit
TOO_MANY = sys.maxsize - 1  # what written_in says of folders holding more than their entries: as much
ENTRY_BYTES = 512  # the least a file, directory or link counts against a job's disk (an inode, a directory entry)
BLOCK_BYTES = 4096  # the block most file systems give a file's content or a directory: a job's disk counts in them


def job_seed(request: RunRequest) -> bytes:
    """32 bytes that seed every clock and random source of the run; the same on every node for the same job."""
    if request.seed:
        return hashlib.sha256(b"shoal-seed:" + request.seed).digest()
    return hashlib.sha256(b"shoal-job:" + request.job_id.encode()).digest()


def job_path(path: str) -> str:
    """An absolute, normalised path inside the job; relative paths are inside the context."""
    if not path.startswith("/"):
        path = posixpath.join(CONTEXT_DIR, path)
    return posixpath.normpath(path)


def _inside(path: str, root: str) -> bool:
    return root == "/" or path == root or path.startswith(root.rstrip("/") + "/")


def host_path(path: str, mounts: Iterable[tuple[str, Path]]) -> Path | None:
    """The host file behind job path ``path``, through the (target, host) mount with the longest target."""
    path = job_path(path)
    best: tuple[str, Path] | None = None
    for target, host in mounts:
        target = posixpath.normpath(target)
        if _inside(path, target) and (best is None or len(target) > len(best[0])):
            best = (target, host)
    if best is None:
        return None
    rest = path[len(best[0]) :].lstrip("/")
    if not rest:
        return best[1]
    if not best[1].is_dir():
        return None
    return best[1] / rest


@dataclass(frozen=True)
class DirMount:
    """A host directory the job sees at ``target``."""

    host: Path
    target: str
    writable: bool


def plan_mounts(request: RunRequest, scratch: Path) -> list[DirMount]:
    """Inputs (read-only) and outputs (writable) as directory mounts, shallowest first.

    Engines can only mount directories, so file inputs are linked (or copied, across file systems)
    into a directory under ``scratch`` that is mounted at the file's parent path. Output directories
    are created. Blocking: call from a worker thread.
    """
    dirs: list[DirMount] = []
    files: dict[str, list[Mount]] = {}
    for m in request.inputs:
        target = posixpath.normpath(m.target)
        if not target.startswith("/") or target == "/":
            raise ExecutorError(f"input mount target {m.target!r} must be an absolute path below /", retryable=False)
        if m.source.is_dir():
            dirs.append(DirMount(m.source, target, writable=not m.read_only))
        elif m.source.is_file():
            files.setdefault(posixpath.dirname(target), []).append(m)
        else:
            raise ExecutorError(f"input {m.target} is missing on this node ({m.source})")
    for i, (parent, group) in enumerate(sorted(files.items())):
        holder = scratch / "file-inputs" / str(i)
        holder.mkdir(parents=True, exist_ok=True)
        for m in group:
            dest = holder / posixpath.basename(posixpath.normpath(m.target))
            try:
                os.link(m.source, dest)
            except OSError:
                shutil.copyfile(m.source, dest)
        dirs.append(DirMount(holder, parent, writable=False))
    for m in request.output_mounts():
        m.source.mkdir(parents=True, exist_ok=True)
        dirs.append(DirMount(m.source, posixpath.normpath(m.target), writable=True))
    seen: dict[str, DirMount] = {}
    for d in dirs:
        if d.target in seen:
            raise ExecutorError(f"two inputs or outputs share the job path {d.target}", retryable=False)
        seen[d.target] = d
    return sorted(dirs, key=lambda d: (d.target.count("/"), d.target))


class Written(NamedTuple):
    """What a run's folders hold, measured two ways. ``content`` is the network's measure, the same on every
    node (``content_bytes``). ``spent`` is what they take of this node's file system: a directory is 4 KiB on
    ext4 and less on tmpfs, a one-byte file 4 KiB on ext4 and less on btrfs. A job's outcome hangs on
    ``content`` alone, or a client could tune a job to fail on one file system and pass on another, and get the
    nodes of one outvoted; the node guards its own disk by ``spent`` too."""

    content: int
    spent: int

    def past(self, limit: int) -> bool:
        return _past(self.content, limit) or _past(self.spent, limit)


def content_bytes(st: os.stat_result) -> int:
    """What one entry counts against a job's disk, the same on every node: a file's size in whole blocks (a
    sparse file at its full length, as publishing copies every byte), a directory one block, an empty file or
    a link at least ENTRY_BYTES. On ext4 a file or folder takes no more (a folder of very many entries aside)."""
    if stat.S_ISDIR(st.st_mode):
        return BLOCK_BYTES
    if stat.S_ISREG(st.st_mode) and st.st_size:
        return -(-st.st_size // BLOCK_BYTES) * BLOCK_BYTES
    return max(st.st_size, ENTRY_BYTES)


def tree_size(path: Path) -> int:
    """Bytes the entries under ``path`` take by the network's measure (``Written.content``). A tree nested
    deeper than ``storage.trees.MAX_DEPTH`` is TOO_DEEP: more than any limit. Blocking."""
    return _size([path], None).content


def written_in(dirs: Iterable[Path], max_entries: int) -> Written:
    """What all of ``dirs`` hold, or TOO_MANY once they hold more than ``max_entries`` together: counting
    stops there, so no walk is long, and a job flooding its folders with files is stopped before it uses up
    the inodes of the node's file system. Blocking."""
    return _size(dirs, max_entries)


def _size(dirs: Iterable[Path], max_entries: int | None) -> Written:
    content = spent = counted = 0
    try:
        for path in dirs:
            for _, st in entries(path):
                counted += 1
                if max_entries is not None and counted > max_entries:
                    return Written(TOO_MANY, TOO_MANY)
                content += content_bytes(st)
                spent += max(st.st_size, st.st_blocks * 512, ENTRY_BYTES)
    except Unwalkable:
        return Written(TOO_DEEP, TOO_DEEP)
    return Written(content, spent)


def own_again(path: Path) -> None:
    """Hand back to the node's own user what a job wrote as another uid (its own, on a root node). Blocking."""
    uid, gid = os.getuid(), os.getgid()
    if os.path.islink(path):  # a link the job put in its place: what it leads to is not the job's
        return
    with contextlib.suppress(OSError, Unwalkable):  # a tree too deep fails the run (tree_size), and root removes it
        os.lchown(path, uid, gid)
        for entry, _ in entries(path):
            with contextlib.suppress(OSError):
                os.lchown(entry, uid, gid)


def disk_limit_message(written: int, limit: int, max_entries: int) -> str:
    """What a run past its disk limit says: never how far past, which depends on when the disk watch looked,
    and so differs from node to node."""
    if written >= TOO_DEEP:
        return (f"disk limit exceeded: the outputs nest directories more than {MAX_DEPTH} deep, hold a path "
                f"longer than {MAX_PATH_BYTES:,} bytes, or a folder the node may not read")
    if written >= TOO_MANY:
        return f"disk limit exceeded: the outputs hold more than {max_entries:,} files and folders"
    return f"disk limit exceeded: wrote more than {limit} bytes (resources.disk, less the staged inputs)"


def disk_overrun(written: Written, limit: int, max_entries: int, *, reached: bool = False) -> str:
    """The line a run over its disk limit ends with (``reached``: a write stopped at the limit itself, by the
    file size limit, counts as past it). Raises a retryable ExecutorError when only this node's file system
    took more than the limit (``Written``): by the network's measure the job is within it, and another node
    may hold it."""
    if _past(written.content, limit) or (reached and 0 < limit <= written.content):
        return disk_limit_message(written.content, limit, max_entries)
    raise ExecutorError(f"disk limit exceeded on this node: its file system took {written.spent} bytes for what "
                        f"the job wrote, {written.content} of {limit} as the network counts it", retryable=True)


def _past(written: int, limit: int) -> bool:
    return written >= TOO_MANY or 0 < limit < written


async def written_past(dirs: list[Path], limit: int, max_entries: int) -> Written | None:
    """What ``dirs`` hold (``written_in``) when it is past ``limit`` bytes or ``max_entries`` on this node (a
    last check after the run), else None."""
    written = await trio.to_thread.run_sync(written_in, dirs, max_entries) if dirs else Written(0, 0)
    return written if written.past(limit) else None


MAX_HOLDERS = 4096  # processes of one run whose open files are looked at


def held_open(pids: Iterable[int], dirs: Iterable[Path]) -> Written:
    """What the processes ``pids`` and their descendants hold on the file system of ``dirs`` in files they
    deleted while open or mapped (``Written``: the network's measure and the blocks): space a run takes that no
    walk of its folders finds (a job that wrote 20 GiB so was held to 10 MiB; one that wrote 3 GiB through a
    mapping, every descriptor closed). In this process (wasm runs in it) a file counts only if it was under
    ``dirs``, and its children are not looked at. Blocking; what cannot be read (a process that ended, another
    user's) counts nothing."""
    dirs = list(dirs)
    devices = {st.st_dev for st in _stats(dirs)}
    roots = tuple(f"{d}/" for d in dirs)
    content, spent, seen, todo, looked = 0, 0, set(), list(pids), 0
    while todo and looked < MAX_HOLDERS:
        pid, looked = todo.pop(), looked + 1
        own = pid == os.getpid()
        with contextlib.suppress(OSError):
            for task in [] if own else os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError, ValueError):
                    todo += map(int, Path(f"/proc/{pid}/task/{task}/children").read_text().split())
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        mapped = _deleted_mappings(pid)
        for link in [f"/proc/{pid}/fd/{fd}" for fd in fds] + list(mapped):
            try:
                st = os.stat(link)
                if own and not (st.st_nlink == 0 and os.readlink(link).startswith(roots)):
                    continue
            except PermissionError:  # map_files wants CAP_CHECKPOINT_RESTORE: as far into the file as it is mapped
                device, inode, reach, path = mapped.get(link, (-1, 0, 0, ""))
                if device in devices and (not own or path.startswith(roots)) and (device, inode) not in seen:
                    seen.add((device, inode))
                    content, spent = content + reach, spent + reach
                continue
            except OSError:
                continue
            if st.st_nlink == 0 and st.st_dev in devices and stat.S_ISREG(st.st_mode) \
                    and (st.st_dev, st.st_ino) not in seen:
                seen.add((st.st_dev, st.st_ino))
                content, spent = content + content_bytes(st), spent + st.st_blocks * 512
    return Written(content, spent)


def _deleted_mappings(pid: int) -> dict[str, tuple[int, int, int, str]]:
    """The deleted files ``pid`` maps (``/proc/PID/maps``), each once: its ``/proc/PID/map_files`` link, to its
    (device, inode, how far into it it is mapped, former path)."""
    found: dict[tuple[int, int], tuple[str, int, str]] = {}  # (device, inode) -> (link, reach, path)
    with contextlib.suppress(OSError, ValueError), open(f"/proc/{pid}/maps") as maps:
        for line in maps:
            fields = line.rstrip("\n").split(maxsplit=5)
            if len(fields) < 6 or not fields[5].endswith(" (deleted)"):
                continue
            start, end = (int(a, 16) for a in fields[0].split("-"))
            major, minor = (int(n, 16) for n in fields[3].split(":"))
            key = (os.makedev(major, minor), int(fields[4]))
            link, reach, path = found.get(key, (f"/proc/{pid}/map_files/{start:x}-{end:x}", 0, fields[5]))
            found[key] = (link, max(reach, int(fields[2], 16) + end - start), path)
    return {link: (device, inode, reach, path) for (device, inode), (link, reach, path) in found.items()}


def _stats(paths: Iterable[Path]) -> list[os.stat_result]:
    found = []
    for path in paths:
        with contextlib.suppress(OSError):
            found.append(os.stat(path))
    return found


async def watch_disk(dirs: list[Path], limit: int, max_entries: int, stop: Callable[[], Awaitable[object]],
                     over: list[Written], holders: Callable[[], Iterable[int]] = tuple) -> None:
    """Until cancelled: once the files under ``dirs``, and the deleted ones the processes ``holders()`` hold open
    there (``held_open``), take more than ``limit`` bytes (0: no limit), or are more than
    ``max_entries``, record what they take in ``over`` and ``await stop()`` (which ends the run).
    A run can write much in one poll interval, so callers check ``written_past`` once more when it ends."""
    while dirs:
        written = await trio.to_thread.run_sync(written_in, dirs, max_entries)
        if not written.past(limit) and (pids := list(holders())):
            held = await trio.to_thread.run_sync(held_open, pids, dirs)
            written = Written(written.content + held.content, written.spent + held.spent)
        if written.past(limit):
            over.append(written)
            await stop()
            return
        await trio.sleep(DISK_POLL)


class Tail:
    """Keeps the last ``limit`` bytes written to it, and whether anything was dropped."""

    def __init__(self, limit: int = MAX_CAPTURE, tap: Callable[[bytes], None] | None = None) -> None:
        self.limit = limit
        self.tap = tap  # also sees every write (the run's live output)
        self._buf = bytearray()
        self.total = 0

    @classmethod
    def of(cls, request: RunRequest, stream: Stream) -> Tail:
        """The tail of one of ``request``'s streams, whose writes are also its live output."""
        live = request.live
        return cls(tap=None if live is None else lambda data: live.write(stream, data))

    def write(self, data: bytes) -> None:
        if self.tap is not None:
            self.tap(data)
        self.total += len(data)
        self._buf += data
        if len(self._buf) > 2 * self.limit:
            del self._buf[: len(self._buf) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        return bytes(self._buf[-self.limit :]).decode("utf-8", errors="replace")
