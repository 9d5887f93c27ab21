"""The local store: results kept in the node's data dir under their CID, for nodes without Kubo.

Bacalhau calls this the local publisher. ``root/<CID>`` holds the published directory (or file) as
plain files; the CID is computed by ``storage.unixfs`` from the stored copy, so it is the CID
``ipfs add -r -H`` gives the same files, and a result published here can later be added to IPFS
unchanged. ``export`` serves it as a Kubo-``get``-style tar that clients verify against the CID.
"""

from __future__ import annotations

import os
import shutil
import stat
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import trio

from storage.base import parse_ipfs_source
from storage.errors import InvalidSource, NotFound, StorageError, TooLarge
from storage.tarsafe import MAX_ENTRIES
from storage.tarstream import tar_path
from storage.trees import count_entries, remove_tree
from storage.unixfs import cid_of_bytes, compute_cid, parse_cid

__all__ = ["LocalInput", "LocalPublisher"]

_TMP = ".tmp-"


class LocalPublisher:
    """Keeps published directories under ``root/<CIDv0>``. ``root`` is created if missing.

    Leftovers of a publish interrupted by a crash (``root/.tmp-*``) are removed on construction.
    """

    name = "local"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        for entry in self.root.iterdir():
            if entry.name.startswith(_TMP):
                _remove(entry)

    def path_of(self, cid: str) -> Path | None:
        """Where ``cid`` (any CID form of dag-pb content) is stored, or ``None``."""
        try:
            key = str(parse_cid(cid).to_v0())
        except InvalidSource:
            return None
        path = self.root / key
        return path if os.path.lexists(path) else None

    async def publish(self, directory: Path) -> str:
        """Copy ``directory`` (or a single file) into the store; return its CID.

        The CID is computed from the stored copy, so later changes to ``directory`` cannot make the
        store disagree with its keys. Publishing the same content twice stores it once.
        """
        tmp = self.root / f"{_TMP}{uuid.uuid4().hex}"
        try:
            await trio.to_thread.run_sync(_copy, Path(directory), tmp)
            cid = await compute_cid(tmp)
            await trio.to_thread.run_sync(_install, tmp, self.root / cid)
        except OSError as exc:
            raise StorageError(f"cannot store {directory} in {self.root}: {exc}") from exc
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, tmp)
        return cid

    async def add_bytes(self, data: bytes) -> str:
        cid = cid_of_bytes(data)
        tmp = self.root / f"{_TMP}{uuid.uuid4().hex}"
        try:
            await trio.to_thread.run_sync(tmp.write_bytes, data)
            await trio.to_thread.run_sync(_install, tmp, self.root / cid)
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, tmp)
        return cid

    async def has(self, cid: str) -> bool:
        return self.path_of(cid) is not None

    async def export(self, cid: str, *, fetch: bool = False) -> AsyncIterator[bytes]:
        """The stored copy as a tar (``fetch`` is ignored: this store reaches no other node)."""
        path = self.path_of(cid)
        if path is None:
            raise NotFound(f"{cid} is not in this node's local store", source=cid)
        return tar_path(path, cid)

    async def remove(self, cid: str) -> None:
        path = self.path_of(cid)
        if path is not None:
            await trio.to_thread.run_sync(_remove, path)

    async def collect_garbage(self) -> None:
        """Nothing to do: ``remove`` deleted the files."""

    async def problem(self) -> str | None:
        """None: the node's own data dir is always there (a full disk fails a publish, not this)."""
        return None


class LocalInput:
    """Fetches ``ipfs://CID[/path]`` (and ``/ipfs/…``, bare CIDs) from a ``LocalPublisher``'s store.

    This is how a node without Kubo reads the CIDs it published itself (or that were put in its
    store); CIDs kept only by other nodes are ``NotFound`` here.
    """

    name = "local"

    def __init__(self, store: LocalPublisher) -> None:
        self.store = store

    def handles(self, source: str) -> bool:
        try:
            parse_ipfs_source(source)
        except InvalidSource:
            return False
        return True

    async def fetch(self, source: str, dest: Path, *, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        cid, subpath = parse_ipfs_source(source)
        base = self.store.path_of(cid)
        if base is None:
            raise NotFound(f"{cid} is not in this node's local store (it has no IPFS daemon to ask others)",
                           source=source)
        src = await trio.to_thread.run_sync(_resolve, base, subpath, source)
        size = await trio.to_thread.run_sync(_tree_size, src)
        if size > max_bytes:
            raise TooLarge(f"{size} bytes is more than the limit of {max_bytes}", limit=max_bytes, source=source)
        if await trio.to_thread.run_sync(_entries_below, src, max_entries) > max_entries:
            raise TooLarge(f"more than {max_entries:,} files, folders and links", limit=max_entries, source=source)
        try:
            await trio.to_thread.run_sync(_copy, src, Path(dest))
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, Path(dest))
            raise


def _resolve(base: Path, subpath: str, source: str) -> Path:
    """``base/subpath`` without following symlinks on the way (UnixFS paths do not traverse symlinks)."""
    current = base
    for part in [p for p in subpath.split("/") if p]:
        if not stat.S_ISDIR(os.lstat(current).st_mode):
            raise NotFound(f"no directory at {current.relative_to(base.parent)}", source=source)
        current = current / part
        if not os.path.lexists(current):
            raise NotFound(f"no link named {part!r} under {current.parent.relative_to(base.parent)}", source=source)
    return current


def _entries_below(path: Path, limit: int) -> int:
    """``count_entries`` of a directory; none below a file or a link (never followed: it may lead anywhere)."""
    return count_entries(path, limit) if stat.S_ISDIR(os.lstat(path).st_mode) else 0


def _tree_size(path: Path) -> int:
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        return sum(_tree_size(path / name) for name in os.listdir(path))
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def _copy(src: Path, dest: Path) -> None:
    """Copy a file, symlink or tree (symlinks copied as symlinks, never followed)."""
    st = os.lstat(src)
    if stat.S_ISDIR(st.st_mode):
        shutil.copytree(src, dest, symlinks=True)
    elif stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dest)
    else:
        shutil.copyfile(src, dest, follow_symlinks=False)


def _install(tmp: Path, final: Path) -> None:
    """Move a finished copy to its CID's place; if the CID is already stored, keep the old copy. So too when
    another publish of the same content stored it a moment ago: two sweep indexes whose outputs were alike
    raced here, and the loser's rename onto the winner's directory failed its index (ENOTEMPTY)."""
    if os.path.lexists(final):
        return
    try:
        os.rename(tmp, final)
    except OSError:
        if not os.path.lexists(final):
            raise


def _remove(path: Path) -> None:
    remove_tree(path)
