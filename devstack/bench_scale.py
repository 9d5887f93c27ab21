"""How the network scales: the same run on a 3-node and an N-node noop devstack.

    python -m devstack.bench_scale --nodes 3 20 --jobs 1000

For each size: client submit->completed p50/p99 (10 submitters, ``--concurrency``), and the
messages per job counted by the nodes themselves (``/metrics``: direct requests sent, gossip
messages published and received), so growth with the node count shows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import trio

from devstack import bench
from devstack.stack import Devstack


def _total(snapshots: list[dict[str, float]], key: str) -> float:
    return sum(s.get(key, 0.0) for s in snapshots)


async def measure(nodes: int, jobs: int, concurrency: int, base_port: int) -> dict:
    base = Path(tempfile.mkdtemp(prefix=f"shoal-scale-{nodes}-"))
    async with Devstack(nodes, noop=True, base_dir=base, base_port=base_port, write_state=False) as stack:
        await trio.sleep(6.0)  # node info from every node reaches the requesters
        apis = [n.api for n in stack.nodes]
        before = [await trio.to_thread.run_sync(bench.counters, a) for a in apis]
        report = await bench.run(apis[:3], jobs=jobs, submitters=10, concurrency=concurrency, nodes=nodes)
        after = [await trio.to_thread.run_sync(bench.counters, a) for a in apis]

    def per_job(key: str) -> float:
        return round((_total(after, key) - _total(before, key)) / max(report.completed, 1), 2)

    return {"nodes": nodes, "completed": report.completed, "jobs": jobs,
            "p50_ms": round(report.latency_ms["p50"], 1), "p99_ms": round(report.latency_ms["p99"], 1),
            "jobs_per_second": round(report.jobs_per_second, 1),
            "requests_per_job": per_job('shoal_network_total{event="requests_sent"}'),
            "bids_per_job": per_job('shoal_requester_total{event="bids"}'),
            "gossip_published_per_job": per_job('shoal_network_total{event="gossip_published"}'),
            "gossip_received_per_job": per_job('shoal_network_total{event="gossip_received"}')}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[3, 20])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=16000)
    args = parser.parse_args()
    results = [trio.run(measure, n, args.jobs, args.concurrency, args.base_port) for n in args.nodes]
    for r in results:
        print(f"{r['nodes']:>3} nodes: {r['completed']}/{r['jobs']} completed, p50 {r['p50_ms']} ms, "
              f"p99 {r['p99_ms']} ms, {r['jobs_per_second']} jobs/s; per job: {r['requests_per_job']} direct "
              f"requests, {r['bids_per_job']} bids, {r['gossip_published_per_job']} gossip published, "
              f"{r['gossip_received_per_job']} gossip deliveries")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
