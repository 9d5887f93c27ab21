"""Downloading results: checked against the CID the job's record names, then moved into place.

What is written must hash to the CID in the job's record (the result the compute node signed, as
``describe`` returns it), never to a CID the download itself names. The record comes from the node
that serves the download, so this catches bytes corrupted on the way (or by the IPFS peers that node
fetched them from), not a lying node: the node asked is trusted for the record. The tar is read
by ``storage.tarsafe`` (the node's own reader, with links confined to the destination) into a
temporary directory beside the
destination; only once the CID matches is it moved into place, so a refused download leaves
nothing behind (and what a killed one left, the next download into the same destination removes).
Synchronous, but for ``extract_results_async``, which runs the same steps in worker threads
(anyio: trio or asyncio alike).
"""

from __future__ import annotations

try:
    import fcntl
except ImportError:  # Windows: no flock, so no partial folder is known to be left over (none is removed)
    fcntl = None  # type: ignore[assignment]
import contextlib
import filecmp
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import AsyncIterable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from jobs.model import MAX_CAPTURE, RunResult
from jobs.spec import format_bytes
from shoal._errors import NoResults, ShoalAPIError

STREAM_ALLOWANCE = 4 << 20  # bytes for a truncated stdout/stderr: an executor keeps 1 MiB, ≤ 3 bytes a byte as text
LIMIT_MARGIN = 64 << 20  # on top of twice the recorded sizes: tar framing, directories, links
# Of outputs, what a download takes by default (more with max_bytes): the sizes are the compute node's word,
# and zero-filled files cost a lying node next to nothing to publish (10**15 bytes once passed unchecked).
OUTPUTS_BY_DEFAULT = 1 << 30
# What an honest results directory holds at its top (compute.runner); anything else is refused, as it would
# replace the file of that name in the directory it is downloaded into (.bashrc, .ssh, .shoalignore).
RESULT_ENTRIES = frozenset({"stdout", "stderr", "exitCode", "outputs"})
FEED_BATCH = 1 << 20  # downloaded bytes handed to the extracting thread at a time


class GivenLimit(int):
    """A ``max_bytes`` the user gave: a download over it is refused in their words, not with how the default is
    reckoned (the clients hand ``ResultsWriter`` only the number)."""


@dataclass(frozen=True)
class Plan:
    """How to get one result: from the node, checked against ``cid``, or (no CID) from the record."""

    cid: str | None
    max_bytes: int = 0
    files: dict[str, str] = field(default_factory=dict)


def plan_download(result: RunResult | None, whose: str, state: str, max_bytes: int | None) -> Plan:
    """Decide from the job's record alone; raise when there is nothing that can be checked.

    A result without a CID is one the compute node published nothing for (an empty run): its files
    are the record's stdout, stderr and exit code, written from the record itself. If the record
    cannot hold them whole (truncated streams, declared outputs), there is nothing to check a
    download against, and it is refused.
    """
    if result is None:
        raise NoResults(f"{whose} has no results (state {state})", 409, "no_results")
    if result.cid is None:
        if result.stdout_truncated or result.stderr_truncated or result.output_sizes:
            raise ShoalAPIError(f"the result of {whose} names no CID, so a download could not be checked; "
                                "nothing was written", None, "no_cid")
        return Plan(None, files=result.files())
    return Plan(result.cid, GivenLimit(max_bytes) if max_bytes is not None else default_limit(result))


def truncation_notes(result: RunResult | None, dest: Path) -> list[str]:
    """A line for each of the downloaded stdout and stderr that holds only the last MiB of what the job wrote.
    The record's flag alone does not tell: it is set too when the record keeps a shorter tail than the file."""
    notes = []
    for stream in ("stdout", "stderr"):
        path = dest / stream
        # a cut UTF-8 sequence may have lost up to 3 bytes of the last MiB
        if getattr(result, f"{stream}_truncated", False) and path.is_file() and path.stat().st_size >= MAX_CAPTURE - 3:
            notes.append(f"{stream} was longer than 1 MiB: {path} holds its last 1 MiB; "
                         "write large output to a file under -o")
    return notes


def warn_if_truncated(result: RunResult | None, dest: Path) -> None:
    """``truncation_notes`` as warnings, at the caller of the client's ``download``."""
    for note in truncation_notes(result, dest):
        warnings.warn(note, stacklevel=3)


def default_limit(result: RunResult) -> int:
    """Bytes a download of ``result`` may take: twice its recorded sizes (of outputs, at most
    ``OUTPUTS_BY_DEFAULT``), plus ``LIMIT_MARGIN``."""
    recorded = min(sum(max(0, n) for n in result.output_sizes.values()), OUTPUTS_BY_DEFAULT)
    for text, truncated in ((result.stdout, result.stdout_truncated), (result.stderr, result.stderr_truncated)):
        recorded += STREAM_ALLOWANCE if truncated else len(text.encode("utf-8", "surrogatepass"))
    return 2 * recorded + LIMIT_MARGIN


