"""The jobs' routes: ``/v1/jobs/...`` and ``/v1/contexts``. Signed; a job is visible only to the
client that submitted it and to those it was shared with (read routes only)."""

import secrets
import time
from typing import Annotated, Literal

import trio
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import Job, JobState, RunResult
from jobs.selector import MAX_SELECTOR_CHARS
from jobs.views import MAX_PAGE, ContextStored, JobDescription, JobList, Share, ShareRequest
from jobs.views import SubmitRequest as _SubmitRequest
from node.api.common import (
    MAX_OFFSET,
    MAX_SHARES,
    MAX_WAIT,
    UntrustedBody,
    result_tar,
    results_gone,
    share_with,
    unencodable,
    visible_to,
    wait_for_end,
)
from node.api.errors import ERR_404, SIGNED_ERRORS, error, error_doc, refused
from node.api.middleware import MAX_BODY, MAX_CONTEXT_BODY, client_id
from node.api.parts import Node, requester_of
from node.api.quotas import Quotas
from node.api.streams import SSE_MESSAGE, counted_stream, event_stream, follow_output, resume_after
from storage.trees import check_depth, remove_tree

Client = Annotated[str, Depends(client_id)]


class SubmitRequest(UntrustedBody, _SubmitRequest):
    """``jobs.views.SubmitRequest`` for the API (see ``UntrustedBody``)."""


def jobs_router(node: Node, quotas: Quotas) -> APIRouter:
    router = APIRouter(responses=SIGNED_ERRORS)

    def requester():
        return requester_of(node)

    async def owned(job_id: str, client: str, *, shared: bool = False) -> Job:
        """The job if ``client`` owns it, or (``shared``: the read routes) it was shared with ``client``."""
        job = await requester().get(job_id)
        await visible_to(client, job_id, job.owner, node, shared=shared)
        return job

    async def current_state(job_id: str) -> JobState | None:
        job = (node.requester.live_job(job_id) if node.requester else None) or await node.store.get_job(job_id)
        return job.state if job is not None else None

    @router.post("/v1/jobs", status_code=201, response_model=JobDescription, tags=["jobs"],
                 summary="Submit a job",
                 responses={200: {"model": JobDescription, "description": "an earlier job with this Idempotency-Key"},
                            409: error_doc("the Idempotency-Key was used with another spec"),
                            413: error_doc(f"request body over {MAX_BODY} bytes")})
    async def submit(body: SubmitRequest, client: Client, response: Response,
                     idempotency_key: Annotated[str | None, Header(max_length=128)] = None,
                     cache: Annotated[bool, Query(description="false: run a deterministic job even when a "
                                                              "verified result of the same spec is known")] = True,
                     ) -> JobDescription:
        where = unencodable(body.spec.model_dump(mode="python"), "spec")
        if where is not None:  # JSON's \ud800-style escapes can smuggle in text no store can keep
            return error(422, "invalid_request", f"{where}: not valid Unicode text (a lone surrogate)", [where])
        size = len(body.spec.model_dump_json())
        refusal = quotas.submit(client, node.in_flight(client), size) or quotas.store_context(client, size)
        if refusal is not None:
            return refused(refusal)
        with quotas.reserve(client, size) as counted:  # from the check (no await since) until the requester counts it
            job, created = await requester().submit(body.spec, client, idempotency_key, use_cache=cache,
                                                    counted=counted)
        if not created:
            response.status_code = 200
        return await requester().describe(job.id)

    @router.get("/v1/jobs", response_model=JobList, tags=["jobs"], summary="List your jobs, newest first",
                responses={403: error_doc("all=true: a node lists only the jobs of the client that asks")})
    async def list_jobs(client: Client, state: JobState | None = None,
                        selector: Annotated[str | None, Query(max_length=MAX_SELECTOR_CHARS, description=(
                            "only jobs whose selector contains this text, e.g. zone=eu: the jobs that asked "
                            "for nodes labelled so"))] = None,
                        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                        offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                        all: Annotated[bool, Query(description="must be false: other clients' jobs are "
                                                               "never listed")] = False) -> JobList:
        if all:
            raise StarletteHTTPException(403, "listing other clients' jobs is not allowed: "
                                              "a node lists only the jobs of the client that asks")
        jobs, total = await node.store.list_jobs(owner=client, state=state, limit=limit, offset=offset,
                                                 selector=selector)
        live = node.requester
        jobs = [(live.live_job(j.id, stored=j) or j) if live else j for j in jobs]
        return JobList(jobs=jobs, total=total)

    @router.get("/v1/jobs/{job_id}", response_model=JobDescription, tags=["jobs"], responses=ERR_404,
                summary="Describe a job (optionally waiting up to `wait` seconds for it to end)")
    async def describe(job_id: str, client: Client, request: Request,
                       wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0) -> JobDescription:
        job = await owned(job_id, client, shared=True)
        await wait_for_end(requester(), job_id, wait, job.state.is_terminal, quotas=quotas, client=client,
                           scope=request.scope)
        return await requester().describe(job_id)

    @router.post("/v1/jobs/{job_id}/cancel", response_model=JobDescription, tags=["jobs"], responses=ERR_404,
                 summary="Cancel a job (a no-op once it has ended)")
    async def cancel(job_id: str, client: Client) -> JobDescription:
        await owned(job_id, client)
        await requester().cancel(job_id)
        return await requester().describe(job_id)

    @router.get("/v1/jobs/{job_id}/events", tags=["jobs"], response_class=StreamingResponse,
                summary="The job's events as Server-Sent Events, ending with an `end` event",
                responses={**ERR_404, 200: {
                    "content": {"text/event-stream": {"schema": SSE_MESSAGE}},
                    "description": "one `id`/`event`/`data` message per event (data: an Event as JSON); after "
                                   "the job's last event, `event: end` with data {\"state\": ...}. Reconnect "
                                   "with Last-Event-ID to resume after the last id received."}})
    async def events(job_id: str, client: Client,
                     last_event_id: Annotated[str | None, Header(max_length=64)] = None) -> StreamingResponse:
        await owned(job_id, client, shared=True)
        return event_stream(node, job_id, resume_after(last_event_id), current_state, quotas, client)

    @router.get("/v1/jobs/{job_id}/logs", response_class=Response, tags=["jobs"],
                summary="The job's stdout or stderr; with follow=true, as it is written, ending when the job does",
                responses={**ERR_404, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                            "description": "the text from byte `offset` on: the result's once the "
                                                           "job has ended, else what its node has sent so far "
                                                           "(empty while the job has not run)"}})
    async def logs(job_id: str, client: Client,
                   stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout",
                   follow: bool = False,
                   offset: Annotated[int, Query(ge=0, le=MAX_OFFSET,
                                                description="bytes already received: resume after them")] = 0,
                   ) -> Response:
        if (await owned(job_id, client, shared=True)).state.is_terminal:
            result = _result_of(await requester().describe(job_id))
            return PlainTextResponse((getattr(result, stream) if result else "").encode()[offset:])
        if node.requester is None:
            raise StarletteHTTPException(404, "this node runs no requester")
        outputs = node.requester.outputs
        if not follow:
            return PlainTextResponse(outputs.read(job_id, stream, offset)[1])

        async def record() -> RunResult | None:
            return _result_of(await requester().describe(job_id))

        return counted_stream(follow_output(outputs, job_id, stream, offset, current_state, record), quotas, client,
                              media_type="text/plain; charset=utf-8")

    @router.get("/v1/jobs/{job_id}/results", tags=["jobs"], response_class=Response,
                summary="The job's results as a tar archive: stdout, stderr, exitCode",
                responses={404: error_doc("no such job (or not yours)"),
                           409: error_doc("the job has no results (error.code no_results): it has not finished, "
                                          "was cancelled, or failed before it ran"),
                           200: {"content": {"application/x-tar": {"schema": {"type": "string",
                                                                               "format": "binary"}}},
                                 "description": "the job's result files"}})
    async def results(job_id: str, client: Client) -> Response:
        await owned(job_id, client, shared=True)
        description = await requester().describe(job_id)
        result = _result_of(description)
        if result is None:
            return error(409, "no_results", f"job {job_id} has no results (state {description.job.state.value})")
        if description.job.results_removed_at is not None:
            return results_gone(node, f"job {job_id}", description.job.results_removed_at)
        return await result_tar(node, result)

    @router.post("/v1/jobs/{job_id}/shares", response_model=Share, tags=["jobs"],
                 responses={**ERR_404, 409: error_doc(f"the job already has {MAX_SHARES} readers")},
                 summary="Let another client key read this job: describe, events, logs and results, nothing else")
    async def share(job_id: str, body: ShareRequest, client: Client) -> Share:
        await owned(job_id, client)
        return await share_with(node, job_id, body.key)

    @router.post("/v1/contexts", tags=["jobs"], summary="Store a working directory (tar) to send with jobs",
                 response_model=ContextStored, status_code=201,
                 responses={413: error_doc("archive over the context limit"),
                            422: error_doc("not a usable tar archive")},
                 openapi_extra={"requestBody": {"required": True, "content": {"application/x-tar": {
                     "schema": {"type": "string", "format": "binary"}}}}})
    async def store_context(request: Request, client: Client) -> ContextStored:
        body = await request.body()
        refusal = quotas.store_context(client, len(body))
        if refusal is not None:
            return refused(refusal)
        cid = await _publish_context(node, body)
        await node.store.add_published([cid], time.time())  # unpinned after the node's retention, like results
        return ContextStored(cid=cid)

    return router


