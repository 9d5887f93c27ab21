"""The node's REST API (FastAPI on hypercorn-trio, in the node process).

Every route except health, readiness, version and metrics requires a signed request
(``node.api.auth``); a job is visible only to the client that submitted it. Errors leave
here as ``{"error": {"code", "message", "fields"}}`` from one mapping.
"""

import io
import json
import tarfile
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Annotated

import trio
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import JobState
from jobs.views import (
    Capacity,
    JobDescription,
    JobList,
    NodeList,
    NodeStatus,
    PeerList,
    SubmitRequest,
)
from node.api.auth import RequestVerifier
from requester import IdempotencyConflict, UnknownJob

if TYPE_CHECKING:
    from node.daemon import Node

MAX_BODY = 1 << 20  # a job spec with inline code; contexts travel through storage, not this body
MAX_WAIT = 60.0  # longest long-poll a client may ask for
SSE_POLL = 0.2


def _error(status: int, code: str, message: str, fields: list[str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message, "fields": fields or []}}, status_code=status)


class _BodyLimit:
    """Pure ASGI middleware: 413 for bodies over MAX_BODY, whether declared or streamed."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > MAX_BODY):
            await _error(413, "body_too_large", f"request body over {MAX_BODY} bytes")(scope, receive, send)
            return
        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY:
                raise StarletteHTTPException(413, f"request body over {MAX_BODY} bytes")
            return message

        await self.app(scope, limited_receive, send)


def create_app(node: "Node") -> FastAPI:
    from node.daemon import VERSION

    app = FastAPI(title="Shoal node API", version=VERSION)
    verifier = RequestVerifier()
    Client = Annotated[str, Depends(verifier)]
    started = time.time()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        fields = [".".join(str(p) for p in e["loc"] if p != "body") for e in exc.errors()]
        problems = "; ".join(f"{f or 'body'}: {e['msg']}" for f, e in zip(fields, exc.errors(), strict=True))
        return _error(422, "invalid_request", problems, fields)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        codes = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed",
                 409: "conflict", 413: "body_too_large"}
        return _error(exc.status_code, codes.get(exc.status_code, "http_error"), str(exc.detail))

    @app.exception_handler(UnknownJob)
    async def _unknown(request: Request, exc: UnknownJob) -> JSONResponse:
        return _error(404, "not_found", f"no job {exc.args[0]!r} (or it is not yours)")

    @app.exception_handler(IdempotencyConflict)
    async def _conflict(request: Request, exc: IdempotencyConflict) -> JSONResponse:
        return _error(409, "idempotency_conflict", str(exc))

    def requester():
        if node.requester is None:
            raise StarletteHTTPException(404, "this node does not take jobs (requester role off)")
        return node.requester

    async def owned(job_id: str, client: str) -> JobDescription:
        description = await requester().describe(job_id)
        if description.job.owner != client:
            raise UnknownJob(job_id)
        return description

    @app.post("/v1/jobs", status_code=201, response_model=JobDescription, tags=["jobs"],
              responses={200: {"model": JobDescription, "description": "an earlier job with this Idempotency-Key"},
                         409: {"description": "the Idempotency-Key was used with another spec"}})
    async def submit(body: SubmitRequest, client: Client, response: Response,
                     idempotency_key: Annotated[str | None, Header(max_length=128)] = None) -> JobDescription:
        job, created = await requester().submit(body.spec, client, idempotency_key)
        if not created:
            response.status_code = 200
        return await requester().describe(job.id)

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"])
    async def list_jobs(client: Client, state: JobState | None = None,
                        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
                        offset: Annotated[int, Query(ge=0)] = 0, all: bool = False) -> JobList:
        if all:
            raise StarletteHTTPException(403, "listing other clients' jobs is not allowed")
        jobs, total = await node.store.list_jobs(owner=client, state=state, limit=limit, offset=offset)
        live = node.requester
        jobs = [(live.live_job(j.id) or j) if live else j for j in jobs]
        return JobList(jobs=jobs, total=total)

    @app.get("/v1/jobs/{job_id}", response_model=JobDescription, tags=["jobs"])
    async def describe(job_id: str, client: Client,
                       wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0) -> JobDescription:
        description = await owned(job_id, client)
        if wait and not description.job.state.is_terminal:
            await requester().wait(job_id, wait)
            description = await requester().describe(job_id)
        return description

    @app.post("/v1/jobs/{job_id}/cancel", response_model=JobDescription, tags=["jobs"])
    async def cancel(job_id: str, client: Client) -> JobDescription:
        await owned(job_id, client)
        await requester().cancel(job_id)
        return await requester().describe(job_id)

    @app.get("/v1/jobs/{job_id}/events", tags=["jobs"],
             responses={200: {"content": {"text/event-stream": {}}, "description": "Server-Sent Events"}})
    async def events(job_id: str, client: Client,
                     last_event_id: Annotated[str | None, Header()] = None) -> StreamingResponse:
        await owned(job_id, client)
        after = int(last_event_id) if last_event_id and last_event_id.isdigit() else 0

        async def stream() -> AsyncIterator[bytes]:
            nonlocal after
            while True:
                batch = await node.store.events(job_id, after=after)
                for e in batch:
                    after = e.seq
                    yield f"id: {e.seq}\nevent: {e.kind.value}\ndata: {e.model_dump_json()}\n\n".encode()
                job = (node.requester.live_job(job_id) if node.requester else None) or \
                    await node.store.get_job(job_id)
                if job is not None and job.state.is_terminal and len(batch) == 0:
                    yield f"event: end\ndata: {json.dumps({'state': job.state.value})}\n\n".encode()
                    return
                if not batch:
                    await trio.sleep(SSE_POLL)

        return StreamingResponse(stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    @app.get("/v1/jobs/{job_id}/logs", response_class=PlainTextResponse, tags=["jobs"])
    async def logs(job_id: str, client: Client, stream: Annotated[str, Query(pattern="^(stdout|stderr)$")] = "stdout",
                   follow: bool = False) -> PlainTextResponse:
        description = await owned(job_id, client)
        if follow and not description.job.state.is_terminal:
            await requester().wait(job_id, MAX_WAIT)
            description = await owned(job_id, client)
        result = next((x.result for x in description.executions if x.result is not None), None)
        return PlainTextResponse(getattr(result, stream, "") if result else "")

    @app.get("/v1/jobs/{job_id}/results", tags=["jobs"],
             responses={200: {"content": {"application/x-tar": {}}, "description": "the job's result files"}})
    async def results(job_id: str, client: Client) -> Response:
        description = await owned(job_id, client)
        result = next((x.result for x in description.executions if x.result is not None), None)
        if result is None:
            raise StarletteHTTPException(404, f"job {job_id} has no results (state {description.job.state.value})")
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for name, text in (("stdout", result.stdout), ("stderr", result.stderr),
                               ("exitCode", str(result.exit_code))):
                data = text.encode()
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return Response(buf.getvalue(), media_type="application/x-tar")

    @app.get("/v1/node", response_model=NodeStatus, tags=["node"])
    async def node_status(client: Client) -> NodeStatus:
        roles = [r for r, on in (("requester", node.requester), ("compute", node.compute)) if on is not None]
        compute = node.compute
        info = compute.node_info() if compute else None
        zero = {"cpu": 0, "memory": 0, "disk": 0}
        capacity = Capacity(total=info.total, free=info.free, max_per_job=info.max_per_job) if info else \
            Capacity(total=zero, free=zero, max_per_job=zero)
        return NodeStatus(peer_id=node.peer_id, addrs=node.network.addrs(), roles=roles,
                          engines=info.engines if info else [], capacity=capacity,
                          running=info.running if info else 0, backlog=info.backlog if info else 0, version=VERSION)

    @app.get("/v1/peers", response_model=PeerList, tags=["node"])
    async def peers(client: Client) -> PeerList:
        return PeerList(peers=node.network.connected_peers())

    @app.get("/v1/nodes", response_model=NodeList, tags=["node"])
    async def nodes(client: Client) -> NodeList:
        return NodeList(nodes=requester().known_nodes())

    @app.get("/v1/version", tags=["health"])
    async def version() -> dict[str, str]:
        return {"version": VERSION}

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz() -> dict[str, object]:
        return {"status": "ready", "peers": len(node.network.connected_peers()), "uptime": time.time() - started}

    @app.get("/metrics", response_class=PlainTextResponse, tags=["health"])
    async def metrics() -> PlainTextResponse:
        return PlainTextResponse(await _metrics(node), media_type="text/plain; version=0.0.4")

    app.add_middleware(_BodyLimit)
    return app


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
    if node.compute is not None:
        cap = node.compute.capacity.statistics()
        lines.append("# TYPE shoal_capacity gauge")
        for kind, res in (("total", cap.total), ("free", cap.free)):
            lines.append(f'shoal_capacity_cpu{{kind="{kind}"}} {res.cpu}')
            lines.append(f'shoal_capacity_memory_bytes{{kind="{kind}"}} {res.memory}')
        lines.append(f"shoal_backlog {len(node.compute.backlog)}")
    lines.append(f"shoal_peers {len(node.network.connected_peers())}")
    return "\n".join(lines) + "\n"


async def serve_api(app: FastAPI, host: str, port: int, *,
                    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED) -> None:
    from hypercorn.config import Config
    from hypercorn.trio import serve

    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.errorlog = None
    await serve(app, config, task_status=task_status)
