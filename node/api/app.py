"""The node's REST API (FastAPI on hypercorn-trio, in the node process).

Every route except health, readiness, version and metrics requires a signed request, checked
by the ``_Signed`` middleware (``node.api.auth``) before anything else reads the request; a job
is visible only to the client that submitted it. Errors leave here as
``{"error": {"code", "message", "fields"}}`` (``jobs.views.ErrorResponse``) from one mapping,
and the OpenAPI schema documents each of them, the signature headers (as four API-key security
schemes, all required together) and the messages of the event stream.

Nothing a client sends may yield a 5xx: every input is bounded by its declared type (so
SQLite never sees an integer it cannot store), and an unexpected exception is logged with its
traceback and answered with a JSON 500 rather than dropping the connection.
"""

import io
import json
import logging
import secrets
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import trio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from pydantic import BaseModel, TypeAdapter, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import Event, EventKind, JobState, RunResult
from jobs.views import (
    Capacity,
    ContextStored,
    ErrorResponse,
    JobDescription,
    JobList,
    NodeList,
    NodeStatus,
    PeerList,
    Reputation,
    Share,
    ShareRequest,
)
from jobs.views import SubmitRequest as _SubmitRequest
from node.api.access import AuthorizedKeys, authorize, capability_for
from node.api.auth import RequestVerifier
from requester import IdempotencyConflict, UnknownJob
from shoal._auth import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    b64encode,
    client_id_for,
    parse_public_key,
)

if TYPE_CHECKING:
    from node.daemon import Node

log = logging.getLogger("shoal.api")

MAX_BODY = 1 << 20  # a job spec with inline code; contexts travel through storage, not this body
MAX_CONTEXT_BODY = 12 << 20  # a packed working directory (10 MiB of files plus tar headers)
MAX_WAIT = 60.0  # longest long-poll a client may ask for
MAX_OFFSET = 1_000_000_000  # paging offset; far beyond any store, and well inside SQLite's integers
SSE_POLL = 0.2  # how often an event stream looks for new events
SSE_KEEPALIVE = 15.0  # a comment line after this much silence keeps proxies from closing the stream
FOLLOW_POLL = 1.0  # a follower whose job is not in the requester's memory looks again this often
MAX_SHARES = 100  # clients one job or sweep may be shared with

UNSIGNED_PATHS = frozenset({"/healthz", "/readyz", "/v1/version", "/metrics", "/openapi.json", "/docs",
                            "/docs/oauth2-redirect", "/redoc"})

_SIGNATURE_SCHEMES = {  # OpenAPI security scheme name → (header, description)
    "ShoalKey": (HEADER_KEY, "urlsafe base64 of the client's raw 32-byte Ed25519 public key"),
    "ShoalTimestamp": (HEADER_TIMESTAMP, "unix seconds; rejected when more than 5 minutes off"),
    "ShoalNonce": (HEADER_NONCE, "16 random bytes as lower-case hex; never reused"),
    "ShoalSignature": (HEADER_SIGNATURE, "urlsafe base64 Ed25519 signature of METHOD\\nTARGET\\nTIMESTAMP\\n"
                                         "NONCE\\nSHA256-HEX(BODY); see shoal._auth"),
}
_JSON_IN_A_STRING = {"type": "string", "contentMediaType": "application/json"}
# One Server-Sent Event, as a parsed message (``id``, ``event``, ``data``): a job event, or the
# closing ``end`` (whose id, per the SSE rules, is inherited from the last event).
_SSE_ID = {"type": "string", "pattern": "^[0-9]+$", "description": "the event's seq; send it back as Last-Event-ID"}
_SSE_MESSAGE = {"oneOf": [
    {"type": "object", "required": ["id", "event", "data"], "properties": {
        "id": _SSE_ID,
        "event": {"type": "string", "enum": [kind.value for kind in EventKind]},
        "data": {**_JSON_IN_A_STRING, "contentSchema": {"$ref": "#/components/schemas/Event"}}}},
    {"type": "object", "required": ["event", "data"], "properties": {
        "id": _SSE_ID,
        "event": {"const": "end", "description": "the job has ended and so has the stream"},
        "data": {**_JSON_IN_A_STRING, "contentSchema": {
            "type": "object", "required": ["state"],
            "properties": {"state": {"$ref": "#/components/schemas/JobState"}}}},
    }},
]}  # fmt: skip
_ERROR_CODES = {400: "bad_request", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
                405: "method_not_allowed", 409: "conflict", 413: "body_too_large"}