def _result_of(description: JobDescription) -> RunResult | None:
    return description.shown_result()


def _cannot_store(e: Exception) -> StarletteHTTPException:
    return StarletteHTTPException(503, f"this node cannot store the working directory now: {e}",
                                  headers={"Retry-After": "5"})


async def _publish_context(node: Node, body: bytes) -> str:
    from storage import StorageError, extract_tar

    if node.publisher is None:
        raise StarletteHTTPException(404, "this node stores no data")

    async def chunks():
        yield body

    work = node.config.data_dir / "uploads"
    await trio.to_thread.run_sync(lambda: work.mkdir(parents=True, exist_ok=True))
    target = work / f"ctx-{secrets.token_hex(8)}"
    try:
        try:
            await extract_tar(chunks(), target, max_bytes=MAX_CONTEXT_BODY, confine_links=True)  # see storage.registry
            await trio.to_thread.run_sync(check_depth, target)
        except StorageError as e:
            if not (e.retryable or isinstance(e.__cause__, OSError)):
                raise StarletteHTTPException(422, f"the working directory archive is unusable: {e}") from e
            raise _cannot_store(e) from e  # this node's disk (full, say), not the archive
        try:
            return await node.publisher.publish(target)
        except StorageError as e:  # Kubo away or full: the archive was fine
            raise _cannot_store(e) from e
    finally:
        await trio.to_thread.run_sync(remove_tree, target)
