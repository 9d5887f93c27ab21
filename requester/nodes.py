"""The compute nodes a requester knows of, from their gossiped ``NodeInfo``: bounded in size and time.

Any peer can gossip node info under as many identities as it likes, so the table holds at most
``max_size`` nodes and forgets a node not heard from for ``ttl`` seconds. A full table makes room by
dropping the node it learnt of last among those not ``vouched`` for (a node whose results the requester
accepted is): nodes it has known longer stay, so a flood of fresh identities churns only among itself
and cannot push honest nodes out between their announcements. While it churns, the table is ``crowded``:
what it holds does not prove that no node could run a job, and the requester fails none for that. Node
info is at most ``node.dispatch.MAX_NODE_INFO_BYTES`` on the wire, which bounds the table's memory.
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
        self._nodes: dict[str, tuple[NodeInfo, float, bool]] = {}  # (info, last heard, vouched), first heard first
        self._evicted = 0
        self._expired = 0
        self._last_eviction = float("-inf")

    def __len__(self) -> int:
        return len(self._nodes)

    def update(self, info: NodeInfo, now: float, *, vouched: bool = False) -> bool:
        """Record ``info`` as heard at ``now``; True if the node is new to us or restarted (a new boot)."""
        known = self._nodes.get(info.peer_id)
        if known is None and len(self._nodes) >= self.max_size:
            self._last_eviction = now
            self._evicted += 1
            # the newest not vouched for: the one known for the shortest time
            victim = next((peer for peer in reversed(self._nodes) if not self._nodes[peer][2]), None)
            if victim is None and not vouched:
                return False  # every node held is vouched for: the newcomer waits for room
            del self._nodes[victim if victim is not None else next(reversed(self._nodes))]
        self._nodes[info.peer_id] = (info, now, vouched)  # a node heard again keeps its place
        return known is None or known[0].boot != info.boot

    def crowded(self, now: float) -> bool:
        """Whether the table was full within ``ttl`` of ``now``: it may have dropped a node that could run a job."""
        return now - self._last_eviction <= self.ttl

    def get(self, peer: str) -> NodeInfo | None:
        """The last node info heard from ``peer`` (expired or not), if it is still in the table."""
        return self._nodes[peer][0] if peer in self._nodes else None

    def known(self, now: float) -> list[NodeInfo]:
        """Every node heard from within ``ttl`` of ``now``; the others are forgotten."""
        stale = [peer for peer, (_, heard, _) in self._nodes.items() if now - heard > self.ttl]
        for peer in stale:
            del self._nodes[peer]
        self._expired += len(stale)
        return [info for info, _, _ in self._nodes.values()]

    def statistics(self) -> NodeTableStatistics:
        return NodeTableStatistics(size=len(self._nodes), evicted=self._evicted, expired=self._expired)