class UntrustedBody(BaseModel):
    """Makes a request model safe to validate from untrusted input.

    A validator of the job model that meets a value of a type it does not expect may raise
    TypeError instead of ValueError (``parse_bytes`` given a list, for one); pydantic passes
    that through, and FastAPI would answer 500. Here it becomes a validation error (422).
    """

    @model_validator(mode="wrap")
    @classmethod
    def _type_errors_are_invalid_input(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except TypeError as e:
            raise ValueError(f"the spec has a value of a type the model cannot read ({e})") from None


class SubmitRequest(UntrustedBody, _SubmitRequest):
    """``jobs.views.SubmitRequest`` for the API (see ``UntrustedBody``)."""


class VersionInfo(BaseModel):
    version: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    peers: int
    uptime: float


def _error_doc(description: str) -> dict[str, Any]:
    return {"model": ErrorResponse, "description": description}


_ERR_401 = {401: _error_doc("unsigned request, bad signature, timestamp more than 5 minutes off, or reused nonce")}
_ERR_403 = {403: _error_doc("the client key is not authorized on this node, or lacks the capability the route "
                            "needs (submit, read, cancel or admin)")}
_ERR_404 = {404: _error_doc("no such job, or it belongs to another client")}
_ERR_422 = {422: _error_doc("invalid request; error.fields names each offending field")}


def _error(status: int, code: str, message: str, fields: list[str] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorResponse.model_validate({"error": {"code": code, "message": message, "fields": fields or []}})
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


class _BodyLimit:
    """Pure ASGI middleware: 413 for bodies over MAX_BODY, whether declared or streamed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = MAX_CONTEXT_BODY if scope["path"] == "/v1/contexts" else MAX_BODY
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _error(400, "bad_request", "malformed Content-Length header")(scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            await _error(413, "body_too_large", _too_large(limit))(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise StarletteHTTPException(413, _too_large(limit))
            return message

        await self.app(scope, limited_receive, send)


class _Signed:
    """Pure ASGI middleware: the signature of every request outside UNSIGNED_PATHS is verified
    before anything else reads the request, so an unsigned one learns nothing (not even whether
    its JSON parses, which FastAPI would tell before running a route's dependencies).

    The verified body is handed on unchanged; routes read the caller from ``request.state.client_id``.
    With ``access`` (an authorized-keys file), a verified key that the file does not let make this
    request gets 403 saying why (``node.api.access``), on every signed route.
    """

    def __init__(self, app, verifier: RequestVerifier, access: AuthorizedKeys | None = None) -> None:
        self.app = app
        self.verifier = verifier
        self.access = access

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSIGNED_PATHS:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        try:
            await self.verifier(request)  # reads the whole body (bounded by _BodyLimit)
            body = await request.body()
            if self.access is not None:
                refusal = authorize(request.state.public_key, capability_for(request.method, scope["path"]),
                                    self.access.table())
                if refusal is not None:
                    raise StarletteHTTPException(403, refusal)
        except StarletteHTTPException as exc:
            response = _error(exc.status_code, _ERROR_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                              headers=getattr(exc, "headers", None))
            await response(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects, for streaming responses

        await self.app(scope, replay, send)


async def _client_id(request: Request) -> str:
    """The verified caller (see ``_Signed``). ``async`` only so that FastAPI calls it in line:
    a plain ``def`` dependency costs every request a worker-thread round trip."""
    return request.state.client_id


def _too_large(limit: int = MAX_BODY) -> str:
    if limit == MAX_BODY:
        return f"request body over {MAX_BODY} bytes ({MAX_BODY >> 20} MiB): a job spec must be smaller"
    return f"request body over {limit} bytes: a working directory sent with a job must be smaller"


def _field(error: Any) -> str:
    """Where a validation error is, dotted: ``spec.resources.memory``, ``query.limit``, ``body``."""
    loc = [str(p) for p in error["loc"]]
    if loc[:1] == ["body"]:  # the body's fields by their own names; the body itself as "body"
        loc = ["body"] if error["type"] == "json_invalid" else loc[1:] or ["body"]
    return ".".join(loc)


def _unencodable(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = _unencodable(key, path) or _unencodable(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = _unencodable(item, f"{path}.{i}")
            if found is not None:
                return found
    return None


def _last_event_id(value: str | None) -> int:
    """The sequence number to resume after; anything that is not one starts from the beginning."""
    if value and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return 0


async def _results_by_cid(node: "Node", cid: str) -> Response:
    """Stream the published results directory as a tar; the client checks it against ``cid``."""
    from storage import NotFound, StorageError

    assert node.publisher is not None
    try:
        chunks = await node.publisher.export(cid, fetch=True)
    except NotFound:
        return _error(404, "not_found", f"results {cid} are not available from this node (no Kubo, or nobody "
                                        "provides them any more)")
    except StorageError as e:
        return _error(503, "storage_unavailable", f"cannot read results {cid}: {e}")
    return StreamingResponse(chunks, media_type="application/x-tar", headers={"X-Shoal-CID": cid})


async def _publish_context(node: "Node", body: bytes) -> str:
    from storage import StorageError, extract_tar

    if node.publisher is None:
        raise StarletteHTTPException(404, "this node stores no data")

    async def chunks():
        yield body

    work = node.config.data_dir / "uploads"
    await trio.to_thread.run_sync(lambda: work.mkdir(parents=True, exist_ok=True))
    target = work / f"ctx-{secrets.token_hex(8)}"
    try:
        await extract_tar(chunks(), target, max_bytes=MAX_CONTEXT_BODY)
        return await node.publisher.publish(target)
    except StorageError as e:
        raise StarletteHTTPException(422, f"the working directory archive is unusable: {e}") from e
    finally:
        await trio.to_thread.run_sync(lambda: shutil.rmtree(target, ignore_errors=True))


def event_stream(node: "Node", job_id: str, after: int,
                 state_of: Callable[[str], Awaitable[JobState | None]]) -> StreamingResponse:
    """A job's (or sweep's) events as Server-Sent Events from ``after`` on, ending after its last one."""

    async def stream() -> AsyncIterator[bytes]:
        nonlocal after
        quiet_since = time.monotonic()
        while True:
            batch = await node.store.events(job_id, after=after)
            for e in batch:
                after = e.seq
                yield f"id: {e.seq}\nevent: {e.kind.value}\ndata: {e.model_dump_json()}\n\n".encode()
            if batch:
                quiet_since = time.monotonic()
                continue
            # Looked at after an empty read: the terminal event is written in the same
            # transaction as the terminal state, so nothing of the job's own is missed.
            state = await state_of(job_id)
            if state is not None and state.is_terminal:
                yield f"event: end\ndata: {json.dumps({'state': state.value})}\n\n".encode()
                return
            if time.monotonic() - quiet_since > SSE_KEEPALIVE:
                quiet_since = time.monotonic()
                yield b": keep-alive\n\n"
            await trio.sleep(SSE_POLL)

    return StreamingResponse(stream(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def result_tar(node: "Node", result: RunResult) -> Response:
    """Stream a result's files: the published directory when it has a CID, else stdout/stderr/exitCode."""
    if result.cid and node.publisher is not None:
        return await _results_by_cid(node, result.cid)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in (("stdout", result.stdout), ("stderr", result.stderr), ("exitCode", str(result.exit_code))):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(result.finished_at or time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return Response(buf.getvalue(), media_type="application/x-tar")


async def share_with(node: "Node", target: str, key: str) -> Share:
    """Record that the client with ``key`` may read job or sweep ``target`` (its owner has been checked)."""
    public_key = parse_public_key(key)  # ShareRequest's pattern admits only 32-byte keys
    client = client_id_for(public_key)
    if not await node.store.share(target, client, limit=MAX_SHARES):
        raise StarletteHTTPException(409, f"{target} is already shared with {MAX_SHARES} clients, the most allowed")
    return Share(id=target, key=b64encode(public_key), client_id=client)


def _result_of(description: JobDescription) -> RunResult | None:
    return description.shown_result()


def create_app(node: "Node") -> FastAPI:
    from node.daemon import VERSION

    app = FastAPI(title="Shoal node API", version=VERSION,
                  description="Submit and follow jobs on a Shoal node. Every route except health, readiness, "
                              "version and metrics takes a signed request (see the security schemes).")
    Client = Annotated[str, Depends(_client_id)]
    started = time.time()
    signed = APIRouter(responses={**_ERR_401, **_ERR_403, **_ERR_422})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        fields = [_field(e) for e in errors]
        problems = "; ".join(f"{field}: {e['msg'].removeprefix('Value error, ')}"
                             for field, e in zip(fields, errors, strict=True))
        return _error(422, "invalid_request", problems, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
            # FastAPI's "error parsing the body" (e.g. bytes that are not UTF-8): a body
            # problem like any other, reported the same way as malformed JSON.
            return _error(422, "invalid_request", f"body: not JSON text ({exc.__cause__})", ["body"])
        return _error(exc.status_code, _ERROR_CODES.get(exc.status_code, "http_error"), str(exc.detail),
                      headers=getattr(exc, "headers", None))

    @app.exception_handler(UnknownJob)
    async def _unknown(request: Request, exc: UnknownJob) -> JSONResponse:
        return _error(404, "not_found", f"no job {exc.args[0]!r} (or it is not yours)")

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(409, "idempotency_conflict", str(exc))

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        return _error(500, "internal_error", f"the node failed to handle this request ({type(exc).__name__})")

    def requester():
        if node.requester is None:
            raise StarletteHTTPException(404, "this node does not take jobs (requester role off)")
        return node.requester

    async def owned(job_id: str, client: str, *, shared: bool = False) -> JobDescription:
        """The job if ``client`` owns it, or (``shared``: the read routes) it was shared with ``client``."""
        description = await requester().describe(job_id)
        if description.job.owner != client and not (shared and await node.store.is_shared(job_id, client)):
            raise UnknownJob(job_id)
        return description

    async def current_state(job_id: str) -> JobState | None:
        job = (node.requester.live_job(job_id) if node.requester else None) or await node.store.get_job(job_id)
        return job.state if job is not None else None

    @signed.post("/v1/jobs", status_code=201, response_model=JobDescription, tags=["jobs"],
                 summary="Submit a job",
                 responses={200: {"model": JobDescription, "description": "an earlier job with this Idempotency-Key"},
                            409: _error_doc("the Idempotency-Key was used with another spec"),
                            413: _error_doc(f"request body over {MAX_BODY} bytes")})
    async def submit(body: SubmitRequest, client: Client, response: Response,
                     idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
                     cache: Annotated[bool, Query(description="false: run a deterministic job even when a "
                                                              "verified result of the same spec is known")] = True,
                     ) -> JobDescription:
        where = _unencodable(body.spec.model_dump(mode="python"), "spec")
        if where is not None:  # JSON's \ud800-style escapes can smuggle in text no store can keep
            return _error(422, "invalid_request", f"{where}: not valid Unicode text (a lone surrogate)", [where])
        job, created = await requester().submit(body.spec, client, idempotency_key, use_cache=cache)
        if not created:
            response.status_code = 200
        return await requester().describe(job.id)

    @signed.get("/v1/jobs", response_model=JobList, tags=["jobs"], summary="List your jobs, newest first",
                responses={403: _error_doc("all=true: a node lists only the jobs of the client that asks")})
    async def list_jobs(client: Client, state: JobState | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                        all: Annotated[bool, Query(description="must be false: other clients' jobs are "
                                                               "never listed")] = False) -> JobList:
        if all:
            raise StarletteHTTPException(403, "listing other clients' jobs is not allowed: "
                                              "a node lists only the jobs of the client that asks")
        jobs, total = await node.store.list_jobs(owner=client, state=state, limit=limit, offset=offset)
        live = node.requester
        jobs = [(live.live_job(j.id) or j) if live else j for j in jobs]
        return JobList(jobs=jobs, total=total)

    @signed.get("/v1/jobs/{job_id}", response_model=JobDescription, tags=["jobs"], responses=_ERR_404,
                summary="Describe a job (optionally waiting up to `wait` seconds for it to end)")
    async def describe(job_id: str, client: Client,
                       wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0) -> JobDescription:
        description = await owned(job_id, client, shared=True)
        if wait and not description.job.state.is_terminal:
            await requester().wait(job_id, wait)
            description = await requester().describe(job_id)
        return description

    @signed.post("/v1/jobs/{job_id}/cancel", response_model=JobDescription, tags=["jobs"], responses=_ERR_404,
                 summary="Cancel a job (a no-op once it has ended)")
    async def cancel(job_id: str, client: Client) -> JobDescription:
        await owned(job_id, client)
        await requester().cancel(job_id)
        return await requester().describe(job_id)

    @signed.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
                summary="The job's events as Server-Sent Events, ending with an `end` event",
                responses={**_ERR_404, 200: {
                    "content": {"text/event-stream": {"schema": _SSE_MESSAGE}},
                    "description": "one `id`/`event`/`data` message per event (data: an Event as JSON); after "
                                   "the job's last event, `event: end` with data {\"state\": ...}. Reconnect "
                                   "with Last-Event-ID to resume after the last id received."}})
    async def events(job_id: str, client: Client,
                     last_event_id: Annotated[str | None, Header(max_length=64)] = None) -> StreamingResponse:
        await owned(job_id, client, shared=True)
        after = _last_event_id(last_event_id)

        return event_stream(node, job_id, after, current_state)

    @signed.get("/v1/jobs/{job_id}/logs", response_class=Response, tags=["jobs"],
                summary="The job's stdout or stderr; with follow=true the response ends when the job does",
                responses={**_ERR_404, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                             "description": "the text (empty while the job has not run)"}})
    async def logs(job_id: str, client: Client,
                   stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout",
                   follow: bool = False) -> Response:
        description = await owned(job_id, client, shared=True)
        if not follow or description.job.state.is_terminal:
            result = _result_of(description)
            return PlainTextResponse(getattr(result, stream) if result else "")

        async def until_done() -> AsyncIterator[bytes]:
            # Executors report output when a run ends, so following means: keep the response
            # open until the job has ended, then send its text. No timeout: the client chose
            # to follow, and closing the connection stops this.
            while True:
                await requester().wait(job_id, MAX_WAIT)
                state = await current_state(job_id)
                if state is None or state.is_terminal:
                    break
                if node.requester is None or node.requester.live_job(job_id) is None:
                    await trio.sleep(FOLLOW_POLL)  # not (yet) in memory: wait() returned at once
            result = _result_of(await requester().describe(job_id))
            text = getattr(result, stream) if result else ""
            if text:
                yield text.encode()

        return StreamingResponse(until_done(), media_type="text/plain; charset=utf-8")

    @signed.get("/v1/jobs/{job_id}/results", tags=["jobs"], response_class=Response,
                summary="The job's results as a tar archive: stdout, stderr, exitCode",
                responses={404: _error_doc("no such job (or not yours), or it has no results yet"),
                           200: {"content": {"application/x-tar": {"schema": {"type": "string",
                                                                               "format": "binary"}}},
                                 "description": "the job's result files"}})
    async def results(job_id: str, client: Client) -> Response:
        description = await owned(job_id, client, shared=True)
        result = _result_of(description)
        if result is None:
            raise StarletteHTTPException(404, f"job {job_id} has no results (state {description.job.state.value})")
        if description.job.results_removed_at is not None:
            removed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(description.job.results_removed_at))
            return _error(410, "gone", f"the results of job {job_id} were removed at {removed} "
                                       f"(retention {node.config.retention:g} s)")
        return await result_tar(node, result)

    @signed.post("/v1/jobs/{job_id}/shares", response_model=Share, tags=["jobs"],
                 responses={**_ERR_404, 409: _error_doc(f"the job already has {MAX_SHARES} readers")},
                 summary="Let another client key read this job: describe, events, logs and results, nothing else")
    async def share(job_id: str, body: ShareRequest, client: Client) -> Share:
        await owned(job_id, client)
        return await share_with(node, job_id, body.key)

    @signed.post("/v1/contexts", tags=["jobs"], summary="Store a working directory (tar) to send with jobs",
                 response_model=ContextStored, status_code=201,
                 responses={413: _error_doc("archive over the context limit"),
                            422: _error_doc("not a usable tar archive")},
                 openapi_extra={"requestBody": {"required": True, "content": {"application/x-tar": {
                     "schema": {"type": "string", "format": "binary"}}}}})
    async def store_context(request: Request, client: Client) -> ContextStored:
        cid = await _publish_context(node, await request.body())
        return ContextStored(cid=cid)

    @signed.get("/v1/node", response_model=NodeStatus, tags=["node"],
                summary="This node: peer id, addresses, roles, engines, capacity")
    async def node_status(client: Client) -> NodeStatus:
        roles = [r for r, on in (("requester", node.requester), ("compute", node.compute)) if on is not None]
        compute = node.compute
        info = compute.node_info() if compute else None
        zero = {"cpu": 0, "memory": 0, "disk": 0}
        capacity = Capacity(total=info.total, free=info.free, max_per_job=info.max_per_job) if info else \
            Capacity(total=zero, free=zero, max_per_job=zero)
        return NodeStatus(peer_id=node.network.peer_id, addrs=node.network.addrs(), roles=roles,
                          engines=info.engines if info else [], capacity=capacity,
                          unavailable_engines=compute.executors.problems() if compute else {},
                          running=info.running if info else 0, backlog=info.backlog if info else 0, version=VERSION)

    @signed.get("/v1/peers", response_model=PeerList, tags=["node"], summary="Peers this node is connected to")
    async def peers(client: Client) -> PeerList:
        return PeerList(peers=node.network.connected_peers())

    @signed.get("/v1/nodes", response_model=NodeList, tags=["node"],
                responses={404: _error_doc("this node does not take jobs (requester role off)")},
                summary="Compute nodes this node knows, with their engines and capacity")
    async def nodes(client: Client) -> NodeList:
        r = requester()
        reputation = {peer: Reputation(accepted=a, rejected=j, quarantined=r.quarantined(peer))
                      for peer, (a, j) in r.reputation.items()}
        return NodeList(nodes=r.known_nodes(), reputation=reputation)

    @app.get("/v1/version", response_model=VersionInfo, tags=["health"], summary="The node's version (unsigned)")
    async def version() -> VersionInfo:
        return VersionInfo(version=VERSION)

    @app.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (unsigned)")
    async def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Readiness, tags=["health"],
             summary="Readiness (unsigned): served once store, network, roles and API all run")
    async def readyz() -> Readiness:
        return Readiness(status="ready", peers=len(node.network.connected_peers()), uptime=time.time() - started)

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"], summary="Prometheus metrics (unsigned)",
             responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                              "description": "Prometheus text format 0.0.4"}})
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await _metrics(node), media_type="text/plain; version=0.0.4")

    from node.api.sweeps import add_sweep_routes

    add_sweep_routes(signed, node)
    app.include_router(signed)

    def openapi() -> dict[str, Any]:
        """FastAPI's schema plus the signature: four headers, all required together (one requirement)."""
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            components = schema.setdefault("components", {})
            for model in (Event, JobState):  # referenced from the event stream's schema
                model_schema = TypeAdapter(model).json_schema(ref_template="#/components/schemas/{model}")
                components.setdefault("schemas", {}).update(model_schema.pop("$defs", {}))
                components["schemas"][model.__name__] = model_schema
            schemes = components.setdefault("securitySchemes", {})
            for name, (header, description) in _SIGNATURE_SCHEMES.items():
                schemes[name] = {"type": "apiKey", "in": "header", "name": header, "description": description}
            requirement = {name: [] for name in _SIGNATURE_SCHEMES}
            for path, operations in schema.get("paths", {}).items():
                if path not in UNSIGNED_PATHS:
                    for operation in operations.values():
                        operation["security"] = [requirement]
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    access = None
    if node.config.authorized_keys is not None:
        access = AuthorizedKeys(node.config.authorized_keys)
        access.load()
    app.add_middleware(_Signed, verifier=RequestVerifier(), access=access)
    app.add_middleware(_BodyLimit)  # added last: runs first, so the verifier reads a bounded body
    return app


