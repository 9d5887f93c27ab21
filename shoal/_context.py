"""Packing the working directory that ``shoal run python main.py`` sends with the job.

Files matched by ``.shoalignore`` or ``.gitignore`` (in the directory itself), version-control
and cache folders, and virtualenvs are left out. Patterns are gitignore's common subset: ``name``
matches at any depth, ``/name`` only at the top, ``dir/`` only directories, ``*``/``?``/``[]``
globbing; ``!`` negation is not supported and such lines are ignored.
"""

from __future__ import annotations

import fnmatch
import io
import os
import tarfile
from pathlib import Path

from jobs.errors import ShoalError

MAX_CONTEXT_BYTES = 10 * 1024 * 1024
ARCHIVE_ROOT = "context"  # every entry lives under one top directory, as in the tars Kubo and nodes serve
ALWAYS_IGNORED = (".git/", ".hg/", ".svn/", "__pycache__/", ".venv/", "venv/", ".mypy_cache/", ".pytest_cache/",
                  ".ruff_cache/", "node_modules/", ".shoal/")


class ContextTooLarge(ShoalError):
    """The packed directory is over ``max_bytes``; the message names its size and biggest files."""


def _patterns(directory: Path) -> list[str]:
    patterns = list(ALWAYS_IGNORED)
    for name in (".shoalignore", ".gitignore"):
        path = directory / name
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith(("#", "!")):
                    patterns.append(line)
    return patterns


def _ignored(rel: str, is_dir: bool, patterns: list[str]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        p = pattern.rstrip("/")
        if dir_only and not is_dir:
            continue
        if p.startswith("/"):
            if fnmatch.fnmatchcase(rel, p[1:]):
                return True
        elif "/" in p:
            if fnmatch.fnmatchcase(rel, p):
                return True
        elif fnmatch.fnmatchcase(name, p):
            return True
    return False


def context_files(directory: Path) -> list[Path]:
    """The files that would be packed, relative to ``directory``, in a stable order."""
    patterns = _patterns(directory)
    out: list[Path] = []
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        dirs[:] = sorted(d for d in dirs if not _ignored((rel_root / d).as_posix(), True, patterns))
        for f in sorted(files):
            rel = (rel_root / f).as_posix()
            if not _ignored(rel, False, patterns) and not Path(root, f).is_symlink():
                out.append(Path(rel))
    return out


def pack_context(directory: str | os.PathLike[str], *, max_bytes: int = MAX_CONTEXT_BYTES) -> bytes:
    """A tar of the directory's files under ``context/`` (uncompressed: the CID is computed on the files).

    Raises ``ContextTooLarge`` naming the size and the biggest files when over ``max_bytes``.
    """
    directory = Path(directory)
    files = context_files(directory)
    sizes = {f: (directory / f).stat().st_size for f in files}
    total = sum(sizes.values())
    if total > max_bytes:
        biggest = ", ".join(f"{f} ({s // 1024} KiB)" for f, s in sorted(sizes.items(), key=lambda kv: -kv[1])[:3])
        raise ContextTooLarge(
            f"the working directory holds {total / 1024 / 1024:.1f} MiB to send, over the "
            f"{max_bytes / 1024 / 1024:.0f} MiB limit; largest: {biggest}. List what the job does not need "
            f"in .shoalignore, or pass big data as inputs (-i ipfs://CID:/path)")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        dirs = sorted({p.as_posix() for f in files for p in f.parents if p != Path(".")})
        for d in ["", *dirs]:  # each directory before what it holds
            info = tarfile.TarInfo(f"{ARCHIVE_ROOT}/{d}".rstrip("/"))
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for f in files:
            info = tar.gettarinfo(str(directory / f), arcname=f"{ARCHIVE_ROOT}/{f.as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # the same files pack to the same bytes (and the same CID)
            with open(directory / f, "rb") as fh:
                tar.addfile(info, fh)
    return buf.getvalue()
