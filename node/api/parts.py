"""What the API reads: the running parts of a node, handed to ``create_app`` by the daemon that
started them (the API never imports the daemon)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from starlette.exceptions import HTTPException as StarletteHTTPException

from requester.common import InFlight

if TYPE_CHECKING:
    from compute import ComputeService
    from node.config import NodeConfig
    from node.dispatch import Dispatcher
    from node.net import Network
    from node.store import Store
    from requester import RequesterService
    from requester.sweeps import SweepService
    from storage import Publisher


@dataclass
class Node:
    """The running parts of a node, for the API to read."""

    config: NodeConfig
    network: Network
    store: Store
    requester: RequesterService | None
    compute: ComputeService | None
    dispatcher: Dispatcher
    publisher: Publisher | None = None
    sweeps: SweepService | None = None

    @property
    def peer_id(self) -> str:
        return self.network.peer_id

    def in_flight(self, client: str) -> InFlight:
        """``client``'s live jobs and sweeps here (the in-flight quotas count both)."""
        jobs = self.requester.in_flight(client) if self.requester else InFlight()
        return jobs + (self.sweeps.in_flight(client) if self.sweeps else InFlight())


def requester_of(node: Node) -> RequesterService:
    """The node's requester, or 404 for a route that needs one on a node without it."""
    if node.requester is None:
        raise StarletteHTTPException(404, "this node does not take jobs (requester role off)")
    return node.requester


def sweeps_of(node: Node) -> SweepService:
    """The node's sweep service, or 404 for a route that needs one on a node without it."""
    if node.sweeps is None:
        raise StarletteHTTPException(404, "this node does not take sweeps (requester role off)")
    return node.sweeps
