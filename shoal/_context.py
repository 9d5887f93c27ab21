"""Packing the working directory that ``shoal run python main.py`` sends with the job.

Files matched by ``.shoalignore`` or ``.gitignore`` (in the directory itself), version-control
and cache folders, and virtualenvs are left out. Patterns are gitignore's common subset: ``name``
matches at any depth, ``/name`` only at the top, ``dir/`` only directories, ``*``/``?``/``[]``
globbing, ``!pattern`` brings back what an earlier line left out (the last line that matches decides,
and ``.shoalignore`` comes after ``.gitignore``; as in git, nothing inside a left-out folder comes back).
Symlinks are never followed: one may point anywhere on the machine, ``~/.ssh`` too.
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
# left out whatever the ignore files say: the upload goes to other people's nodes, and a context made in a home
# directory would carry its keys
ALWAYS_IGNORED = (".git/", ".hg/", ".svn/", "__pycache__/", ".venv/", "venv/", ".mypy_cache/", ".pytest_cache/",
                  ".ruff_cache/", "node_modules/", ".shoal/", ".ssh/", ".gnupg/", ".aws/", ".kube/", ".docker/")


class ContextTooLarge(ShoalError):
    """The packed directory is over ``max_bytes``; the message names its size and biggest files."""


def _patterns(directory: Path) -> list[tuple[str, str]]:
    """(pattern, the file it is from: "" for the built-in ones), in the order they apply."""
    patterns = [(p, "") for p in ALWAYS_IGNORED]
    for name in (".gitignore", ".shoalignore"):
        path = directory / name
        if path.is_file():
            for line in path.read_text(errors="replace").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    patterns.append((line, name))
    return patterns


def _ignored_by(rel: str, is_dir: bool, patterns: list[tuple[str, str]]) -> str | None:
    """The file whose pattern leaves ``rel`` out ("" for a built-in one), or None when it is packed."""
    name = rel.rsplit("/", 1)[-1]
    by = None
    for pattern, source in patterns:
        negated = pattern.startswith("!")
        dir_only = pattern.endswith("/")
        p = pattern.removeprefix("!").rstrip("/")
        if dir_only and not is_dir:
            continue
        if p.startswith("/"):
            hit = fnmatch.fnmatchcase(rel, p[1:])
        elif "/" in p:
            hit = fnmatch.fnmatchcase(rel, p)
        else:
            hit = fnmatch.fnmatchcase(name, p)
        if hit and not source:
            return source  # built in (.git, .venv, .shoal with the client's key): no "!" line brings it back
        if hit:
            by = None if negated else source
    return by


def context_files(directory: Path, left_out: list[str] | None = None) -> list[Path]:
    """The files that would be packed, relative to ``directory``, in a stable order.

    What the user may have meant to send is added to ``left_out``: symlinks (``"data (a symlink)"``) and
    the top-level entries an ignore file leaves out (``"big/ (.gitignore)"``).
    """
    patterns = _patterns(directory)
    notes = left_out if left_out is not None else []

    def packed(rel: str, is_dir: bool) -> bool:
        by = _ignored_by(rel, is_dir, patterns)
        link = (directory / rel).is_symlink()
        if by is None and link:
            notes.append(f"{rel} (a symlink)")
        elif by and "/" not in rel:
            notes.append(f"{rel}{'/' if is_dir else ''} ({by})")
        return by is None and not link

    out: list[Path] = []
    for root, dirs, files in os.walk(directory):
        rel_root = Path(root).relative_to(directory)
        dirs[:] = [d for d in sorted(dirs) if packed((rel_root / d).as_posix(), True)]
        out += [rel_root / f for f in sorted(files) if packed((rel_root / f).as_posix(), False)]
    return out


def left_out_note(left_out: list[str], shown: int = 4) -> str:
    """One line for the user naming what ``context_files`` left out, the first ``shown`` of it by name."""
    more = f" and {len(left_out) - shown} more" if len(left_out) > shown else ""
    return (f"left out of the upload: {', '.join(left_out[:shown])}{more} (symlinks are not followed; "
            "a line !NAME in .shoalignore brings back what an ignore file leaves out)")


def pack_context(directory: str | os.PathLike[str], *, max_bytes: int = MAX_CONTEXT_BYTES,
                 left_out: list[str] | None = None) -> bytes:
    """A tar of the directory's files under ``context/`` (uncompressed: the CID is computed on the files).

    Raises ``ContextTooLarge`` naming the size and the biggest files when over ``max_bytes``. What is
    left out that the user may have meant to send is added to ``left_out`` (see ``context_files``).
    """
    directory = Path(directory)
    files = context_files(directory, left_out)
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
