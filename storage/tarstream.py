"""Tar streams of stored results: writing them, extracting them safely, checking them against a CID.

Results travel as tar streams laid out like Kubo's ``ipfs get``: one entry named by the CID (a
directory with the files below it, or a single file) and an end-of-archive marker. Both producers
(Kubo's ``get``, ``LocalPublisher.export``) and the consumer (``shoal get`` through the node's API)
use this module's reader, which:

* is async and streams (nothing is buffered whole; file data goes to disk in ~1 MiB writes);
* refuses anything that could write outside ``dest``: absolute names, ``..``, entries below a
  symlink, hard links, devices; symlinks are recreated as they are and never followed;
* counts file bytes against ``max_bytes`` (``TooLarge``) before writing them;
* requires the end-of-archive marker, so a stream cut at an entry boundary is ``Corrupted``, not
  a silently shorter result;
* with ``extract_verified``, recomputes the CID of what it wrote (``storage.unixfs``) and compares.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterable, AsyncIterator
from pathlib import Path

import trio

from storage.errors import Corrupted, StorageError, TooLarge
from storage.unixfs import compute_cid, parse_cid

__all__ = ["extract_tar", "extract_verified", "tar_path", "verify_path"]

BLOCK = 512
WRITE_BATCH = 1 << 20  # bytes gathered before one write() in a worker thread
READ_SIZE = 1 << 20  # bytes read from a stored file per step when writing a tar
MAX_HEADER_DATA = 1 << 20  # a PAX/GNU long-name header larger than this is not a real one
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


class _Reader:
    """Exact reads over an async iterable of byte chunks of any size."""

    def __init__(self, chunks: AsyncIterable[bytes]) -> None:
        self._chunks = aiter(chunks)
        self._buffer = bytearray()
        self._eof = False
        self.consumed = 0

    async def _fill(self) -> bool:
        if self._eof:
            return False
        try:
            chunk = await anext(self._chunks)
        except StopAsyncIteration:
            self._eof = True
            return False
        self._buffer += chunk
        return True

    async def read_some(self, limit: int) -> bytes:
        """Up to ``limit`` bytes (at least one); ``b""`` only at the end of the stream."""
        while not self._buffer and await self._fill():
            pass
        out = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        self.consumed += len(out)
        return out

    async def read_exact(self, n: int, what: str) -> bytes:
        while len(self._buffer) < n:
            if not await self._fill():
                raise Corrupted(f"tar stream truncated after {self.consumed + len(self._buffer)} bytes (in {what})")
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.consumed += n
        return out

    async def at_end(self) -> bool:
        while not self._buffer:
            if not await self._fill():
                return True
        return False


def _parse_pax(data: bytes) -> dict[str, str]:
    """PAX extended header records: ``"%d %s=%s\\n"``."""
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0 or pos + length > len(data):
            raise ValueError("bad PAX record length")
        key, _, value = data[space + 1: pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _relative_parts(name: str, root: str | None) -> tuple[str, list[str]]:
    """Split a member name into (top entry, path below it), refusing anything that could escape."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or not parts or ".." in parts:
        raise Corrupted(f"unsafe path in tar stream: {name!r}")
    if root is not None and parts[0] != root:
        raise Corrupted(f"tar entry {name!r} is not under {root!r}")
    return parts[0], parts[1:]


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


async def extract_tar(chunks: AsyncIterable[bytes], dest: Path, *, max_bytes: int | None = None,
                      root: str | None = None) -> int:
    """Extract a Kubo-``get``-style tar into ``dest`` (which must not exist); return the file bytes written.

    The top entry becomes ``dest`` itself (a directory, or the file when the tar holds one file).

    Args:
        chunks: the tar stream.
        dest: where the top entry goes; its parent must exist.
        max_bytes: limit on the total size of regular files (``None``: no limit).
        root: if given, the name every entry must start with (the CID, for Kubo and Shoal exports).

    Raises:
        Corrupted: malformed or truncated stream, unsafe or unsupported entries.
        TooLarge: more than ``max_bytes`` of file content.
        StorageError: whatever ``chunks`` raises (e.g. ``Unavailable`` when the download breaks).

    Resource handling: ``chunks`` is consumed and closed (``aclose()``, if it has one, even when
    extraction stops early); on any error (and on cancellation) ``dest`` is removed.
    """
    dest = Path(dest)
    try:
        if os.path.lexists(dest):
            raise FileExistsError(f"{dest} already exists")
        try:
            return await _extract(_Reader(chunks), dest, max_bytes, root)
        except BaseException:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(_remove, dest)
            raise
    finally:
        await _close(chunks)


