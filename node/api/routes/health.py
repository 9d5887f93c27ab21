"""The unsigned routes: version, liveness, readiness and Prometheus metrics."""

import time
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel

from node.api.auth import RequestVerifier
from node.api.errors import error, error_doc
from node.api.metrics import JobCounts, api_metrics, node_metrics
from node.api.parts import Node
from node.api.quotas import Quotas
from node.config import VERSION


class VersionInfo(BaseModel):
    version: str


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    peers: int
    uptime: float


def health_router(node: Node, verifier: RequestVerifier, quotas: Quotas, started: float) -> APIRouter:
    router = APIRouter()
    job_counts = JobCounts(node.store)

    @router.get("/v1/version", response_model=VersionInfo, tags=["health"], summary="The node's version (unsigned)")
    async def version() -> VersionInfo:
        return VersionInfo(version=VERSION)

    @router.get("/healthz", response_model=Health, tags=["health"], summary="Liveness (unsigned)")
    async def healthz() -> Health:
        return Health(status="ok")

    @router.get("/readyz", response_model=Readiness, tags=["health"],
                summary="Readiness (unsigned): served once store, network, roles and API all run",
                responses={503: error_doc("the node cannot store results (its Kubo does not answer), so it "
                                          "offers no engine: the message says why")})
    async def readyz() -> Readiness | JSONResponse:
        if node.compute is not None and (problem := node.compute.storage_problem) is not None:
            return error(503, "unavailable", f"results cannot be stored, so no engine is offered: {problem}")
        return Readiness(status="ready", peers=len(node.network.connected_peers()), uptime=time.time() - started)

    @router.get("/metrics", response_class=PlainTextResponse, tags=["health"], summary="Prometheus metrics (unsigned)",
                responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}},
                                 "description": "Prometheus text format 0.0.4"}})
    async def metrics() -> PlainTextResponse:
        text = await node_metrics(node, job_counts) + api_metrics(verifier, quotas)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return router
