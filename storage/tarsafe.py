"""Reading result tar streams safely: the one tar reader the node and the SDK (``shoal get``) share.

Synchronous and push-driven: ``feed`` it bytes as they arrive, ``close`` it at the end. It imports
neither trio nor httpx, so ``storage.tarstream`` runs it in worker threads on the node and the SDK
runs it from a plain loop, trio or asyncio alike. It:

* refuses anything that could write outside ``dest``: absolute names, ``..``, entries below a
  symlink or below anything the archive did not create as a directory, hard links, devices;
  symlinks are recreated as they are and never followed while extracting;
* with ``confine_links``, refuses at ``close`` every symlink that resolves outside ``dest``,
  following links through links the way the kernel does (``b -> .``, ``c -> b/..``), and absolute
  ones: what ``shoal get`` leaves in a user's directory must not point out of it;
* counts file bytes against ``max_bytes`` (``TooLarge``) before writing them, and entries against
  ``max_entries``: empty files cost no bytes, yet each takes an inode, and a job's input of millions
  of them would use up the node's;
* requires the end-of-archive marker, so a stream cut at an entry boundary is ``Corrupted``, not
  a silently shorter result.

The caller removes ``dest`` on failure (``abort``).
"""

from __future__ import annotations

import errno
import os
import tarfile
from pathlib import Path

from storage.errors import Corrupted, StorageError, TooLarge, Unsafe
from storage.trees import remove_tree

__all__ = ["BLOCK", "TarExtractor", "link_escapes", "remove"]

BLOCK = 512
MAX_HEADER_DATA = 1 << 20  # a PAX/GNU long-name header larger than this is not a real one
MAX_LINK_DEPTH = 40  # links followed while resolving one link (the kernel's ELOOP limit)
MAX_ENTRIES = 200_000  # files, folders and links in one archive, by default (a dataset of 70,000 images fits)
_ZERO = b"\0" * BLOCK
_EXTENDED = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK)