async def _close(chunks: object) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        with trio.CancelScope(shield=True):
            await aclose()


def _remove(path: Path) -> None:
    if os.path.islink(path) or os.path.isfile(path):
        os.unlink(path)
    elif os.path.isdir(path):
        shutil.rmtree(path, ignore_errors=True)


async def _extract(reader: _Reader, dest: Path, max_bytes: int | None, root: str | None) -> int:
    dirs: set[tuple[str, ...]] = set()  # directories this extraction created (the only ones it writes into)
    top: str | None = root
    top_kind: bytes | None = None
    written = 0
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    while True:
        block = await reader.read_exact(BLOCK, "a header")
        if block == b"\0" * BLOCK:
            break  # end-of-archive marker (a second zero block may follow; nothing after it matters)
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise Corrupted(f"malformed tar header after {reader.consumed - BLOCK} bytes: {exc}") from None
        padded = -(-info.size // BLOCK) * BLOCK
        if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            if info.size > MAX_HEADER_DATA:
                raise Corrupted(f"tar extended header of {info.size} bytes")
            data = (await reader.read_exact(padded, "an extended header"))[: info.size]
            if info.type == tarfile.XHDTYPE:
                try:
                    pax = _parse_pax(data)
                except ValueError as exc:
                    raise Corrupted(f"malformed PAX header: {exc}") from None
            elif info.type == tarfile.GNUTYPE_LONGNAME:
                long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            elif info.type == tarfile.GNUTYPE_LONGLINK:
                long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue  # global headers ('g') are ignored
        name = pax.get("path") or long_name or info.name
        link = pax.get("linkpath") or long_link or info.linkname
        size = int(pax["size"]) if "size" in pax else info.size
        padded = -(-size // BLOCK) * BLOCK
        pax, long_name, long_link = {}, None, None

        first, rest = _relative_parts(name, top)
        if top is None:
            top = first
        if top_kind is not None and top_kind != tarfile.DIRTYPE:
            raise Corrupted(f"tar entry {name!r} follows the single file {top!r}")
        if top_kind is None and rest:
            raise Corrupted(f"tar entry {name!r} comes before its top directory {top!r}")
        parent, target = tuple(rest[:-1]), dest.joinpath(*rest)
        if rest and parent not in dirs:
            raise Corrupted(f"tar entry {name!r} is not inside a directory of the archive")
        if top_kind is None:
            top_kind = info.type if info.type != tarfile.AREGTYPE else tarfile.REGTYPE

        if info.type == tarfile.DIRTYPE:
            if tuple(rest) not in dirs:
                await trio.to_thread.run_sync(os.mkdir, target)
                dirs.add(tuple(rest))
            await reader.read_exact(padded, name)  # directories carry no data; skip any padding
        elif info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            if max_bytes is not None and written + size > max_bytes:
                raise TooLarge(f"content exceeds the limit of {max_bytes} bytes (at {name!r}, {size} bytes)",
                               limit=max_bytes)
            await _write_member(reader, target, size, name)
            written += size
            await reader.read_exact(padded - size, name)
        elif info.type == tarfile.SYMTYPE:
            await trio.to_thread.run_sync(os.symlink, link, target)
            await reader.read_exact(padded, name)
        else:
            raise Corrupted(f"tar entry {name!r} has unsupported type {info.type!r} (only files, dirs, symlinks)")
    if top_kind is None:
        raise Corrupted("tar stream holds no entries")
    return written


async def _write_member(reader: _Reader, target: Path, size: int, name: str) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = await trio.to_thread.run_sync(os.open, target, flags, 0o644)
    try:
        remaining = size
        batch: list[bytes] = []
        batched = 0
        while remaining:
            piece = await reader.read_some(min(remaining, WRITE_BATCH))
            if not piece:
                raise Corrupted(f"tar stream truncated in {name!r} ({size - remaining} of {size} bytes)")
            remaining -= len(piece)
            batch.append(piece)
            batched += len(piece)
            if batched >= WRITE_BATCH or not remaining:
                await trio.to_thread.run_sync(_write_all, fd, b"".join(batch))
                batch, batched = [], 0
    finally:
        os.close(fd)


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
            await trio.to_thread.run_sync(_remove, dest)
        raise
    return written