class ResultsWriter:
    """Receives a results tar (``feed``), checks it (``finish``), then puts it at ``dest``.

    Use as a context manager: leaving it removes the temporary directory, whatever happened.
    """

    def __init__(self, dest: Path, cid: str, max_bytes: int, whose: str) -> None:
        from storage.tarsafe import TarExtractor

        self.dest, self.cid, self.max_bytes, self.whose = Path(dest), cid, max_bytes, whose
        self._tmp, self._lock = _new_partial(self.dest)
        self._extractor = TarExtractor(self._tmp / "result", max_bytes=max_bytes, root=cid, confine_links=True)
        self.received = 0

    def __enter__(self) -> ResultsWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._extractor.abort()
        os.close(self._lock)  # first: Windows removes no file held open
        shutil.rmtree(self._tmp, ignore_errors=True)

    def feed(self, data: bytes) -> None:
        from storage.errors import StorageError, TooLarge

        self.received += len(data)
        try:
            if self.received > self.max_bytes:
                raise TooLarge(f"more than {self.max_bytes} bytes", limit=self.max_bytes)
            self._extractor.feed(data)
        except StorageError as e:
            raise self._refused(e) from None

    def finish(self) -> Path:
        """Check the extracted files against the CID; only then move them to ``dest``."""
        from storage.errors import StorageError
        from storage.unixfs import cid_of_path, parse_cid

        try:
            self._extractor.close()
            expected = str(parse_cid(self.cid).to_v0())
        except StorageError as e:
            raise self._refused(e) from None
        unexpected = sorted(set(os.listdir(self._tmp / "result")) - RESULT_ENTRIES
                            if (self._tmp / "result").is_dir() else [])
        if unexpected:
            raise ShoalAPIError(f"refusing the results of {self.whose}: they hold {unexpected[0]!r}, which no result "
                                "holds (only stdout, stderr, exitCode and outputs); nothing was written", 200,
                                "unsafe_archive")
        got = cid_of_path(self._tmp / "result")
        if got != expected:
            raise ShoalAPIError(f"the results of {self.whose} do not match their CID {self.cid} (got {got}): the "
                                "download was corrupted or tampered with; nothing was written", 200, "corrupted")
        return _move_into_place(self._tmp / "result", self.dest)

    def _refused(self, e: Exception) -> ShoalAPIError:
        from storage.errors import TooLarge, Unsafe

        if isinstance(e, TooLarge) and isinstance(self.max_bytes, GivenLimit):
            return ShoalAPIError(f"the results of {self.whose} are larger than the {format_bytes(self.max_bytes)} "
                                 "given as their limit (max_bytes, --max-bytes); nothing was written", 200, "too_large")
        if isinstance(e, TooLarge):
            return ShoalAPIError(f"the results of {self.whose} are larger than the limit of {self.max_bytes} bytes "
                                 "(twice the recorded sizes, of outputs at most 1 GiB, plus 64 MiB; --max-bytes to "
                                 "allow more); nothing was written", 200, "too_large")
        if isinstance(e, Unsafe):
            return ShoalAPIError(f"refusing to extract the results of {self.whose}: {e}; nothing was written",
                                 200, "unsafe_archive")
        return ShoalAPIError(f"the results of {self.whose} are not a valid archive of CID {self.cid}: {e}; "
                             "nothing was written", 200, "corrupted")


def write_from_record(files: dict[str, str], dest: Path) -> Path:
    """A CID-less result's files, from the job's record (the same temporary-then-move as a download)."""
    tmp, lock = _new_partial(dest)
    try:
        (tmp / "result").mkdir()
        for name, text in files.items():
            (tmp / "result" / name).write_text(text, encoding="utf-8", errors="surrogateescape")
        return _move_into_place(tmp / "result", dest)
    finally:
        os.close(lock)
        shutil.rmtree(tmp, ignore_errors=True)


def extract_results(chunks: Iterable[bytes], dest: Path, whose: str, cid: str, max_bytes: int | None = None) -> Path:
    """Extract a results tar given as chunks into ``dest``, checked against ``cid`` (all or nothing)."""
    with ResultsWriter(dest, cid, max_bytes if max_bytes is not None else LIMIT_MARGIN, whose) as writer:
        for chunk in chunks:
            writer.feed(chunk)
        return writer.finish()


async def extract_results_async(chunks: AsyncIterable[bytes], dest: Path, whose: str, cid: str,
                                max_bytes: int) -> Path:
    """``extract_results`` for the async client: extraction and hashing run in worker threads, fed
    ``FEED_BATCH`` bytes at a time, so the event loop never waits on the disk."""
    import anyio
    import anyio.to_thread

    writer = await anyio.to_thread.run_sync(ResultsWriter, dest, cid, max_bytes, whose)
    try:
        batch = bytearray()
        async for chunk in chunks:
            batch += chunk
            if len(batch) >= FEED_BATCH:
                await anyio.to_thread.run_sync(writer.feed, bytes(batch))
                batch.clear()
        await anyio.to_thread.run_sync(writer.feed, bytes(batch))
        return await anyio.to_thread.run_sync(writer.finish)
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(writer.__exit__, None, None, None)


