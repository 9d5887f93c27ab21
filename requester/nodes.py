"""The compute nodes a requester knows of, from their gossiped ``NodeInfo``: bounded in size and time.

Any peer can gossip node info under as many identities as it likes, so the table holds at most
``max_size`` nodes and forgets a node not heard from for ``ttl`` seconds. A full table makes room by
dropping the node it learnt of last: nodes it has known longer stay, so a flood of fresh identities
churns only among themselves. (It once dropped the least recently heard node: a flood pushed every
honest node out between two of their announcements, and jobs failed for want of an engine.) Node info
itself is at most ``node.dispatch.MAX_NODE_INFO_BYTES`` on the wire, which bounds the table's memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from jobs.messages import NodeInfo

MAX_NODES = 4096  # nodes remembered at once: a few MB at most


@dataclass(frozen=True)
class NodeTableStatistics:
    size: int
    evicted: int  # dropped to make room for another node (the table was full)
    expired: int  # forgotten after ``ttl`` seconds without news


class NodeTable:
    def __init__(self, *, ttl: float, max_size: int = MAX_NODES) -> None:
        if max_size < 1:
            raise ValueError("max_size must be positive")
        self.ttl = ttl
        self.max_size = max_size
        self._nodes: dict[str, tuple[NodeInfo, float]] = {}  # (info, last heard), in the order first heard
        self._evicted = 0
        self._expired = 0

    def __len__(self) -> int:
        return len(self._nodes)

    def update(self, info: NodeInfo, now: float) -> bool:
        """Record ``info`` as heard at ``now``; True if the node is new to us or restarted (a new boot)."""
        known = self._nodes.get(info.peer_id)
        if known is None and len(self._nodes) >= self.max_size:
            del self._nodes[next(reversed(self._nodes))]  # the newest: the one known for the shortest time
            self._evicted += 1
        self._nodes[info.peer_id] = (info, now)  # a node heard again keeps its place
        return known is None or known[0].boot != info.boot

    def get(self, peer: str) -> NodeInfo | None:
        """The last node info heard from ``peer`` (expired or not), if it is still in the table."""
        known = self._nodes.get(peer)
        return known[0] if known is not None else None

    def known(self, now: float) -> list[NodeInfo]:
        """Every node heard from within ``ttl`` of ``now``; the others are forgotten."""
        stale = [peer for peer, (_, heard) in self._nodes.items() if now - heard > self.ttl]
        for peer in stale:
            del self._nodes[peer]
        self._expired += len(stale)
        return [info for info, _ in self._nodes.values()]

    def statistics(self) -> NodeTableStatistics:
        return NodeTableStatistics(size=len(self._nodes), evicted=self._evicted, expired=self._expired)
