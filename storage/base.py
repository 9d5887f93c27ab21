"""The small interfaces of storage: where job inputs come from and where results go.

An ``InputSource`` copies one job input (a CID, a URL) into a local path before the job runs;
a ``Publisher`` keeps a finished execution's output directory and hands it back by CID. Executors
never fetch anything themselves: they receive ready paths (``executors.Mount``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from storage.errors import Corrupted, InvalidSource, NotFound, StorageError, TooLarge, Unavailable
from storage.tarsafe import MAX_ENTRIES
from storage.unixfs import parse_cid

__all__ = [
    "Corrupted",
    "InputSource",
    "InvalidSource",
    "NotFound",
    "Publisher",
    "StorageError",
    "TooLarge",
    "Unavailable",
    "parse_ipfs_source",
]


def parse_ipfs_source(source: str) -> tuple[str, str]:
    """``ipfs://CID/a/b``, ``/ipfs/CID/a/b`` or ``CID/a/b`` → (canonical CID text, ``"a/b"``).

    Raises:
        InvalidSource: not an IPFS source, a bad CID, or a path with ``.``/``..`` components.
    """
    rest = source
    for prefix in ("ipfs://", "/ipfs/"):
        if rest.startswith(prefix):
            rest = rest[len(prefix):]
            break
    cid_text, _, path = rest.partition("/")
    cid = parse_cid(cid_text)  # raises InvalidSource
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") for p in parts):
        raise InvalidSource(f"path {path!r} inside {cid_text} may not contain '.' or '..'", source=source)
    return str(cid), "/".join(parts)


@runtime_checkable
class InputSource(Protocol):
    """Fetches job inputs of some kinds of source (``ipfs://…``, bare CIDs, ``https://…``)."""

    name: str

    def handles(self, source: str) -> bool:
        """Whether ``source`` is of a kind this input source fetches (syntax only, no I/O)."""
        ...

    async def fetch(self, source: str, dest: Path, *, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        """Copy ``source`` to ``dest`` (which must not exist): it becomes the file or the directory.

        Raises:
            InvalidSource: malformed source.
            NotFound: the content does not exist or was not found in time; the reason says which.
            TooLarge: more than ``max_bytes`` of file content, or more than ``max_entries`` files, folders
                and links below ``dest``.
            Corrupted: the bytes did not match what the source promised.
            Unavailable: the backend failed; trying again later may work.

        On any error ``dest`` is left absent (partial data is removed). Cancellation is honoured.
        """
        ...


@runtime_checkable
class Publisher(Protocol):
    """Keeps result directories and returns them by CID (Kubo, or the node's own data dir)."""

    name: str

    async def publish(self, directory: Path) -> str:
        """Store ``directory`` (recursively, hidden files included) and keep it; return its CIDv0.

        The CID equals ``ipfs add -r -H --cid-version=0`` of the same directory, whatever the backend.
        """
        ...

    async def add_bytes(self, data: bytes) -> str:
        """Store one file's content and keep it; return its CIDv0 (as ``ipfs add`` would)."""
        ...

    async def has(self, cid: str) -> bool:
        """Whether this publisher keeps ``cid`` (pinned in Kubo, present in the local store)."""
        ...

    async def export(self, cid: str, *, fetch: bool = False) -> AsyncIterator[bytes]:
        """Check that ``cid`` is available, then return its content as a tar stream.

        Awaiting raises ``NotFound`` before any byte is produced, so an API can still answer 404.
        With ``fetch=False`` only content this publisher keeps is exported; with ``fetch=True`` a
        publisher that can reach other nodes (Kubo) may get it from them, so any node's API can
        serve any result (the local store ignores ``fetch``: it reaches nobody).
        The tar has the layout of Kubo's ``get``: a directory entry named by the CID with the files
        below it (or one file entry named by the CID). ``storage.tarstream.extract_verified`` turns it
        back into files and checks them against the CID.
        """
        ...

    async def remove(self, cid: str) -> None:
        """Stop keeping ``cid`` (unpin / delete), for retention. Removing an absent CID is not an error."""
        ...

    async def problem(self) -> str | None:
        """Why results cannot be published now (Kubo does not answer), or None: a cheap check, answered
        within a few seconds, that a compute node makes before each advertisement of its engines."""
        ...

    async def collect_garbage(self) -> None:
        """Give back the disk space of what is no longer kept (Kubo: ``repo gc``, which also drops
        blocks fetched from other nodes). A no-op where ``remove`` deletes at once (the local store).

        Can take long on a large repo, and Kubo holds adds back meanwhile: call it now and then.
        """
        ...
