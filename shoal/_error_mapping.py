"""What went wrong talking to a node → the SDK's exceptions (``shoal._errors``); every mapping is here.

An error response in any shape the node (or a proxy in front of it) sends, a transport failure
from httpx, and a body that is not what the route promises each become one ``ShoalAPIError``
with a one-line message. No I/O: the clients hand over what they met.
"""

from __future__ import annotations

import errno
import json
import re
import socket
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ValidationError

from shoal._errors import (
    AuthenticationError,
    Conflict,
    ConnectionFailed,
    Forbidden,
    InvalidRequest,
    NoResults,
    NotFound,
    ServerError,
    ShoalAPIError,
)

_M = TypeVar("_M", bound=BaseModel)

_STATUS_ERRORS: dict[int, type[ShoalAPIError]] = {
    400: InvalidRequest,
    401: AuthenticationError,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: InvalidRequest,
    422: InvalidRequest,
}
_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    413: "too_large",
    422: "invalid_request",
}
_LOCATIONS = frozenset({"body", "query", "path", "header", "cookie"})


def check(response: httpx.Response) -> httpx.Response:
    """``response`` itself, or its error raised (see ``api_error``)."""
    if response.is_error:
        raise api_error(response)
    return response


def parse(model: type[_M], response: httpx.Response) -> _M:
    """The response body as ``model``; a body that is not one is a ``bad_response`` error."""
    try:
        return model.model_validate_json(response.content)
    except ValidationError as e:
        raise ShoalAPIError(
            f"unexpected response from {response.request.url.path}: {validation_summary(e)}",
            response.status_code,
            "bad_response",
        ) from None


def api_error(response: httpx.Response) -> ShoalAPIError:
    """An error response in any of the shapes the node sends → the matching exception.

    ``{"error": {"code", "message", "fields"}}`` (the API's own errors); ``{"detail": "..."}``
    (the signature verifier, HTTPException); ``{"detail": [{"loc", "msg"}, ...]}`` (FastAPI's
    422); anything else (a proxy's HTML page) → its first line or the status phrase.
    """
    status = response.status_code
    code: str | None = None
    message = ""
    fields: list[str] = []
    try:
        content = response.content
    except httpx.ResponseNotRead:
        content = b""
    try:
        body = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        error = body["error"]
        code = str(error.get("code") or "") or None
        message = str(error.get("message") or "")
        fields = [str(f) for f in error.get("fields") or [] if f is not None]
    elif isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if isinstance(detail, list):
            items = []
            for item in detail:
                if isinstance(item, dict):
                    loc = list(item.get("loc") or [])
                    if loc and loc[0] in _LOCATIONS:
                        loc = loc[1:]
                    items.append((loc, str(item.get("msg") or "invalid")))
                    fields.append(".".join(map(str, loc)))
                else:
                    items.append(([], str(item)))
            message = f"invalid request: {problems(items)}" if items else ""
        elif detail is not None:
            message = detail if isinstance(detail, str) else json.dumps(detail)
    if not message and content and body is None:
        message = content.decode("utf-8", "replace").strip().splitlines()[0] if content.strip() else ""
        if message.lstrip().startswith("<"):  # an HTML error page says nothing useful on one line
            message = ""
    if not message:
        message = f"HTTP {status} {response.reason_phrase}".strip()
    message = one_line(message)
    code = code or _STATUS_CODES.get(status) or ("server_error" if status >= 500 else f"http_{status}")
    cls = _STATUS_ERRORS.get(status) or (ServerError if status >= 500 else ShoalAPIError)
    if code == "no_results" or (status == 404 and " has no results (state " in message):  # the latter: older nodes
        cls = NoResults
    if cls is InvalidRequest:
        return InvalidRequest(message, status, code, [f for f in fields if f])
    return cls(message, status, code)


def request_failed(exc: httpx.RequestError, api_url: str) -> ShoalAPIError:
    """A request to ``api_url`` that got no response."""
    if isinstance(exc, httpx.TransportError):
        return connection_failed(exc, api_url)
    return ShoalAPIError(f"request to Shoal API at {api_url} failed: {one_line(str(exc))}")


def connection_failed(exc: httpx.TransportError, api_url: str) -> ConnectionFailed:
    """Cannot reach, no answer from, or lost connection to the node at ``api_url``, with the reason."""
    reason = transport_reason(exc)
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.UnsupportedProtocol | httpx.ProxyError):
        message = f"cannot reach Shoal API at {api_url}: {reason}"
    elif isinstance(exc, httpx.TimeoutException):
        message = f"no answer from Shoal API at {api_url}: {reason}"
    else:
        message = f"lost connection to Shoal API at {api_url}: {reason}"
    return ConnectionFailed(message, api_url)


def transport_reason(exc: BaseException) -> str:
    """The useful part of a transport error, e.g. "connection refused" rather than
    "all attempts to connect to 127.0.0.1:8700 failed" (what anyio reports under trio)."""
    pending: list[BaseException] = [exc]
    seen: set[int] = set()
    while pending:
        e = pending.pop(0)
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError) or getattr(e, "errno", None) == errno.ECONNREFUSED:
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return f"cannot resolve host ({_strip_errno(str(e))})"
        if isinstance(e, BaseExceptionGroup):
            pending.extend(e.exceptions)
        pending.extend(x for x in (e.__cause__, e.__context__) if x is not None)
    if isinstance(exc, httpx.TimeoutException):
        return "timed out"
    text = _strip_errno(str(exc))
    return one_line(text[:1].lower() + text[1:]) if text else type(exc).__name__


def validation_summary(error: ValidationError, prefix: str = "") -> str:
    """A pydantic error's first three problems on one line (``spec.resources.cpu: ...; and 2 more``)."""
    return problems([(list(err["loc"]), err["msg"]) for err in error.errors()], prefix)


def problems(items: list[tuple[list[Any], str]], prefix: str = "") -> str:
    parts = []
    for loc, msg in items[:3]:
        where = ".".join([prefix, *map(str, loc)] if prefix else map(str, loc))
        parts.append(f"{where}: {msg}" if where else msg)
    if len(items) > 3:
        parts.append(f"and {len(items) - 3} more")
    return "; ".join(parts)


def one_line(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _strip_errno(text: str) -> str:
    return re.sub(r"^\[Errno -?\d+\]\s*", "", text).strip()
