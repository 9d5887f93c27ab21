"""This node and the network it sees: ``/v1/node``, ``/v1/peers``, ``/v1/nodes`` (signed)."""

from typing import Annotated

import trio
from fastapi import APIRouter, Depends

from jobs.views import Capacity, NodeList, NodeStatus, PeerList, Reputation
from node.api.errors import SIGNED_ERRORS, error_doc
from node.api.middleware import client_id
from node.api.parts import Node, requester_of
from node.config import VERSION
from requester.trust import QUARANTINE_SECONDS

Client = Annotated[str, Depends(client_id)]


def nodes_router(node: Node) -> APIRouter:
    router = APIRouter(responses=SIGNED_ERRORS)

    @router.get("/v1/node", response_model=NodeStatus, tags=["node"],
                summary="This node: peer id, addresses, roles, engines, capacity")
    async def node_status(client: Client) -> NodeStatus:
        roles = [r for r, on in (("requester", node.requester), ("compute", node.compute)) if on is not None]
        compute = node.compute
        info = compute.node_info() if compute else None
        zero = {"cpu": 0, "memory": 0, "disk": 0}
        capacity = Capacity(total=info.total, free=info.free, max_per_job=info.max_per_job) if info else \
            Capacity(total=zero, free=zero, max_per_job=zero)
        return NodeStatus(peer_id=node.network.peer_id, addrs=node.network.addrs(), roles=roles,
                          engines=info.engines if info else [], labels=info.labels if info else {}, capacity=capacity,
                          unavailable_engines=compute.executors.problems() if compute else {},
                          containment_notes=await trio.to_thread.run_sync(compute.executors.containment_notes)
                          if compute else {},  # the first call checks what the node can do: blocking
                          running=info.running if info else 0, backlog=info.backlog if info else 0, version=VERSION)

    @router.get("/v1/peers", response_model=PeerList, tags=["node"], summary="Peers this node is connected to")
    async def peers(client: Client) -> PeerList:
        return PeerList(peers=node.network.connected_peers())

    @router.get("/v1/nodes", response_model=NodeList, tags=["node"],
                responses={404: error_doc("this node does not take jobs (requester role off)")},
                summary="Compute nodes this node knows, with their engines and capacity")
    async def nodes(client: Client) -> NodeList:
        r = requester_of(node)
        reputation = {peer: Reputation(accepted=s.accepted, rejected=s.rejected,
                                       quarantined=(held := r.quarantined(peer, verified=True)),
                                       quarantined_until=s.rejected_at + QUARANTINE_SECONDS if held else None,
                                       probation=r.on_probation(peer))
                      for peer, s in r.reputation.items()}
        return NodeList(nodes=r.known_nodes(), reputation=reputation)

    return router
