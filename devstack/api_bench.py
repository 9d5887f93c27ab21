"""API latency: p50/p99 of submit and describe, measured by a client of a 3-node noop devstack.

    python -m devstack.api_bench                      # fresh devstack, 500 of each, 1 client
    python -m devstack.api_bench --requests 1000 --clients 10
    python -m devstack.api_bench --api http://127.0.0.1:8700   # a running node instead

Each request is timed around the SDK call, so a figure includes signing the request, the
node verifying it, and parsing the answer: what a user of ``shoal.AsyncClient`` waits for.
Submits bypass the result cache (every submit starts a real noop job on the network); the
describes come after every submitted job has finished, and read those jobs back.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import trio

SPEC = {"engine": {"name": "noop"}}
WARMUP = 20  # requests of each kind before measuring: connections, caches, the JIT-less first calls


@dataclass
class Latency:
    operation: str
    requests: int
    clients: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    per_second: float

    def line(self) -> str:
        return (f"{self.operation:<30} p50 {self.p50_ms:7.2f} ms   p99 {self.p99_ms:7.2f} ms   "
                f"p90 {self.p90_ms:7.2f}   mean {self.mean_ms:7.2f}   max {self.max_ms:7.2f}   "
                f"{self.per_second:7.1f} req/s")  # fmt: skip


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..1) of a non-empty list."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def summarize(operation: str, seconds: list[float], clients: int, wall: float) -> Latency:
    ms = [s * 1000 for s in seconds]
    return Latency(operation, len(ms), clients, percentile(ms, 0.5), percentile(ms, 0.9), percentile(ms, 0.99),
                   statistics.fmean(ms), max(ms), len(ms) / wall)  # fmt: skip


async def _timed(clients: int, requests: int, call: Callable[[int], Awaitable[object]]) -> tuple[list[float], float]:
    """``requests`` calls spread over ``clients`` concurrent tasks; each call's latency, and the wall time."""
    latencies: list[float] = []
    counter = iter(range(requests))

    async def worker() -> None:
        for i in counter:
            started = time.perf_counter()
            await call(i)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(clients):
            nursery.start_soon(worker)
    return latencies, time.perf_counter() - began


async def measure(api: str, *, requests: int, clients: int) -> list[Latency]:
    from shoal import AsyncClient, ClientKey

    key = ClientKey.generate()  # a throwaway identity: nothing written to ~/.shoal
    async with AsyncClient(api, key=key, timeout=60) as client:
        for _ in range(WARMUP):
            job = await client.submit(SPEC, cache=False)
            await client.describe(job.job.id)
        ids: list[str] = []

        async def submit(_: int) -> None:
            ids.append((await client.submit(SPEC, cache=False)).job.id)

        submit_times, submit_wall = await _timed(clients, requests, submit)
        with trio.fail_after(300):  # let the network finish the jobs before reading them back
            for job_id in ids:
                await client.wait(job_id, timeout=300, poll=5)

        async def describe(i: int) -> None:
            await client.describe(ids[i % len(ids)])

        describe_times, describe_wall = await _timed(clients, requests, describe)
    return [summarize("submit   POST /v1/jobs", submit_times, clients, submit_wall),
            summarize("describe GET /v1/jobs/{id}", describe_times, clients, describe_wall)]  # fmt: skip


async def on_devstack(*, nodes: int, base_port: int, base_dir: Path, requests: int, clients: int) -> list[Latency]:
    from devstack.stack import Devstack

    async with Devstack(nodes, noop=True, base_dir=base_dir, base_port=base_port, write_state=False) as stack:
        return await measure(stack.nodes[0].api, requests=requests, clients=clients)


def main(argv: list[str] | None = None) -> list[Latency]:
    parser = argparse.ArgumentParser(prog="python -m devstack.api_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=500, help="of each kind (default 500)")
    parser.add_argument("--clients", type=int, default=1, help="concurrent callers sharing one client (default 1)")
    parser.add_argument("--nodes", type=int, default=3, help="devstack size (default 3)")
    parser.add_argument("--base-port", type=int, default=19450, help="devstack's first API port (default 19450)")
    parser.add_argument("--api", help="measure this node instead of starting a devstack")
    parser.add_argument("--json", action="store_true", help="print JSON only")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.clients < 1:
        parser.error("--requests and --clients must be at least 1")

    if args.api:
        where = args.api
        results = trio.run(lambda: measure(args.api, requests=args.requests, clients=args.clients))
    else:
        where = f"a {args.nodes}-node noop devstack (node 0)"
        base_dir = Path(tempfile.mkdtemp(prefix="shoal-api-bench-"))
        try:
            results = trio.run(lambda: on_devstack(nodes=args.nodes, base_port=args.base_port, base_dir=base_dir,
                                                   requests=args.requests, clients=args.clients))  # fmt: skip
        finally:
            shutil.rmtree(base_dir, ignore_errors=True)
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=2))
    else:
        print(f"API latency on {where}: {args.requests} requests of each kind, {args.clients} concurrent client(s)")
        for r in results:
            print("  " + r.line())
    return results


if __name__ == "__main__":
    main()