NETWORK_GAUGES = ("connected_peers", "open_streams", "gossip_cached", "gossip_penalised_peers", "gossip_blocked_peers")
"""``NetworkStatistics`` fields that are levels now, not counts since start."""


async def _metrics(node: "Node") -> str:
    lines = ["# TYPE shoal_jobs gauge"]
    for state, n in sorted((await node.store.count_jobs_by_state()).items()):
        lines.append(f'shoal_jobs{{state="{state}"}} {n}')
    if node.requester is not None:
        lines.append("# TYPE shoal_requester_total counter")
        for name, n in node.requester.counters.items():
            lines.append(f'shoal_requester_total{{event="{name}"}} {n}')
        lat = sorted(node.requester.latencies[-1000:])
        if lat:
            lines.append("# TYPE shoal_job_latency_seconds summary")
            for q in (0.5, 0.9, 0.99):
                value = lat[min(len(lat) - 1, int(q * len(lat)))]
                lines.append(f'shoal_job_latency_seconds{{quantile="{q}"}} {value:.6f}')
        table = node.requester.nodes.statistics()
        lines.append("# TYPE shoal_node_table gauge")
        lines.append(f"shoal_node_table {table.size}")
        lines.append("# TYPE shoal_node_table_total counter")
        lines.append(f'shoal_node_table_total{{event="evicted"}} {table.evicted}')
        lines.append(f'shoal_node_table_total{{event="expired"}} {table.expired}')
    if node.sweeps is not None:
        lines.append("# TYPE shoal_sweeps_total counter")
        for name, n in node.sweeps.counters.items():
            lines.append(f'shoal_sweeps_total{{event="{name}"}} {n}')
    if node.compute is not None:
        cap = node.compute.capacity.statistics()
        lines.append("# TYPE shoal_capacity gauge")
        for kind, res in (("total", cap.total), ("free", cap.free)):
            lines.append(f'shoal_capacity_cpu{{kind="{kind}"}} {res.cpu}')
            lines.append(f'shoal_capacity_memory_bytes{{kind="{kind}"}} {res.memory}')
        lines.append(f"shoal_backlog {len(node.compute.backlog)}")
    lines.append(f"shoal_peers {len(node.network.connected_peers())}")
    lines.append("# TYPE shoal_dispatch_dropped_total counter")
    lines.append(f"shoal_dispatch_dropped_total {node.dispatcher.dropped}")
    if node.dispatcher.rate_limiter is not None:
        limits = node.dispatcher.rate_limiter.statistics()
        lines.append("# TYPE shoal_peer_requests_total counter")
        lines.append(f'shoal_peer_requests_total{{verdict="allowed"}} {limits.allowed}')
        lines.append(f'shoal_peer_requests_total{{verdict="rate_limited"}} {limits.refused}')
        lines.append("# TYPE shoal_rate_limited_peers_tracked gauge")
        lines.append(f"shoal_rate_limited_peers_tracked {limits.tracked}")
    stats = asdict(node.network.statistics())
    lines.append("# TYPE shoal_network gauge")
    for name in NETWORK_GAUGES:
        lines.append(f'shoal_network{{value="{name}"}} {stats.pop(name)}')
    lines.append("# TYPE shoal_network_total counter")
    for name, n in stats.items():
        lines.append(f'shoal_network_total{{event="{name}"}} {n}')
    return "\n".join(lines) + "\n"


async def serve_api(app: FastAPI, host: str, port: int, *, tls: tuple[Path, Path] | None = None,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``app`` on ``host:port``; with ``tls`` (certificate, key: PEM files) over HTTPS only."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    if tls is not None:
        config.certfile, config.keyfile = str(tls[0]), str(tls[1])
    config.accesslog = None
    config.errorlog = None
    await serve(app, config, task_status=task_status)
