"""Every API error leaves as ``{"error": {"code", "message", "fields"}}`` (``jobs.views.ErrorResponse``),
built here: ``error`` makes the response, ``install_error_handlers`` maps each exception a route
may raise to its status and code, and the ``ERR_*`` entries document them in the OpenAPI schema.
"""

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from jobs.views import ErrorResponse
from node.api.quotas import Refusal
from node.ratelimit import SpacedWarnings
from node.store import StoreClosed, StoreDamaged
from requester import IdempotencyConflict, UnknownJob

log = logging.getLogger("shoal.api")
warnings = SpacedWarnings(log)

ERROR_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
               405: "method_not_allowed", 408: "request_timeout", 409: "conflict", 413: "body_too_large",
               429: "too_many_requests", 503: "unavailable"}


def error(status: int, code: str, message: str, fields: list[str] | None = None,
          headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, "fields": fields or []}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def http_error(exc: StarletteHTTPException) -> JSONResponse:
    """An ``HTTPException`` raised by a route or a middleware, as an error response."""
    return error(exc.status_code, ERROR_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                 headers=getattr(exc, "headers", None))


def refused(refusal: Refusal) -> JSONResponse:
    """429 for a client over one of its quotas."""
    return error(429, "too_many_requests", refusal.message, headers={"Retry-After": str(refusal.retry_after)})


def error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


ERR_401 = {401: error_doc("unsigned request, bad signature, timestamp more than 5 minutes off, or reused nonce")}
ERR_403 = {403: error_doc("the client key is not authorized on this node, or lacks the capability the route "
                          "needs (submit, read, cancel or admin)")}
ERR_404 = {404: error_doc("no such job, or it belongs to another client")}
ERR_422 = {422: error_doc("invalid request; error.fields names each offending field")}
ERR_429 = {429: error_doc("a quota of this client is reached (jobs in flight, submissions per second, open "
                          "event streams, working directories stored, signed requests in the replay window); "
                          "see Retry-After")}
SIGNED_ERRORS = {**ERR_401, **ERR_403, **ERR_422, **ERR_429}
"""What any signed route may answer, whatever it does."""


def install_error_handlers(app: FastAPI) -> None:
    """Map every exception a route may raise to an error response; anything unexpected is a logged 500."""

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_field(e) for e in errors]
        problems = "; ".join(f"{field}: {e['msg'].removeprefix('Value error, ')}"
                             for field, e in zip(fields, errors, strict=True))
        return error(422, "invalid_request", problems, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): a body
            # problem like any other, reported the same way as malformed JSON.
            return error(422, "invalid_request", f"body: not JSON text ({exc.__cause__})", ["body"])
        return http_error(exc)

    @app.exception_handler(UnknownJob)
    async def _unknown(request: Request, exc: UnknownJob) -> JSONResponse:
        what = "sweep" if str(exc.args[0]).startswith("s-") else "job"
        return error(404, "not_found", f"no {what} {exc.args[0]!r} (or it is not yours)")

    @app.exception_handler(StoreClosed)
    async def _stopping(request: Request, exc: StoreClosed) -> JSONResponse:
        return error(503, "unavailable", "the node is stopping: ask again once it is back, or another node")

    @app.exception_handler(StoreDamaged)
    async def _damaged(request: Request, exc: StoreDamaged) -> JSONResponse:
        warnings.warn("damaged", "%s %s: %s", request.method, request.url.path, exc)  # not a traceback a request
        return error(503, "unavailable", str(exc))

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return error(409, "idempotency_conflict", str(exc))

    @app.exception_handler(Exception)  # also what the middleware lets out (Signed reads the body)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, ClientDisconnect):  # it hung up before its body arrived: nobody reads an answer,
            # and the node did not fail (a traceback each, 5,000 hang-ups of strangers wrote 7 MB of log)
            return error(400, "client_disconnected", "the client closed the connection before its request arrived")
        if isinstance(exc, StoreDamaged):  # from a middleware (the nonce's write): as from a route
            return await _damaged(request, exc)
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return error(500, "internal_error", f"the node failed to handle this request ({type(exc).__name__})")


def _field(error: Any) -> str:
    """Where a validation error is, dotted: ``spec.resources.memory``, ``query.limit``, ``body``."""
    loc = [str(p) for p in error["loc"]]
    if loc[:1] == ["body"]:  # the body's fields by their own names; the body itself as "body"
        loc = ["body"] if error["type"] == "json_invalid" else loc[1:] or ["body"]
    return ".".join(loc)
