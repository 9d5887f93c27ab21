"""Python engine benchmark: a sweep of trivial indexes and a warm ``print(1)`` on a fresh devstack.

    python -m devstack.bench_python [--indexes 1000] [--nodes 3] [--single 20]

Starts a devstack whose nodes all compute with the real python engine (Pyodide in its sandbox),
warms it with a small sweep (each node builds its snapshot then), then times one sweep of
``import os; print(os.environ['i'])`` over ``--indexes`` values, submit to done, and checks that every
index printed its own value. CPU per index is the CPU time of the nodes' whole process trees
(interpreters included, sampled every 0.2 s) during the sweep, divided by the indexes. Then ``--single`` rounds of one
``print(1)`` job, submitted and waited for, a pause between rounds so a warm interpreter is waiting.
Prints a summary (with the load average, the machine is shared) and JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import psutil
import trio

from devstack.bench import free_base_port
from devstack.stack import Devstack
from devstack.targets import limit

SWEEP_CODE = "import os; print(os.environ['i'])"
TARGET_INDEXES_PER_S = limit(1, "indexes_per_s")
TARGET_SINGLE_P50_MS = limit(2, "single_p50_ms")


class TreeCPU:
    """CPU time of processes and all their descendants, sampled: an interpreter killed inside its sandbox is
    never reaped by a process we can see, so each process counts with the last CPU time seen of it."""

    def __init__(self, pids: list[int]) -> None:
        self.pids = pids
        self.seen: dict[tuple[int, float], float] = {}

    def sample(self) -> float:
        for pid in self.pids:
            try:
                root = psutil.Process(pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
            for p in procs:
                try:
                    t = p.cpu_times()
                    self.seen[(p.pid, p.create_time())] = t.user + t.system
                except psutil.NoSuchProcess:
                    pass
        return sum(self.seen.values())

    async def run(self, interval: float = 0.2) -> None:
        while True:
            await trio.to_thread.run_sync(self.sample)
            await trio.sleep(interval)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _sweep(client, indexes: int) -> tuple[float, str]:
    spec = {"job": {"engine": {"name": "python", "code": SWEEP_CODE}},
            "grid": {"i": [str(i) for i in range(indexes)]}}
    t0 = time.perf_counter()
    d = await client.run_sweep(spec, timeout=3600)
    elapsed = time.perf_counter() - t0
    if d.sweep.state.value != "completed":
        raise RuntimeError(f"sweep ended {d.sweep.state.value}: {d.sweep.counts}")
    return elapsed, d.sweep.id


async def _check_outputs(client, sweep_id: str, indexes: int) -> None:
    first = 0
    while first < indexes:
        page = await client.sweep_indexes(sweep_id, first=first, limit=1000)
        for record in page.indexes:
            out = record.result.stdout if record.result else None
            if out != f"{record.index}\n":
                raise RuntimeError(f"index {record.index} printed {out!r}")
        first += len(page.indexes)


async def _timed_sweep(client, pids: list[int], indexes: int) -> dict:
    """One sweep of ``indexes`` indexes, timed, with the nodes' CPU; every index's output checked."""
    cpu_meter = TreeCPU(pids)
    cpu0 = cpu_meter.sample()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(cpu_meter.run)
        took, sweep_id = await _sweep(client, indexes)
        nursery.cancel_scope.cancel()
    cpu = cpu_meter.sample() - cpu0
    await _check_outputs(client, sweep_id, indexes)
    return {"sweep_s": round(took, 2), "indexes_per_s": round(indexes / took, 2),
            "cpu_s_per_index": round(cpu / indexes, 3)}


async def measure(indexes: int, nodes: int, single: int, base_port: int, extra_args: list[str]) -> dict:
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-python-"))
    try:
        return await _measure(base, indexes, nodes, single, base_port, extra_args)
    finally:  # each node's data dir holds a 30 MB snapshot
        shutil.rmtree(base, ignore_errors=True)


async def _measure(base: Path, indexes: int, nodes: int, single: int, base_port: int, extra_args: list[str]) -> dict:
    from shoal import AsyncClient

    async with Devstack(nodes, base_dir=base, base_port=base_port, write_state=False,
                        extra_args=extra_args) as stack, AsyncClient(stack.nodes[0].api) as client:
        pids = [n.pid for n in stack.nodes if n.pid]
        await trio.sleep(2.0)  # node info gossip: the requester knows every node before the claims
        warm_up, _ = await _sweep(client, 4 * nodes)
        await trio.sleep(5.0)  # pools refilled
        load0 = os.getloadavg()[0]
        sweep = await _timed_sweep(client, pids, indexes) if indexes else {}
        single_ms: list[float] = []
        py = {"engine": {"name": "python", "code": "print(1)"}, "cache": False}
        for _ in range(single):
            await trio.sleep(1.5)  # a warm interpreter is waiting
            t0 = time.perf_counter()
            d = await client.run(py, timeout=120)
            single_ms.append((time.perf_counter() - t0) * 1000)
            if d.job.state.value != "completed" or d.job.result is None or d.job.result.stdout != "1\n":
                raise RuntimeError(f"print(1) ended {d.job.state.value}: {d.job.reason}")
        return {
            "nodes": nodes, "indexes": indexes, "sweep_s": sweep.get("sweep_s"), "warm_up_s": round(warm_up, 2),
            "indexes_per_s": sweep.get("indexes_per_s"), "cpu_s_per_index": sweep.get("cpu_s_per_index"),
            "single_p50_ms": round(_pct(single_ms, 0.5), 1) if single_ms else None,
            "single_p90_ms": round(_pct(single_ms, 0.9), 1) if single_ms else None,
            "single_mean_ms": round(statistics.fmean(single_ms), 1) if single_ms else None,
            "load_before": round(load0, 2), "load_after": round(os.getloadavg()[0], 2),
        }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indexes", type=int, default=1000, help="indexes of the timed sweep (0: none)")
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--single", type=int, default=20, help="rounds of one warm print(1) job (0: none)")
    parser.add_argument("--base-port", type=int, default=None, help="default: free ports")
    parser.add_argument("--node-arg", action="append", default=[], help="extra `shoal serve` argument")
    args = parser.parse_args()
    port = args.base_port if args.base_port is not None else free_base_port(args.nodes)
    r = trio.run(measure, args.indexes, args.nodes, args.single, port, args.node_arg)
    if r["indexes"]:
        print(f"python sweep of {r['indexes']} indexes on {r['nodes']} nodes: {r['sweep_s']:.1f} s, "
              f"{r['indexes_per_s']:.1f} indexes/s (target >= {TARGET_INDEXES_PER_S:g}), "
              f"{r['cpu_s_per_index'] * 1000:.0f} ms CPU per index (warm-up sweep {r['warm_up_s']:.1f} s)")
    if r["single_p50_ms"] is not None:
        print(f"one warm print(1) job: p50 {r['single_p50_ms']:.0f} ms (target <= {TARGET_SINGLE_P50_MS:g}), "
              f"p90 {r['single_p90_ms']:.0f} ms")
    print(f"load average {r['load_before']} before, {r['load_after']} after")
    print(json.dumps(r))


if __name__ == "__main__":
    main()
