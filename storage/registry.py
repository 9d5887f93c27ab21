"""Source → InputSource, and staging a job's inputs before it runs.

The compute service builds one ``InputRegistry`` per node (Kubo and HTTP, or the local store and
HTTP when there is no Kubo) and calls ``prepare_inputs`` before handing the run to an executor.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

import trio

from executors import Mount
from executors._common import ENTRY_BYTES
from jobs import InputSpec
from storage.base import InputSource
from storage.errors import InvalidSource, StorageError, TooLarge, Unavailable, Unsafe
from storage.tarsafe import MAX_ENTRIES, link_escapes
from storage.trees import Unwalkable, entries

__all__ = ["InputRegistry"]


class InputRegistry:
    """Picks the input source for a source string: the first registered one whose ``handles()`` says yes."""

    def __init__(self, sources: Sequence[InputSource]) -> None:
        self._sources = list(sources)

    @property
    def names(self) -> list[str]:
        return [s.name for s in self._sources]

    def for_source(self, source: str) -> InputSource:
        """Raises ``InvalidSource`` naming what this node can fetch."""
        for candidate in self._sources:
            if candidate.handles(source):
                return candidate
        raise InvalidSource(f"no way to fetch {source!r} here (this node fetches: "
                            f"{', '.join(self.names) or 'nothing'})", source=source)

    def check(self, inputs: Sequence[InputSpec]) -> list[str]:
        """Problems that make these inputs impossible here (for bidding), one line each; no I/O."""
        problems = []
        for spec in inputs:
            try:
                self.for_source(spec.source)
            except InvalidSource as exc:
                problems.append(str(exc))
        return problems

    async def prepare_inputs(self, inputs: Sequence[InputSpec], root: Path, *, deadline: float,
                             max_bytes: int, max_entries: int = MAX_ENTRIES) -> list[Mount]:
        """Fetch every input into ``root`` and return read-only mounts at the job's paths.

        Inputs are fetched one after another into ``root/<index>`` (a file or a directory, as the
        source is); together they may take at most ``max_bytes``, file content and every file, folder
        and link below an input at least ``ENTRY_BYTES`` (as the job's disk counts them), and hold at
        most ``max_entries`` files, folders and links: each fetch gets what the inputs before it left.

        Args:
            inputs: the job's input specs, in order.
            root: a directory owned by the execution (created if missing, removed with the execution).
            deadline: seconds for the whole staging phase; separate from the job's run timeout.
            max_bytes: limit on the total size of all inputs.
            max_entries: limit on the files, folders and links of all inputs (an empty file costs an
                inode and no bytes: 64 inputs of the same 200,000 empty files could make 12.8 million).

        Raises:
            StorageError: the first input that failed, its reason prefixed by which input it was
                (``Unavailable`` when the deadline passed, naming the input being fetched then).
        """
        mounts: list[Mount] = []
        budget, left = max_bytes, max_entries
        current: InputSpec | None = None
        Path(root).mkdir(parents=True, exist_ok=True)
        try:
            with trio.fail_after(deadline):
                for index, spec in enumerate(inputs):
                    current = spec
                    dest = Path(root) / str(index)
                    source = self.for_source(spec.source)
                    try:
                        # a shard is cut from the whole: its entries are charged bytes once cut
                        await source.fetch(spec.source, dest, max_bytes=budget,
                                           max_entries=left if spec.shard else min(left, budget // ENTRY_BYTES))
                        size, count = await trio.to_thread.run_sync(_confine, dest)
                        if spec.shard is not None:
                            await trio.to_thread.run_sync(_keep_shard, dest, spec)
                            size, count = await trio.to_thread.run_sync(_staged, dest)  # what the cut left
                        budget, left = budget - size, left - count
                        if budget < 0 or left < 0:
                            raise TooLarge("it takes more than the inputs before it left",
                                           limit=max_bytes if budget < 0 else max_entries)
                    except StorageError as exc:
                        if isinstance(exc, TooLarge):
                            exc.reason += (f" (the job's inputs may take {max_bytes:,} bytes together, each file, "
                                           f"folder and link at least {ENTRY_BYTES}, and hold {max_entries:,} of them)")
                        _name_input(exc, index, spec)
                        raise
                    except OSError as exc:  # the local disk: full, permissions
                        error = StorageError(f"cannot write it to {dest}: {exc}")
                        _name_input(error, index, spec)
                        raise error from exc
                    mounts.append(Mount(dest, spec.path, read_only=True))
        except trio.TooSlowError:
            assert current is not None
            index = inputs.index(current)
            raise Unavailable(f"input {index} ({current.source} → {current.path}) was still being fetched when "
                              f"the {deadline:g} s input deadline passed", source=current.source) from None
        return mounts


def _name_input(exc: StorageError, index: int, spec: InputSpec) -> None:
    """Make the error's message say which input of the job it concerns."""
    exc.reason = f"input {index} ({spec.source} → {spec.path}): {exc.reason}"
    exc.args = (exc.reason,)
    exc.source = spec.source  # contained in the reason, so str() does not repeat it


def _confine(dest: Path) -> tuple[int, int]:
    """Refuse a staged input that is, or holds, a symbolic link leading out of it, or nests too deep; else what
    it takes of the job's budget, as ``_staged`` counts it (from the same walk).

    The node (as root) and the engines follow an input's links on the host: to mount it, to copy it
    into a sandbox, to read a wasm module or to cut a shard. A link to ``/etc`` or to the node's keys,
    in a directory a client uploaded or a job wrote, would hand them to the job. Links within the
    input stay, as the job wrote them (``storage.tarsafe.link_escapes`` resolves them as the kernel does).
    """
    if dest.is_symlink():
        raise Unsafe("the input is a symbolic link")
    links = {}
    try:
        size, count = _staged(dest, links)  # never into a linked directory: it is listed, not entered
    except Unwalkable as e:
        raise type(e)(f"it holds {e}") from None
    if problem := link_escapes(links):
        raise Unsafe(f"it holds a symbolic link out of the input: {problem}")
    return size, count


def _keep_shard(dest: Path, spec: InputSpec) -> None:
    """Remove every file of the fetched directory that is not in the input's shard (a link counts as a
    file: it is removed or kept, never followed)."""
    assert spec.shard is not None
    if not dest.is_dir():
        raise InvalidSource(f"{spec.source} is a single file: only a directory can be sharded", source=spec.source)
    files, dirs = [], []
    for root, subdirs, names in os.walk(dest):
        for name in subdirs:
            path = Path(root, name)
            (files if path.is_symlink() else dirs).append(path)
        files += [Path(root, name) for name in names]
    keep = set(spec.shard.pick([str(p.relative_to(dest)) for p in files]))
    for path in files:
        if str(path.relative_to(dest)) not in keep:
            path.unlink()
    for sub in sorted(dirs, key=lambda p: len(p.parts), reverse=True):
        if not any(sub.iterdir()):
            sub.rmdir()


def _staged(dest: Path, links: dict[tuple[str, ...], str] | None = None) -> tuple[int, int]:
    """What a staged input takes of the job's budget (its files' content, every entry below it at least
    ENTRY_BYTES, a folder that alone: its size is the file system's, 4 KiB on ext4 and less on tmpfs, and
    an input's fate is the same on every node) and the entries below it; the links below it go into ``links``
    (path parts -> target)."""
    top = os.lstat(dest)
    size, count = (0 if stat.S_ISDIR(top.st_mode) else top.st_size), 0
    for path, st in entries(dest):
        size += ENTRY_BYTES if stat.S_ISDIR(st.st_mode) else max(st.st_size, ENTRY_BYTES)
        count += 1
        if links is not None and stat.S_ISLNK(st.st_mode):
            links[Path(path).relative_to(dest).parts] = os.readlink(path)
    return size, count

