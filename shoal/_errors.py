"""The exceptions the ``shoal`` SDK raises.

    ShoalError (jobs.errors)
    └── ShoalAPIError            anything that went wrong talking to a Shoal node
        ├── AuthenticationError  401: the node rejected the request signature
        ├── Forbidden            403: the node does not let this key do this (not among its authorized
        │                        keys, or without the capability the route needs)
        ├── NotFound             404: no such job (or route)
        ├── Conflict             409: e.g. an Idempotency-Key reused with another spec
        ├── NoResults            409: the job (or sweep index) exists but has no results (yet): running,
        │                        cancelled, or failed before it ran
        ├── InvalidRequest       400/413/422 (or a spec that fails local validation); ``fields``
        ├── ServerError          5xx
        ├── WaitTimeout          ``wait``/``run`` (or their sweep versions) ran out of time; ``description``
        │                        is the last one seen
        └── ConnectionFailed     the node could not be reached, or the connection broke
    CannotShip (ShoalError)      ``Client.map``: the function, or a value it uses, cannot be sent (before
                                 anything is submitted)
    MapError (ShoalError)        ``Client.map``: one index gave no value; ``index``, ``sweep_id``
    ├── RemoteError              the function raised; ``type_name``, ``remote_message``, ``remote_traceback``
    └── IndexFailed              the index ended without an answer (timeout, killed, node failures); ``reason``

``retryable`` (from ``ShoalError``) is True only for ``ConnectionFailed``. Which response maps to
which exception is decided in ``shoal._error_mapping``.

Every message is one line, fit for ``print(f"error: {e}")``. ``status`` is the HTTP status
(``None`` when no response was received) and ``code`` a stable machine-readable string:
the server's ``error.code`` when it sent one, otherwise derived from the status.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from jobs.errors import ShoalError

if TYPE_CHECKING:
    from jobs.views import JobDescription, SweepDescription


class ShoalAPIError(ShoalError):
    """Base of every error the SDK raises; catch this to handle them all."""

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code or "error"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status!r}, code={self.code!r})"

    def __reduce__(self) -> tuple[object, ...]:
        # Subclasses take other constructor arguments; rebuild from the instance dict instead so
        # the errors survive pickling (multiprocessing, worker threads that re-raise).
        return _rebuild, (type(self), self.message, self.__dict__)


class AuthenticationError(ShoalAPIError):
    """401: signature headers missing or wrong, stale timestamp, replayed nonce."""


class Forbidden(ShoalAPIError):
    """403: the signature is good, but the node does not let this key do this: the key is not in its
    authorized keys ("client KEY is not authorized on this node"), or lacks the route's capability."""


class NotFound(ShoalAPIError):
    """404."""


class Conflict(ShoalAPIError):
    """409: typically an ``Idempotency-Key`` that was already used with a different body."""


class NoResults(ShoalAPIError):
    """A download of a job (or sweep index) that exists but has no results: it has not finished, was cancelled,
    or failed before it ran (409 ``no_results``). Not a ``NotFound``: the id is right."""


class InvalidRequest(ShoalAPIError):
    """400/413/422, or a job spec that fails validation before it is sent.

    ``fields`` names the offending fields as dotted paths (``spec.resources.cpu``) when known.
    """

    def __init__(
        self,
        message: str,
        status: int | None = None,
        code: str | None = None,
        fields: list[str] | None = None,
    ) -> None:
        super().__init__(message, status, code or "invalid_request")
        self.fields: list[str] = list(fields or [])


class ServerError(ShoalAPIError):
    """5xx: the node failed; the request may or may not have taken effect."""


class WaitTimeout(ShoalAPIError):
    """The job (or sweep) was not terminal when the wait ran out; ``description`` is the last one seen."""

    def __init__(self, message: str, description: JobDescription | SweepDescription) -> None:
        super().__init__(message, None, "wait_timeout")
        self.description = description


class ConnectionFailed(ShoalAPIError):
    """No usable response: connection refused, DNS failure, timeout, connection dropped."""

    retryable = True  # the node was away; the same call may work later

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message, None, "connection_failed")
        self.url = url


def _rebuild(cls: type[ShoalAPIError], message: str, state: dict[str, object]) -> ShoalAPIError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


class CannotShip(ShoalError):
    """``Client.map`` cannot send the function or a value it refers to; nothing was submitted."""


class MapError(ShoalError):
    """An index of a ``Client.map`` sweep gave no value."""

    def __init__(self, message: str, index: int, sweep_id: str) -> None:
        super().__init__(message)
        self.index = index
        self.sweep_id = sweep_id


class RemoteError(MapError):
    """The mapped function raised on the remote interpreter.

    ``type_name`` is the remote exception's class (``ValueError``, ``mymod.PricingError``),
    ``remote_message`` its text and ``remote_traceback`` the remote traceback as text, which is
    also chained as this exception's cause so that it prints with it. For a built-in exception
    type the error is an instance of that type too: ``except ZeroDivisionError`` catches it.
    """

    def __init__(self, message: str, index: int, sweep_id: str, type_name: str, remote_message: str,
                 remote_traceback: str) -> None:
        super().__init__(message, index, sweep_id)
        self.type_name = type_name
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback


class IndexFailed(MapError):
    """The index ended without an answer from the function: ``reason`` (and ``stderr``, its tail) say why."""

    def __init__(self, message: str, index: int, sweep_id: str, reason: str, stderr: str = "") -> None:
        super().__init__(message, index, sweep_id)
        self.reason = reason
        self.stderr = stderr
