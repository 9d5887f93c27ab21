"""Directory trees that a job wrote, or a peer sent: walked without recursion, to a bounded depth.

A job can nest directories thousands deep (``mkdir a && cd a`` in a loop). Python's ``os.walk`` and
``shutil.rmtree`` recurse once per level, and one such tree in a job's outputs once took a node down:
the scratch space could not be removed, and the error escaped the execution. Everything that walks
a job's tree walks it with ``entries``; everything that removes one removes it with ``remove_tree``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator

from storage.errors import StorageError

__all__ = ["MAX_DEPTH", "MAX_PATH_BYTES", "TooDeep", "Unreadable", "Unstorable", "Unwalkable", "check_depth",
           "count_entries", "entries", "remove_tree"]

MAX_DEPTH = 100  # directories within directories below a job's input or output (more is refused)
# bytes of a path below a tree's root (more is refused): the node's own folders come before it, and the
# system takes 4,095 in all; a job nesting 19 folders of 200 characters failed on a node whose folders' path
# was long and not on another, a result that differed between nodes
MAX_PATH_BYTES = 3000
PATH_TOO_LONG = "a path longer than the system takes (directories nested too deep)"


class Unwalkable(StorageError):
    """A tree that cannot be walked to its end: all it holds is not known, so no limit is known to hold."""


class TooDeep(Unwalkable):
    """A tree nests directories deeper than ``MAX_DEPTH``, or holds a path longer than ``MAX_PATH_BYTES`` bytes (or
    than the system takes: a node whose own folders' path is very long)."""


class Unreadable(Unwalkable):
    """A tree holds a folder the node may not list, even once it has given itself the right back."""


def entries(path: str | os.PathLike[str], max_depth: int = MAX_DEPTH) -> Iterator[tuple[str, os.stat_result]]:
    """Every entry below ``path`` (not ``path`` itself), with its ``lstat``, parents before children; links
    are listed, never followed. Entries removed meanwhile are skipped.

    A folder a job shut the node out of (``chmod 300``, or ``600``: on a node not run as root, the job's
    processes are the node's own user) is opened again (``open_up``) and walked; else its files would escape
    the disk watch and the node could not remove them. Raises ``Unreadable`` when it still cannot be, and
    ``TooDeep`` on meeting a directory more than ``max_depth`` levels down, a path more than
    ``MAX_PATH_BYTES`` below ``path``, or one the system cannot take (ENAMETOOLONG).
    """
    longest = len(os.fsencode(path)) + 1 + MAX_PATH_BYTES
    stack: list[tuple[str, int, os.stat_result | None]] = [(os.fspath(path), 0, None)]
    while stack:
        directory, depth, seen = stack.pop()
        try:
            found = _listed(directory, seen)
        except OSError as e:  # removed meanwhile: skipped, as os.walk does
            if e.errno == errno.ENAMETOOLONG:
                raise TooDeep(PATH_TOO_LONG) from e
            if isinstance(e, PermissionError):
                raise Unreadable(f"a folder the node may not read ({os.path.relpath(directory, path)})") from None
            continue
        for entry in found:
            if len(os.fsencode(entry.path)) > longest:
                raise TooDeep(f"a path longer than {MAX_PATH_BYTES:,} bytes")
            if (st := _lstat(entry, directory, seen)) is None:
                continue
            yield entry.path, st
            if stat.S_ISDIR(st.st_mode):
                if depth + 1 > max_depth:
                    raise TooDeep(f"directories nested more than {max_depth} deep")
                stack.append((entry.path, depth + 1, st))


def _listed(directory: str, seen: os.stat_result | None) -> list[os.DirEntry[str]]:
    """The entries of ``directory``; once more after ``open_up`` when the node was shut out of it."""
    try:
        with os.scandir(directory) as listing:
            return list(listing)
    except PermissionError:
        if not open_up(directory, seen):
            raise
    with os.scandir(directory) as listing:
        return list(listing)


def _lstat(entry: os.DirEntry[str], directory: str, seen: os.stat_result | None) -> os.stat_result | None:
    """``entry``'s lstat, or None when it was removed meanwhile; its folder is opened up (``open_up``) first when
    the node may list it but not look into it (mode 600). Stats are taken one at a time, as a walk counting up
    to a limit goes: a disk watch over a folder a job fills with files stops at the limit."""
    for attempt in (0, 1):
        try:
            return entry.stat(follow_symlinks=False)
        except PermissionError:
            if attempt or not open_up(directory, seen):
                raise Unreadable(f"a folder the node may not look into ({os.path.basename(directory)})") from None
        except OSError as e:
            if e.errno == errno.ENAMETOOLONG:
                raise TooDeep(PATH_TOO_LONG) from e
            return None
    return None


def open_up(directory: str | os.PathLike[str], seen: os.stat_result | None = None) -> bool:
    """Give the node's user back read, write and search on ``directory`` (it owns what a job made as its user;
    root may anyway), the folder itself and never one a link leads to, nor another put in the place of
    ``seen`` (the folder as the walk met it). False when that could not be done."""
    try:
        fd = os.open(directory, os.O_PATH | os.O_NOFOLLOW | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        st = os.fstat(fd)
        if seen is not None and (st.st_dev, st.st_ino) != (seen.st_dev, seen.st_ino):
            return False
        os.chmod(f"/proc/self/fd/{fd}", stat.S_IMODE(st.st_mode) | stat.S_IRWXU)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


class Unstorable(StorageError):
    """A tree holds an entry that is neither a file, a directory nor a symlink (a FIFO, a socket, a device)."""


_KINDS = {stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a device", stat.S_IFBLK: "a device"}


def check_depth(path: str | os.PathLike[str], max_depth: int = MAX_DEPTH) -> None:
    """Raise ``TooDeep`` if ``path`` is too deep to walk (see ``entries``)."""
    for _ in entries(path, max_depth):
        pass


def count_entries(path: str | os.PathLike[str], limit: int) -> int:
    """The entries below ``path``, counted up to ``limit`` + 1 (more is not counted); raises ``TooDeep``
    as ``entries`` does, and ``Unstorable`` naming the first entry no storage takes, by its path below ``path``
    (the one a job knows; the node's own folders are not a peer's business)."""
    counted = 0
    for found, st in entries(path):
        if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode)):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "a special file")
            raise Unstorable(f"{os.path.relpath(found, path)}, {kind}: only files, folders and symlinks are stored")
        counted += 1
        if counted > limit:
            break
    return counted


def remove_tree(path: str | os.PathLike[str]) -> None:
    """Remove a file, link or directory tree, however deep (nothing if it is not there)."""
    path = os.fspath(path)
    if not os.path.isdir(path) or os.path.islink(path):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return
    for attempt in range(2):
        try:
            shutil.rmtree(path, ignore_errors=True)
        except RecursionError:  # deeper than Python recurses: rm walks it with file descriptors
            subprocess.run(["rm", "-rf", "--", path], check=False, stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        if attempt or not os.path.lexists(path):
            return
        # a job shut the node out of folders in it (``entries``): chmod gives each folder back before it looks
        # in, however deep, and follows no link
        subprocess.run(["chmod", "-R", "u+rwx", "--", path], check=False, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
