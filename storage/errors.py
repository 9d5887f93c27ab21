"""Storage errors: every failure of Kubo, HTTP downloads or the local store becomes one of these.

    ShoalError (jobs)
    └── StorageError          something about a job input or result; ``reason`` says what happened
        ├── InvalidSource     the source string or CID cannot be used here (our user's mistake)
        ├── NotFound          the content does not exist, or nobody offered it in time
        ├── TooLarge          the content exceeds the byte limit it was fetched or packed under
        ├── Corrupted         bytes arrived but do not match their CID, or the stream was truncated
        │   └── Unsafe        an archive entry or link that would reach outside its destination
        └── Unavailable       the backend failed (Kubo down, connection refused, timeout, HTTP 5xx)

Foreign errors (httpx, Kubo's HTTP 500 JSON, tarfile, OSError) are translated into these inside the
adapter that met them (``storage/kubo.py``, ``storage/http.py``, ``storage/tarsafe.py``) and nowhere
else, with the original chained (``raise ... from exc``). ``retryable`` tells a caller whether trying
again later, or on another node, can help.
"""

from __future__ import annotations

from jobs.errors import ShoalError


class StorageError(ShoalError):
    """Base of storage failures. ``source`` is the input or CID concerned, when known."""

    retryable = False

    def __init__(self, reason: str, *, source: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.source = source

    def __str__(self) -> str:
        if self.source and self.source not in self.reason:
            return f"{self.source}: {self.reason}"
        return self.reason


class InvalidSource(StorageError):
    """The source string, URL or CID is malformed or names a scheme this node does not support."""


class NotFound(StorageError):
    """The content does not exist (HTTP 404, no such path in a directory) or was not found in time."""


class NotFoundInTime(NotFound):
    """Nobody offered the content within the lookup's time: this node's view of the network (cut off from the
    peers that hold it, a slow lookup), which another node may not share, so the job may run elsewhere. Not
    retryable, a node reporting it was "proven wrong" once another node ran the job, and one cut off from a
    sweep's inputs was quarantined by the penalties of one sweep."""

    retryable = True


class TooLarge(StorageError):
    """The content is larger than the limit it is fetched under."""

    def __init__(self, reason: str, *, limit: int, source: str | None = None) -> None:
        super().__init__(reason, source=source)
        self.limit = limit


class Corrupted(StorageError):
    """Downloaded bytes do not hash to the expected CID, or the stream ended early."""


class Unsafe(Corrupted):
    """An archive entry that would be written, or a link that would point, outside the destination."""


class Unavailable(StorageError):
    """The backend could not serve the request now (unreachable, timed out, server error)."""

    retryable = True
