"""Shoal's network transport: the only package that imports libp2p.

Public surface: ``Network`` (direct request/reply on ``/shoal/rpc/1.0.0`` plus
GossipSub on one topic), ``NetworkStatistics`` and the errors below. Everything
crossing it is ``bytes`` and base58 peer-id strings. A request that gets no reply raises
``jobs.Unreachable`` (dial or stream failed) or ``jobs.PeerTimeout`` (no reply in time).
"""

from node.net.errors import NetworkError, RemoteProtocolError
from node.net.host import Network, NetworkStatistics

__all__ = [
    "Network",
    "NetworkError",
    "NetworkStatistics",
    "RemoteProtocolError",
]