class TarExtractor:
    """Extracts a Kubo-``get``-style tar into ``dest`` (which must not exist) as its bytes are fed.

    The top entry becomes ``dest`` itself (a directory, or the file when the tar holds one file).

    Args:
        dest: where the top entry goes; its parent must exist.
        max_bytes: limit on the total size of regular files (``None``: no limit).
        root: if given, the name every entry must start with (the CID, for Kubo and Shoal exports).
        confine_links: refuse symlinks that resolve outside ``dest`` (checked at ``close``).
        max_entries: limit on the files, directories and links created (``None``: no limit).

    Raises (from ``feed`` and ``close``):
        Unsafe: an entry or link that would reach outside ``dest``.
        Corrupted: malformed or truncated stream, unsupported entries.
        TooLarge: more than ``max_bytes`` of file content, or more than ``max_entries`` entries.
    """

    def __init__(self, dest: Path, *, max_bytes: int | None = None, root: str | None = None,
                 confine_links: bool = False, max_entries: int | None = MAX_ENTRIES) -> None:
        self.dest = Path(dest)
        if os.path.lexists(self.dest):
            raise FileExistsError(f"{self.dest} already exists")
        self.max_bytes = max_bytes
        self.confine_links = confine_links
        self.written = 0  # bytes of file content
        self.max_entries = max_entries
        self.entries = 0  # files, directories and links created below dest
        self.consumed = 0  # bytes of the stream
        self.ended = False  # the end-of-archive marker was read; anything after it is ignored
        self._buffer = bytearray()
        self._top: str | None = root
        self._top_kind: bytes | None = None
        self._dirs: set[tuple[str, ...]] = set()  # directories this extraction created (the only ones it writes into)
        self._links: dict[tuple[str, ...], str] = {}
        self._pax: dict[str, str] = {}
        self._long_name: str | None = None
        self._long_link: str | None = None
        self._extended: tuple[bytes, int, int] | None = None  # (type, size, padded size) of a pending extended header
        self._fd: int | None = None
        self._file: str = ""  # member name of the file being written
        self._remaining = 0  # its bytes still to come
        self._padding = 0  # zero bytes after it
        self._skip = 0  # bytes to pass over (padding, data of entries that carry none)

    def feed(self, data: bytes) -> None:
        """Extract what ``data`` completes; the rest waits for the next call."""
        if self.ended:
            return
        self._buffer += data
        while not self.ended:
            if self._fd is not None:
                if not self._buffer:
                    return
                self._write(self._take(min(self._remaining, len(self._buffer))))
            elif self._skip:
                n = min(self._skip, len(self._buffer))
                if not n:
                    return
                self._take(n)
                self._skip -= n
            elif self._extended is not None:
                kind, size, padded = self._extended
                if len(self._buffer) < padded:
                    return
                self._extended = None
                self._read_extended(kind, self._take(padded)[:size])
            elif len(self._buffer) >= BLOCK:
                self._entry(self._take(BLOCK))
            else:
                return
        self._buffer.clear()

    def close(self) -> int:
        """Check the stream ended properly (and the links, if asked); return the file bytes written."""
        self._close_file()
        if not self.ended:
            where = f"in {self._file!r}" if self._remaining else "in a header"
            raise Corrupted(f"tar stream truncated after {self.consumed + len(self._buffer)} bytes ({where})")
        if self._top_kind is None:
            raise Corrupted("tar stream holds no entries")
        if self.confine_links:
            if self._top_kind == tarfile.SYMTYPE:
                raise Unsafe(f"the archive's top entry {self._top!r} is a link")
            problem = link_escapes(self._links)
            if problem:
                raise Unsafe(problem)
        return self.written

    def abort(self) -> None:
        """Close any open file and remove whatever was extracted."""
        self._close_file()
        remove(self.dest)

    # -- the stream ----------------------------------------------------------------------------------

    def _take(self, n: int) -> bytes:
        out = bytes(self._buffer[:n])
        del self._buffer[:n]
        self.consumed += n
        return out

    def _read_extended(self, kind: bytes, data: bytes) -> None:
        if kind == tarfile.XHDTYPE:
            try:
                self._pax = _parse_pax(data)
            except ValueError as exc:
                raise Corrupted(f"malformed PAX header: {exc}") from None
        elif kind == tarfile.GNUTYPE_LONGNAME:
            self._long_name = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        elif kind == tarfile.GNUTYPE_LONGLINK:
            self._long_link = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
        # global headers ('g') are ignored

    def _entry(self, block: bytes) -> None:
        if block == _ZERO:
            self.ended = True  # end-of-archive marker (a second zero block may follow; nothing after it matters)
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as exc:
            raise Corrupted(f"malformed tar header after {self.consumed - BLOCK} bytes: {exc}") from None
        if info.type in _EXTENDED:
            if info.size > MAX_HEADER_DATA:
                raise Corrupted(f"tar extended header of {info.size} bytes")
            self._extended = (info.type, info.size, _padded(info.size))
            return
        try:
            size = int(self._pax["size"]) if "size" in self._pax else info.size
        except ValueError:
            raise Corrupted(f"malformed PAX size {self._pax['size']!r}") from None
        name = self._pax.get("path") or self._long_name or info.name
        link = self._pax.get("linkpath") or self._long_link or info.linkname
        self._pax, self._long_name, self._long_link = {}, None, None
        if size < 0:
            raise Corrupted(f"tar entry {name!r} has a negative size")
        if "\0" in name or "\0" in link:  # no file system takes it (the OS calls raise ValueError)
            raise Corrupted(f"tar entry {name!r} has a NUL byte in its name or link")

        first, rest = _relative_parts(name, self._top)
        if self._top is None:
            self._top = first
        if self._top_kind is not None and self._top_kind != tarfile.DIRTYPE:
            raise Corrupted(f"tar entry {name!r} follows the single {_kind(self._top_kind)} {self._top!r}")
        if self._top_kind is None and rest:
            raise Corrupted(f"tar entry {name!r} comes before its top directory {self._top!r}")
        parent, path = tuple(rest[:-1]), tuple(rest)
        if rest and parent not in self._dirs:
            raise Unsafe(f"tar entry {name!r} is not inside a directory of the archive")
        if self._top_kind is None:
            self._top_kind = info.type if info.type != tarfile.AREGTYPE else tarfile.REGTYPE
        target = self.dest.joinpath(*rest)
        self.entries += bool(rest)  # the top entry is ``dest`` itself
        if self.max_entries is not None and self.entries > self.max_entries:
            raise TooLarge(f"more than {self.max_entries:,} files, folders and links (at {name!r})",
                           limit=self.max_entries)

        if info.type == tarfile.DIRTYPE:
            if path not in self._dirs:
                _create(name, os.mkdir, target)
                self._dirs.add(path)
            self._skip = _padded(size)  # directories carry no data; skip any there is
        elif info.type in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            if self.max_bytes is not None and self.written + size > self.max_bytes:
                raise TooLarge(f"content exceeds the limit of {self.max_bytes} bytes (at {name!r}, {size} bytes)",
                               limit=self.max_bytes)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
            self._fd = _create(name, os.open, target, flags, 0o644)
            self._file, self._remaining, self._padding = name, size, _padded(size) - size
            if not size:
                self._write(b"")
        elif info.type == tarfile.SYMTYPE:
            _create(name, os.symlink, link, target)
            self._links[path] = link
            self._skip = _padded(size)
        elif info.type == tarfile.LNKTYPE:
            raise Unsafe(f"tar entry {name!r} is a hard link (only files, dirs, symlinks)")
        else:
            raise Corrupted(f"tar entry {name!r} has unsupported type {info.type!r} (only files, dirs, symlinks)")

    def _write(self, piece: bytes) -> None:
        assert self._fd is not None
        view = memoryview(piece)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as exc:
            raise StorageError(f"cannot write {self._file!r}: {exc.strerror}") from exc
        self._remaining -= len(piece)
        self.written += len(piece)
        if not self._remaining:
            self._close_file()
            self._skip = self._padding

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def link_escapes(links: dict[tuple[str, ...], str]) -> str | None:
    """Why one of these symlinks resolves outside their root (or loops), or None when none does.

    ``links`` maps a link's path below the root to its target. Targets are resolved as the kernel
    would, component by component from the link's directory; a component that is itself one of the
    links is replaced by where that link leads (so ``b -> .`` then ``c -> b/..`` escapes), and a
    link that takes more than ``MAX_LINK_DEPTH`` links in all to resolve is a loop, as the kernel's
    ELOOP. A component that names nothing is taken as a plain directory, which can only make the
    check stricter. Absolute targets always escape. Each link is resolved once: its place and count
    are kept, so the work grows with the targets' lengths (15 links each naming the one before eight
    times took 8^14 steps when each use resolved it again).
    """
    resolved: dict[tuple[str, ...], tuple[tuple[str, ...], int]] = {}
    for path, target in links.items():
        try:
            _follow(path, links, resolved, 0)
        except _Escape as exc:
            return f"link {'/'.join(path)!r} -> {target!r} {exc}"
    return None


