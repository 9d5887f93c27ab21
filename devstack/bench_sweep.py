"""Sweep benchmark: one sweep of N noop indexes vs the same work as N separate jobs.

    python -m devstack.bench_sweep --indexes 10000 --jobs 10000

Starts a noop devstack, submits one sweep (timing how long the node takes to accept it),
waits for every index to complete as a waiting client does (``Client.map``, ``shoal run --param``),
asking for the sweep's description every 0.25 s, then times what such a client asks again and again
once it has ended: the description, and a page of 1,000 indexes (the median of 20 of each). Then it
runs ``--jobs`` separate jobs through ``shoal bench``'s throughput method (100 submitters,
concurrency 1) for comparison. Prints a summary and JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import trio

from devstack import bench
from devstack.stack import Devstack


async def measure(indexes: int, jobs: int, nodes: int, base_port: int) -> dict:
    from shoal import Client

    async with Devstack(nodes, noop=True, base_dir=Path(tempfile.mkdtemp(prefix="shoal-bench-sweep-")),
                        base_port=base_port, write_state=False) as stack:
        api = stack.nodes[0].api
        await trio.sleep(2.0)  # node info gossip: the requester knows every node before the grants

        def sweep() -> dict:
            with Client(api, timeout=120) as client:
                spec = {"job": {"engine": {"name": "noop"}}, "grid": {"i": [str(i) for i in range(indexes)]}}
                started = time.perf_counter()
                d = client.submit_sweep(spec)
                accepted = time.perf_counter() - started
                live_ms = []  # polls as a waiting client makes them (Client.map, shoal run --param): its description
                while not d.sweep.state.is_terminal:
                    time.sleep(0.25)
                    asked = time.perf_counter()
                    d = client.describe_sweep(d.sweep.id)
                    live_ms.append((time.perf_counter() - asked) * 1000)
                done = time.perf_counter() - started
                return {"indexes": indexes, "accepted_s": round(accepted, 3), "completed_s": round(done, 2),
                        "state": d.sweep.state.value,
                        "counts": {k.value: v for k, v in d.sweep.counts.items()},
                        "indexes_per_second": round(indexes / done, 1),
                        "live_describe_ms": round(statistics.median(live_ms), 1) if live_ms else None,
                        "describe_ms": median_ms(lambda: client.describe_sweep(d.sweep.id)),
                        "indexes_page_ms": median_ms(lambda: client.sweep_indexes(d.sweep.id, first=indexes // 2,
                                                                                  limit=1000))}

        result = {"sweep": await trio.to_thread.run_sync(sweep)}
        if jobs:
            report = await bench.run([n.api for n in stack.nodes], jobs=jobs, submitters=100, concurrency=1,
                                     nodes=nodes)
            result["jobs"] = {"jobs": jobs, "completed": report.completed, "completed_s": round(report.wall_seconds, 2),
                              "jobs_per_second": round(report.jobs_per_second, 1)}
        return result


def median_ms(call: Callable[[], object], rounds: int = 20) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return round(statistics.median(times), 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indexes", type=int, default=10_000)
    parser.add_argument("--jobs", type=int, default=10_000, help="separate jobs to compare with (0: none)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=16600)
    args = parser.parse_args()
    result = trio.run(measure, args.indexes, args.jobs, args.nodes, args.base_port)
    s = result["sweep"]
    print(f"sweep of {s['indexes']} noop indexes on {args.nodes} nodes: accepted in {s['accepted_s'] * 1000:.0f} ms, "
          f"{s['state']} in {s['completed_s']:.1f} s ({s['indexes_per_second']:.0f} indexes/s) {s['counts']}; "
          f"a describe took {s['live_describe_ms']} ms while it ran; then {s['describe_ms']} ms, and a page of "
          f"1,000 indexes {s['indexes_page_ms']} ms (medians)")
    if "jobs" in result:
        j = result["jobs"]
        print(f"{j['jobs']} separate jobs (100 submitters): {j['completed']} completed in {j['completed_s']:.1f} s "
              f"({j['jobs_per_second']:.1f} jobs/s)")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
