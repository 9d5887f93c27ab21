"""Tar streams of stored results: writing them, extracting them safely, checking them against a CID.

Results travel as tar streams laid out like Kubo's ``ipfs get``: one entry named by the CID (a
directory with the files below it, or a single file) and an end-of-archive marker. Both producers
(Kubo's ``get``, ``LocalPublisher.export``) and the consumer (``shoal get`` through the node's API)
use this module's reader, which:

* is async and streams (nothing is buffered whole; file data goes to disk in ~1 MiB writes);
* reads with ``storage.tarsafe.TarExtractor``, the tar reader the SDK's ``shoal get`` uses too:
  nothing is written outside ``dest``, file bytes count against ``max_bytes``, and a stream
  without its end-of-archive marker is ``Corrupted``;
* with ``extract_verified``, recomputes the CID of what it wrote (``storage.unixfs``) and compares.
"""

from __future__ import annotations

import os
import stat
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import trio

from storage.errors import Corrupted, StorageError
from storage.tarsafe import BLOCK, MAX_ENTRIES, TarExtractor, remove
from storage.unixfs import compute_cid, parse_cid

__all__ = ["extract_tar", "extract_verified", "tar_path", "verify_path"]

WRITE_BATCH = 1 << 20  # bytes gathered before they are extracted in a worker thread
READ_SIZE = 1 << 20  # bytes read from a stored file per step when writing a tar
_END = b"\0" * (2 * BLOCK)


# -- writing ---------------------------------------------------------------------------------------


def _header(name: str, kind: bytes, *, size: int = 0, mode: int = 0o644, mtime: int = 0, link: str = "") -> bytes:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.mode, info.mtime, info.linkname = kind, size, mode, mtime, link
    return info.tobuf(tarfile.PAX_FORMAT, encoding="utf-8", errors="surrogateescape")


def _entries(path: Path, name: str) -> list[tuple[Path, str, os.stat_result]]:
    """Depth-first listing (parents before children, names sorted), without following symlinks."""
    out = []
    st = os.lstat(path)
    out.append((path, name, st))
    if stat.S_ISDIR(st.st_mode):
        for child in sorted(os.listdir(path), key=os.fsencode):
            out.extend(_entries(path / child, f"{name}/{child}"))
    return out


async def tar_path(path: Path, name: str) -> AsyncIterator[bytes]:
    """Yield a tar of ``path`` (file, directory or symlink) whose top entry is called ``name``.

    Raises ``Corrupted`` if a file changes size while it is read (the store should be immutable),
    ``StorageError`` if the stored copy cannot be read (removed by retention meanwhile, I/O errors).
    """
    try:
        entries = await trio.to_thread.run_sync(_entries, Path(path), name)
        for entry, entry_name, st in entries:
            mtime = int(st.st_mtime)
            if stat.S_ISDIR(st.st_mode):
                yield _header(entry_name, tarfile.DIRTYPE, mode=0o755, mtime=mtime)
            elif stat.S_ISLNK(st.st_mode):
                target = await trio.to_thread.run_sync(os.readlink, entry)
                yield _header(entry_name, tarfile.SYMTYPE, mode=0o777, mtime=mtime, link=target)
            elif stat.S_ISREG(st.st_mode):
                yield _header(entry_name, tarfile.REGTYPE, size=st.st_size, mode=0o644, mtime=mtime)
                sent = 0
                async with await trio.open_file(entry, "rb") as f:
                    while sent < st.st_size:
                        chunk = await f.read(min(READ_SIZE, st.st_size - sent))
                        if not chunk:
                            break
                        sent += len(chunk)
                        yield chunk
                if sent != st.st_size:
                    raise Corrupted(f"{entry} changed size while being exported ({sent} of {st.st_size} bytes)")
                if sent % BLOCK:
                    yield b"\0" * (BLOCK - sent % BLOCK)
            else:
                raise Corrupted(f"{entry} is neither a file, a directory nor a symlink")
    except OSError as exc:
        raise StorageError(f"cannot read the stored copy of {name}: {exc}") from exc
    yield _END


