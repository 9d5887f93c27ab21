"""``Client.map`` benchmark: one function over N items on a fresh devstack, wall time from the call to the values.

    python -m devstack.bench_map --items 100 [--nodes 3] [--image shoal/python-sci] [--confidence 2]

Starts a devstack whose nodes all compute (real python engine: Pyodide, or the image's engine
with ``--image``), warms it with a first, smaller map (each node builds its interpreter snapshot
or pulls its image then; that time is reported apart), then times ``client.map(work, range(N))``,
where ``work`` draws 10,000 seeded random numbers: the figure is the network's and the engine's
overhead more than the work's. ``--confidence K``: each value agreed by K nodes (K runs of each
item at least). Prints a summary line and JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import tempfile
import time
from pathlib import Path

import trio

from devstack.stack import Devstack


def work(i: int) -> float:
    rng = random.Random(i)
    return math.fsum(rng.random() for _ in range(10_000)) / 10_000  # fsum: the same bits on every Python


async def measure(items: int, nodes: int, base_port: int, image: str | None, confidence: int = 0) -> dict:
    from shoal import Client

    async with Devstack(nodes, base_dir=Path(tempfile.mkdtemp(prefix="shoal-bench-map-")), base_port=base_port,
                        write_state=False) as stack:
        await trio.sleep(2.0)  # node info gossip: the requester knows every node before the claims

        def run() -> dict:
            with Client(stack.nodes[0].api, timeout=120) as client:
                started = time.perf_counter()
                client.map(work, range(2 * nodes), image=image, progress=False, confidence=confidence)
                warm_up = time.perf_counter() - started
                started = time.perf_counter()
                values = client.map(work, range(items), image=image, progress=False, confidence=confidence)
                took = time.perf_counter() - started
                assert values == [work(i) for i in range(items)], "values differ from a local run"
                sweep = client.list_sweeps(limit=1).sweeps[0]
                indexes = client.sweep_indexes(sweep.id, limit=items).indexes
                per_node: dict[str, int] = {}
                for record in indexes:
                    per_node[(record.node_id or "?")[-8:]] = per_node.get((record.node_id or "?")[-8:], 0) + 1
                return {"items": items, "nodes": nodes, "engine": image or "pyodide", "confidence": confidence,
                        "wall_s": round(took, 2),
                        "warm_up_s": round(warm_up, 2),
                        "items_per_second": round(items / took, 1), "indexes_per_node": per_node}

        return await trio.to_thread.run_sync(run)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--base-port", type=int, default=16900)
    parser.add_argument("--image", default=None, help="run in this image (shoal run python --image) instead of Pyodide")
    parser.add_argument("--confidence", type=int, default=0, help="nodes that must agree on each value")
    args = parser.parse_args()
    result = trio.run(measure, args.items, args.nodes, args.base_port, args.image, args.confidence)
    verified = f", each verified by {args.confidence} nodes" if args.confidence > 1 else ""
    print(f"Client.map over {result['items']} items{verified} on {result['nodes']} nodes ({result['engine']}): "
          f"{result['wall_s']:.1f} s wall, {result['items_per_second']:.1f} items/s (after a warm-up map of "
          f"{2 * result['nodes']} items: {result['warm_up_s']:.1f} s), "
          f"indexes per node {result['indexes_per_node']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
