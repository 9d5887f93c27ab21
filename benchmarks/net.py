"""Round-trip benchmark of ``Network.request`` between two hosts in one process.

    python -m benchmarks.net [--requests 1000] [--size 500] [--private]

Prints p50/p99 round-trip latency and requests/s for sequential requests and
for all requests issued at once (all multiplexed on the one outbound stream).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import secrets
import statistics
import time

import trio

from node.net.admission import OPEN, Admission
from node.net.host import Network


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _report(label: str, latencies: list[float], elapsed: float) -> None:
    print(
        f"{label:<28} n={len(latencies):>5}  p50={_percentile(latencies, 50) * 1e3:7.2f} ms  "
        f"p99={_percentile(latencies, 99) * 1e3:7.2f} ms  "
        f"mean={statistics.fmean(latencies) * 1e3:7.2f} ms  {len(latencies) / elapsed:8.0f} req/s"
    )


async def _bench(requests: int, size: int, private: bool = False) -> None:
    async def echo(peer: str, data: bytes) -> bytes:
        return data

    async def ignore(origin: str, data: bytes) -> None:
        pass

    admission = Admission(network_key=secrets.token_bytes(32)) if private else OPEN

    def node(name: str, peers: list[str]) -> Network:
        return Network(
            seed=hashlib.sha256(name.encode()).digest(),
            listen=["/ip4/127.0.0.1/tcp/0"],
            peers=peers,
            on_gossip=ignore,
            on_request=echo,
            admission=admission,
        )

    payload = bytes(size)
    async with trio.open_nursery() as nursery:
        server = node("bench-server", [])
        await nursery.start(server.run)
        client = node("bench-client", server.addrs())
        await nursery.start(client.run)
        for _ in range(50):  # warm up: connection, stream, code paths
            await client.request(server.peer_id, payload, timeout=10)

        latencies: list[float] = []
        start = time.perf_counter()
        for _ in range(requests):
            t0 = time.perf_counter()
            await client.request(server.peer_id, payload, timeout=10)
            latencies.append(time.perf_counter() - t0)
        _report("sequential", latencies, time.perf_counter() - start)

        for in_flight in (requests, 64):
            latencies = []
            limiter = trio.CapacityLimiter(in_flight)

            async def one(limiter: trio.CapacityLimiter = limiter, out: list[float] = latencies) -> None:
                async with limiter:
                    t0 = time.perf_counter()
                    await client.request(server.peer_id, payload, timeout=60)
                    out.append(time.perf_counter() - t0)

            start = time.perf_counter()
            async with trio.open_nursery() as batch:
                for _ in range(requests):
                    batch.start_soon(one)
            label = "concurrent (all at once)" if in_flight == requests else f"concurrent ({in_flight} in flight)"
            _report(label, latencies, time.perf_counter() - start)

        stats = client.statistics()
        print(
            f"client: {stats.requests_sent} sent, {stats.requests_failed} failed, {stats.open_streams} open stream(s)"
        )
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--size", type=int, default=500, help="payload bytes per request and reply")
    parser.add_argument("--private", action="store_true", help="both hosts on a private network (a network key)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"{args.requests} requests of {args.size} B, echo handler, two hosts on 127.0.0.1 in one process"
          f"{', private network' if args.private else ''}")
    trio.run(_bench, args.requests, args.size, args.private)


if __name__ == "__main__":
    main()