# -- reading ---------------------------------------------------------------------------------------


async def extract_tar(chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int | None = None,
                      root: str | None = None, confine_links: bool = False,
                      max_entries: int | None = MAX_ENTRIES) -> int:
    """Extract a Kubo-``get``-style tar into ``dest`` (which must not exist); return the file bytes written.

    The top entry becomes ``dest`` itself (a directory, or the file when the tar holds one file).
    The reading is ``storage.tarsafe.TarExtractor``'s (in worker threads, ~1 MiB at a time).

    Args:
        chunks: the tar stream.
        dest: where the top entry goes; its parent must exist.
        max_bytes: limit on the total size of regular files (``None``: no limit).
        root: if given, the name every entry must start with (the CID, for Kubo and Shoal exports).
        confine_links: refuse symlinks that lead outside ``dest`` (``TarExtractor``'s).
        max_entries: limit on the files, directories and links created (``None``: no limit).

    Raises:
        Corrupted: malformed or truncated stream, unsafe (``Unsafe``) or unsupported entries.
        TooLarge: more than ``max_bytes`` of file content, or more than ``max_entries`` entries.
        StorageError: whatever ``chunks`` raises (e.g. ``Unavailable`` when the download breaks).

    Resource handling: ``chunks`` is consumed and closed (``aclose()``, if it has one, even when
    extraction stops early); on any error (and on cancellation) ``dest`` is removed.
    """
    dest = Path(dest)
    try:
        extractor = TarExtractor(dest, max_bytes=max_bytes, root=root, confine_links=confine_links,
                                 max_entries=max_entries)
        try:
            batch = bytearray()
            async for chunk in chunks:
                batch += chunk
                if len(batch) >= WRITE_BATCH:
                    await trio.to_thread.run_sync(extractor.feed, bytes(batch))
                    batch.clear()
                    if extractor.ended:
                        break  # nothing after the end-of-archive marker matters
            await trio.to_thread.run_sync(extractor.feed, bytes(batch))
            return await trio.to_thread.run_sync(extractor.close)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(extractor.abort)
            raise
    finally:
        await _close(chunks)


async def _close(chunks: object) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()


# -- verifying -------------------------------------------------------------------------------------


async def verify_path(path: Path, cid: str) -> None:
    """Raise ``Corrupted`` unless ``path`` (file or directory) hashes to ``cid`` as ``ipfs add`` would.

    ``cid`` may be given as CIDv0 or as the CIDv1 of the same dag-pb DAG; other CIDs (raw leaves,
    other hashes) cannot be recomputed with Kubo's defaults and raise ``InvalidSource``.
    """
    expected = str(parse_cid(cid).to_v0())
    actual = await compute_cid(path)
    if actual != expected:
        raise Corrupted(f"content does not match its CID: expected {cid}, the files hash to {actual}", source=cid)


async def extract_verified(chunks: AsyncIterable[bytes], dest: Path, cid: str, *, max_bytes: int | None = None) -> int:
    """Extract a result's tar stream into ``dest`` and check it against ``cid``; return the file bytes.

    This is what ``shoal get`` runs on a download from any node's API: the node need not be trusted,
    because a tampered, reordered, truncated or substituted stream cannot hash to ``cid``.

    Raises:
        Corrupted: the stream is malformed or truncated, or its files do not hash to ``cid``.
        TooLarge: beyond ``max_bytes``.
        InvalidSource: ``cid`` is not a dag-pb/sha2-256 CID (nothing Shoal publishes).

    On any error ``dest`` is removed, so a bad download never looks like a result.
    """
    parse_cid(cid).to_v0()  # InvalidSource now, before downloading, if it cannot be checked
    written = await extract_tar(chunks, dest, max_bytes=max_bytes, root=cid)
    try:
        await verify_path(dest, cid)
    except (StorageError, OSError):
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(remove, dest)
        raise
    return written