class _Escape(Unsafe):
    """Raised while resolving one link, and caught by ``link_escapes``, which names the link."""


def _follow(path: tuple[str, ...], links: dict[tuple[str, ...], str],
            resolved: dict[tuple[str, ...], tuple[tuple[str, ...], int]], depth: int) -> tuple[tuple[str, ...], int]:
    """Where the link at ``path`` leads, and how many links (itself included) are followed to get there."""
    if (known := resolved.get(path)) is not None:
        return known
    if depth >= MAX_LINK_DEPTH:  # nested this deep, it follows more links than that (a link on its own way: a loop)
        raise _Escape("goes through too many links (a loop)")
    target = links[path]
    if target.startswith("/"):
        raise _Escape("is absolute")
    here, follows = list(path[:-1]), 1
    for part in target.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not here:
                raise _Escape("leads outside the destination")
            here.pop()
            continue
        here.append(part)
        if tuple(here) in links:
            there, count = _follow(tuple(here), links, resolved, depth + 1)
            follows += count
            if follows > MAX_LINK_DEPTH:
                raise _Escape("goes through too many links (a loop)")
            here = list(there)
    resolved[path] = (tuple(here), follows)
    return resolved[path]


def remove(path: Path) -> None:
    """Remove a file, link or directory tree, whichever ``path`` is (nothing if it is not there)."""
    remove_tree(path)


def _create(name: str, make, *args):  # type: ignore[no-untyped-def]
    """``make(*args)``, with a clash or a bad name in the archive reported as such."""
    try:
        return make(*args)
    except FileExistsError:
        raise Corrupted(f"tar entry {name!r} appears twice") from None
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS):
            raise StorageError(f"cannot create {name!r}: {exc.strerror}") from exc
        raise Corrupted(f"cannot create tar entry {name!r}: {exc.strerror}") from None


def _padded(size: int) -> int:
    return -(-size // BLOCK) * BLOCK


def _kind(kind: bytes) -> str:
    return "symlink" if kind == tarfile.SYMTYPE else "file"


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
        raise Unsafe(f"unsafe path in tar stream: {name!r}")
    if root is not None and parts[0] != root:
        raise Corrupted(f"tar entry {name!r} is not under {root!r}")
    return parts[0], parts[1:]
