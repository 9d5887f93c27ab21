"""``/metrics``: the node's counters and gauges in Prometheus text format 0.0.4."""

import math
from dataclasses import asdict
from typing import Protocol

import trio

from node.api.auth import RequestVerifier
from node.api.parts import Node
from node.api.quotas import Quotas

NETWORK_GAUGES = ("connected_peers", "open_streams", "gossip_cached", "gossip_penalised_peers", "gossip_blocked_peers")
"""``NetworkStatistics`` fields that are levels now, not counts since start."""


COUNTS_MAX_AGE = 5.0
"""Seconds a count of jobs by state is served again. It reads every job row, and /metrics takes no signature: keyless
scrapes in a loop held the store's one reader (0.16 s each at 100,000 jobs) and a member's describe took 3 s."""


class _Counting(Protocol):
    async def count_jobs_by_state(self) -> dict[str, int]: ...


class JobCounts:
    """Jobs by state, counted at most once per COUNTS_MAX_AGE however many ask at once."""

    def __init__(self, store: _Counting) -> None:
        self._store = store
        self._lock = trio.Lock()
        self._at, self._counts = -math.inf, {}

    async def get(self) -> dict[str, int]:
        async with self._lock:
            if trio.current_time() - self._at >= COUNTS_MAX_AGE:
                self._counts = await self._store.count_jobs_by_state()
                self._at = trio.current_time()
            return self._counts


async def node_metrics(node: Node, job_counts: JobCounts) -> str:
    """Jobs by state (``job_counts``), the roles' counters, capacity, dispatch and network statistics."""
    lines = ["# TYPE shoal_jobs gauge"]
    for state, n in sorted((await job_counts.get()).items()):
        lines.append(f'shoal_jobs{{state="{state}"}} {n}')
    if node.requester is not None:
        lines.append("# TYPE shoal_requester_total counter")
        for name, n in node.requester.counters.items():
            lines.append(f'shoal_requester_total{{event="{name}"}} {n}')
        lat = sorted(node.requester.latencies)
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
    # Work waiting for capacity, what the cluster's autoscaler scales on: jobs short of nodes and
    # sweep indexes no node has claimed (this node as requester), offers in the backlog (as compute).
    lines.append("# TYPE shoal_jobs_waiting gauge")
    lines.append(f"shoal_jobs_waiting {node.requester.waiting() if node.requester is not None else 0}")
    lines.append("# TYPE shoal_sweep_indexes_waiting gauge")
    lines.append(f"shoal_sweep_indexes_waiting {node.sweeps.pending_indexes() if node.sweeps is not None else 0}")
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
            lines.append(f'shoal_capacity_gpu{{kind="{kind}"}} {res.gpu}')
        lines.append("# TYPE shoal_backlog gauge")
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


def api_metrics(verifier: RequestVerifier, quotas: Quotas) -> str:
    """What the API itself refused (quotas, replayed or stale nonces) and what it holds open."""
    lines = ["# TYPE shoal_api_refused_total counter"]
    for name, n in quotas.refused.items():
        lines.append(f'shoal_api_refused_total{{quota="{name}"}} {n}')
    for name, n in verifier.nonces.refused.items():
        lines.append(f'shoal_api_refused_total{{quota="nonces",reason="{name}"}} {n}')
    lines.append("# TYPE shoal_api gauge")
    lines.append(f'shoal_api{{value="event_streams"}} {quotas.streams()}')
    lines.append(f'shoal_api{{value="nonces"}} {len(verifier.nonces)}')
    return "\n".join(lines) + "\n"
