"""What jobs waiting for room cost the nodes: CPU and peak RSS of each node of a noop devstack.

    python -m benchmarks.waiting [--jobs 5000] [--settle 300] [--seconds 60] [--nodes 3] [--base-port 43000]

Submits ``--jobs`` noop jobs that each hold a slot for an hour, so that all but the nodes' slots wait,
lets ``--settle`` seconds pass (the announcements' backoff reaches its ceiling: the steady state), then
measures each node's CPU over ``--seconds``. Every job is
submitted to node 0 (the requester); the others only bid. Prints one line per node, then the
requester's announcement and drop counters.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import httpx
import trio

from devstack.bench import cpu_and_peak
from devstack.stack import Devstack
from jobs import JobSpec

SUBMITTERS = 16
COUNTERS = ('event="announcements"', "shoal_jobs_waiting ", 'event="gossip_dropped"', 'event="gossip_unsent"')


async def measure(jobs: int, settle: float, seconds: float, nodes: int, base_port: int, base_dir: Path) -> None:
    from shoal import AsyncClient

    spec = JobSpec.model_validate({"engine": {"name": "noop", "delay": 3600}, "timeout": 7200, "cache": False})
    async with Devstack(nodes, noop=True, base_dir=base_dir, base_port=base_port, write_state=False) as stack:
        api, numbers, started = stack.nodes[0].api, iter(range(jobs)), time.monotonic()

        async def submitter() -> None:
            async with AsyncClient(api, timeout=60) as client:
                for n in numbers:
                    await client.submit(spec, idempotency_key=f"waiting-{n}")

        async with trio.open_nursery() as nursery:
            for _ in range(SUBMITTERS):
                nursery.start_soon(submitter)
        print(f"submitted {jobs} jobs in {time.monotonic() - started:.0f} s", flush=True)
        await trio.sleep(settle)
        before = {n.index: cpu_and_peak(n.pid)[0] for n in stack.nodes}
        await trio.sleep(seconds)
        for n in stack.nodes:
            cpu, peak = cpu_and_peak(n.pid)
            print(f"node-{n.index}: CPU {100 * (cpu - before[n.index]) / seconds:.1f} %, peak RSS {peak:.0f} MB")
        metrics = (await trio.to_thread.run_sync(lambda: httpx.get(f"{api}/metrics", timeout=10))).text
        print("\n".join(line for line in metrics.splitlines() if any(c in line for c in COUNTERS)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=5000)
    parser.add_argument("--settle", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=43000)
    args = parser.parse_args()
    base_dir = Path(tempfile.mkdtemp(prefix="shoal-waiting-"))
    try:
        trio.run(measure, args.jobs, args.settle, args.seconds, args.nodes, args.base_port, base_dir)
    finally:
        shutil.rmtree(base_dir, ignore_errors=True)


if __name__ == "__main__":
    main()
