"""The sweeps' routes: ``/v1/sweeps/...``. Same rules as the jobs' routes (``node.api.routes.jobs``):
signed, visible only to their owner (and those it was shared with), errors from one mapping."""

import contextlib
import time
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.responses import PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import JobState
from jobs.sweep import IndexRecord, Sweep, SweepSpec
from jobs.views import MAX_INDEX_PAGE, MAX_PAGE, IndexList, Share, ShareRequest, SweepDescription, SweepList
from jobs.views import SweepSubmitRequest as _SweepSubmitRequest
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
from node.api.errors import SIGNED_ERRORS, error, error_doc, refused
from node.api.middleware import client_id
from node.api.parts import Node, sweeps_of
from node.api.quotas import Quotas
from node.api.streams import event_stream, resume_after
from node.retention import index_results_removed_at
from requester import UnknownJob

_ERR_404 = {404: error_doc("no such sweep, or it belongs to another client")}

Client = Annotated[str, Depends(client_id)]


class SweepSubmitRequest(UntrustedBody, _SweepSubmitRequest):
    """``jobs.views.SweepSubmitRequest`` for the API (see ``UntrustedBody``)."""


def sweeps_router(node: Node, quotas: Quotas) -> APIRouter:
    router = APIRouter(responses=SIGNED_ERRORS)

    def service():
        return sweeps_of(node)

    async def owned(sweep_id: str, client: str, *, shared: bool = False) -> Sweep:
        """The sweep if ``client`` owns it, or (``shared``: the read routes) it was shared with ``client``. Not
        its description: that reads every index (a map polls its indexes and its state many times a minute)."""
        sweep = await service().get(sweep_id)
        await visible_to(client, sweep_id, sweep.owner, node, shared=shared)
        return sweep

    async def index_of(sweep_id: str, index: int, client: str) -> IndexRecord:
        spec = (await owned(sweep_id, client, shared=True)).spec
        records, _ = await node.store.sweep_indexes(sweep_id, first=index, limit=1)
        if not records or records[0].index != index:
            raise StarletteHTTPException(404, f"sweep {sweep_id} has no index {index}")
        return with_params(records[0], spec)

    async def current_state(sweep_id: str) -> JobState | None:
        try:
            return (await service().get(sweep_id)).state
        except UnknownJob:
            return None

    @router.post("/v1/sweeps", status_code=201, response_model=SweepDescription, tags=["sweeps"],
                 summary="Submit a sweep: one request for many indexed jobs",
                 responses={200: {"model": SweepDescription,
                                  "description": "the sweep made earlier with this Idempotency-Key (reattach)"},
                            409: error_doc("the Idempotency-Key was used with another spec")})
    async def submit(body: SweepSubmitRequest, client: Client, response: Response,
                     idempotency_key: Annotated[str | None, Header(max_length=128)] = None) -> SweepDescription:
        where = unencodable(body.spec.model_dump(mode="python"), "spec")
        if where is not None:
            return error(422, "invalid_request", f"{where}: not valid Unicode text (a lone surrogate)", [where])
        size = len(body.spec.model_dump_json())  # a sweep counts as one job in flight; its indexes have a quota
        refusal = quotas.submit(client, node.in_flight(client), size) \
            or quotas.make_indexes(client, body.spec.count) or quotas.store_context(client, size)
        if refusal is not None:
            return refused(refusal)
        with quotas.reserve(client, size) as counted:  # from the check (no await since) until the service counts it
            sweep, created = await service().submit(body.spec, client, idempotency_key, counted=counted)
        if not created:
            response.status_code = 200
        return await service().describe(sweep.id)

    @router.get("/v1/sweeps", response_model=SweepList, tags=["sweeps"], summary="List your sweeps, newest first")
    async def list_sweeps(client: Client, limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
                          offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0) -> SweepList:
        sweeps, total = await node.store.list_sweeps(owner=client, limit=limit, offset=offset)
        return SweepList(sweeps=[await service().get(s.id) for s in sweeps], total=total)

    @router.get("/v1/sweeps/{sweep_id}", response_model=SweepDescription, tags=["sweeps"], responses=_ERR_404,
                summary="Describe a sweep: counts and ranges of indexes per state (optionally waiting for its end)")
    async def describe(sweep_id: str, client: Client, request: Request,
                       wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0) -> SweepDescription:
        sweep = await owned(sweep_id, client, shared=True)
        await wait_for_end(service(), sweep_id, wait, sweep.state.is_terminal, quotas=quotas, client=client,
                           scope=request.scope)
        return await service().describe(sweep_id)

    @router.get("/v1/sweeps/{sweep_id}/indexes", response_model=IndexList, tags=["sweeps"], responses=_ERR_404,
                summary="Index records in index order from `first` (optionally only one state)")
    async def indexes(sweep_id: str, client: Client, state: JobState | None = None,
                      first: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
                      limit: Annotated[int, Query(ge=1, le=MAX_INDEX_PAGE)] = 1000) -> IndexList:
        spec = (await owned(sweep_id, client, shared=True)).spec
        records, total = await node.store.sweep_indexes(sweep_id, state=state, first=first, limit=limit)
        return IndexList(indexes=[with_params(r, spec) for r in records], total=total)

    @router.get("/v1/sweeps/{sweep_id}/indexes/{index}", response_model=IndexRecord, tags=["sweeps"],
                responses=_ERR_404, summary="One index: its state, node, reason and result")
    async def index(sweep_id: str, index: Annotated[int, Path(ge=0, le=MAX_OFFSET)],
                    client: Client) -> IndexRecord:
        return await index_of(sweep_id, index, client)

    @router.get("/v1/sweeps/{sweep_id}/indexes/{index}/logs", response_class=Response, tags=["sweeps"],
                responses={**_ERR_404, 200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                             "description": "the text (empty while the index has not run)"}},
                summary="One index's stdout or stderr")
    async def logs(sweep_id: str, index: Annotated[int, Path(ge=0, le=MAX_OFFSET)], client: Client,
                   stream: Annotated[Literal["stdout", "stderr"], Query()] = "stdout") -> Response:
        record = await index_of(sweep_id, index, client)
        return PlainTextResponse(getattr(record.result, stream) if record.result else "")

    @router.get("/v1/sweeps/{sweep_id}/indexes/{index}/results", tags=["sweeps"], response_class=Response,
                responses={404: error_doc("no such sweep or index"),
                           409: error_doc("the index has no results (error.code no_results): it has not finished, "
                                          "was cancelled, or failed before it ran"),
                           410: error_doc("the node's retention removed the index's results (error.code gone)"),
                           200: {"content": {"application/x-tar": {"schema": {"type": "string",
                                                                               "format": "binary"}}},
                                 "description": "the index's result files"}},
                summary="One index's results as a tar archive")
    async def results(sweep_id: str, index: Annotated[int, Path(ge=0, le=MAX_OFFSET)],
                      client: Client) -> Response:
        record = await index_of(sweep_id, index, client)
        if record.result is None:
            return error(409, "no_results", f"index {index} of sweep {sweep_id} has no results "
                                            f"(state {record.state.value})")
        removed_at = index_results_removed_at(record, node.config.retention, time.time())
        if removed_at is not None:
            return results_gone(node, f"index {index} of sweep {sweep_id}", removed_at)
        return await result_tar(node, record.result)

    @router.post("/v1/sweeps/{sweep_id}/retry", response_model=SweepDescription, tags=["sweeps"],
                 responses=_ERR_404, summary="Run the failed indexes again (a failed sweep runs again)")
    async def retry(sweep_id: str, client: Client) -> SweepDescription:
        sweep = await owned(sweep_id, client)
        reservation: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
        if sweep.state in (JobState.FAILED, JobState.CANCELLED):
            # made live again: a submit to the quotas (20 sweeps cancelled and retried were 20 live, with a quota of 5)
            size = len(sweep.spec.model_dump_json())
            refusal = quotas.submit(client, node.in_flight(client), size)
            if refusal is not None:
                return refused(refusal)
            reservation = quotas.reserve(client, size)
        with reservation:
            await service().retry(sweep_id)
        return await service().describe(sweep_id)

    @router.post("/v1/sweeps/{sweep_id}/cancel", response_model=SweepDescription, tags=["sweeps"],
                 responses=_ERR_404, summary="Cancel a sweep: what has not finished is stopped everywhere")
    async def cancel(sweep_id: str, client: Client) -> SweepDescription:
        await owned(sweep_id, client)
        await service().cancel(sweep_id)
        return await service().describe(sweep_id)

    @router.post("/v1/sweeps/{sweep_id}/shares", response_model=Share, tags=["sweeps"],
                 responses={**_ERR_404, 409: error_doc(f"the sweep already has {MAX_SHARES} readers")},
                 summary="Let another client key read this sweep: describe, indexes, logs, results and events")
    async def share(sweep_id: str, body: ShareRequest, client: Client) -> Share:
        await owned(sweep_id, client)
        return await share_with(node, sweep_id, body.key)

    @router.get("/v1/sweeps/{sweep_id}/events", tags=["sweeps"], response_class=StreamingResponse,
                responses=_ERR_404, summary="The sweep's events as Server-Sent Events (like a job's)")
    async def events(sweep_id: str, client: Client,
                     last_event_id: Annotated[str | None, Header(max_length=64)] = None) -> StreamingResponse:
        await owned(sweep_id, client, shared=True)
        return event_stream(node, sweep_id, resume_after(last_event_id), current_state, quotas, client)

    return router


def with_params(record: IndexRecord, spec: SweepSpec) -> IndexRecord:
    """``record`` with its index's parameters: a quant's table of results needs them beside each outcome."""
    return record.model_copy(update={"params": spec.values(record.index)})