_PARTIAL = re.compile(r"\..+\.partial-[a-z0-9_]{8}")  # mkdtemp's suffix: "v2" or "2024" is a user's folder
_swept: set[str] = set()  # the folders this process has looked over for partial directories left behind


def make_folder(dest: Path) -> Path:
    """``dest`` as a folder, made with its parents if need be; one that cannot be is a ``ShoalAPIError`` naming
    it (a sweep's downloads go below it)."""
    with _writing_to(dest):
        dest.mkdir(parents=True, exist_ok=True)
    return dest


def _new_partial(dest: Path) -> tuple[Path, int]:
    """A new temporary directory beside ``dest`` (its parents made), and the descriptor of the lock in it,
    held until closed; a destination that cannot be written is a ``ShoalAPIError`` naming it."""
    with _writing_to(dest):
        dest.parent.mkdir(parents=True, exist_ok=True)
        return _locked_partial(dest)


@contextlib.contextmanager
def _writing_to(dest: Path) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        why = f"{e.filename} is not a folder" if isinstance(e, FileExistsError | NotADirectoryError) else e.strerror
        raise ShoalAPIError(f"cannot write the results to {dest}: {why or e}; nothing was written", None,
                            "dest_unwritable") from None


def _locked_partial(dest: Path) -> tuple[Path, int]:
    """``_new_partial``'s directory and lock.

    The first download into a folder in this process removes the partial directories of earlier downloads
    there whose lock nobody holds: their process is gone (killed mid-download, nothing else would remove them).
    One running now holds its lock, so it is left alone. Once per folder: a sweep's indexes are downloaded
    side by side, and listing the folder for each made 8,000 of them take 24.5 s instead of 1.9 s.
    """
    prefix = f".{dest.name}.partial-"
    if fcntl is None:  # a descriptor all the same, for the caller to close: a file's (Windows opens no folder)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix))
        return tmp, os.open(tmp / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    if (folder := os.path.realpath(dest.parent)) not in _swept:
        _swept.add(folder)
        for old in dest.parent.iterdir():
            if _PARTIAL.fullmatch(old.name) and not old.is_symlink():
                _remove_if_unlocked(old)
    while True:
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=prefix))
        try:
            lock = os.open(tmp / "lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except FileNotFoundError:
            continue  # another download's sweep removed it between mkdtemp and flock
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.path.samestat(os.fstat(lock), os.stat(tmp / "lock")):
                return tmp, lock
        except (BlockingIOError, FileNotFoundError):
            pass  # likewise: that sweep holds its lock, or has removed it
        os.close(lock)


_PARTIAL_ENTRIES = {"lock", "result"}  # all a partial directory holds: a folder holding more is not one of ours


def _remove_if_unlocked(partial: Path) -> None:
    try:  # the folder itself, never a link put in its place: its lock is opened in the folder found
        folder = os.open(partial, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return  # removed meanwhile, not a directory, or not ours
    try:
        if not set(os.listdir(folder)) <= _PARTIAL_ENTRIES:
            return  # a folder of the user's that happens to be named alike: never touched
        lock = os.open("lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=folder)
    except OSError:
        return
    finally:
        os.close(folder)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        shutil.rmtree(partial, ignore_errors=True)  # with the lock held, so no download can claim it meanwhile
    except OSError:
        pass  # locked: a download running now
    finally:
        os.close(lock)


def _move_into_place(result: Path, dest: Path) -> Path:
    """``result`` becomes ``dest``; into an existing directory, its entries go beside what is there. An entry
    of the same name is left as it is when it holds the same (the same results downloaded again); when it
    differs, nothing is written: what a user keeps there is never replaced."""
    try:
        if not os.path.lexists(dest):
            os.rename(result, dest)
            return dest
        if dest.is_symlink() or not dest.is_dir() or result.is_symlink() or not result.is_dir():
            raise ShoalAPIError(f"{dest} exists and is not a directory; nothing was written", None, "dest_exists")
        entries = sorted(result.iterdir())
        for entry in entries:
            target = dest / entry.name
            if os.path.lexists(target) and not _same_tree(entry, target):
                raise ShoalAPIError(f"{target} exists and differs from the results; nothing was written (choose "
                                    "another destination, or move it away)", None, "dest_exists")
        for entry in entries:
            if not os.path.lexists(dest / entry.name):
                os.rename(entry, dest / entry.name)
    except OSError as e:
        raise ShoalAPIError(f"cannot write the results to {dest}: {e.strerror or e}", None,
                            "dest_unwritable") from None
    return dest


def _same_tree(a: Path, b: Path) -> bool:
    """Whether ``b`` holds what ``a`` does: the same files with the same bytes, folders and links (none followed)."""
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    if a.is_dir() or b.is_dir():
        return a.is_dir() and b.is_dir() and sorted(os.listdir(a)) == sorted(os.listdir(b)) \
            and all(_same_tree(a / name, b / name) for name in os.listdir(a))
    return a.is_file() and b.is_file() and filecmp.cmp(a, b, shallow=False)
