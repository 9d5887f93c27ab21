"""Benchmark of the ``python`` engine: ``print(1)`` from a warm pool vs a cold start.

    python -m benchmarks.python [-n 20] [--pool-size 2] [--cache-dir DIR]

Times ``PyodideExecutor.run`` (prepare the job, get an interpreter, run, collect) in this process, without
the network: what a compute node adds to a job's latency. Warm runs wait until the pool has an idle
interpreter again, as on a node whose job rate stays below the pool's refill rate.
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import trio

from executors.base import RunRequest
from executors.pyodide import PyodideExecutor
from jobs import JobSpec, PythonEngine


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def bench(n: int, pool_size: int, cache_dir: Path, unsandboxed: bool = False) -> dict[str, list[float]]:
    executor = PyodideExecutor(cache_dir, pool_size=pool_size, unsandboxed=unsandboxed)
    t0 = time.perf_counter()
    await executor.prepare()
    print(f"snapshot ready in {time.perf_counter() - t0:.1f} s ({cache_dir})")
    spec = JobSpec(engine=PythonEngine(code="print(1)"))
    timings: dict[str, list[float]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:

        async def once(kind: str, i: int) -> None:
            work = Path(tmp) / f"{kind}-{i}"
            request = RunRequest(f"bench-{kind}-{i}", f"ex-{i}", spec, work, work / "outputs", seed=b"bench")
            t = time.perf_counter()
            result = await executor.run(request)
            timings[kind].append(time.perf_counter() - t)
            if result.exit_code != 0 or result.stdout != "1\n":
                raise SystemExit(f"unexpected result: {result}")

        for i in range(n):
            await once("cold", i)
        async with trio.open_nursery() as nursery:
            await nursery.start(executor.run_pool)
            for i in range(n):
                while executor.statistics().idle == 0:
                    await trio.sleep(0.05)
                await once("warm", i)
            nursery.cancel_scope.cancel()
        stats = executor.statistics()
        assert stats.warm_runs == n and stats.cold_runs == n, stats
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20, help="runs of each kind")
    parser.add_argument("--pool-size", type=int, default=2)
    parser.add_argument("--cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "shoal-bench-pyodide")
    parser.add_argument("--compare-unsandboxed", action="store_true",
                        help="also run without the OS sandbox, in the same run, to show what it costs")
    args = parser.parse_args()
    modes = [False, True] if args.compare_unsandboxed else [False]
    for unsandboxed in modes:
        timings = trio.run(bench, args.n, args.pool_size, args.cache_dir, unsandboxed)
        print(f"python engine, print(1), N={args.n} each, pool_size={args.pool_size}, "
              f"{'UNSANDBOXED' if unsandboxed else 'sandboxed'}")
        for kind, label in (("warm", "warm pool "), ("cold", "cold start")):
            ms = [v * 1000 for v in timings[kind]]
            print(f"  {label}  p50 {percentile(ms, 0.5):7.0f} ms   p90 {percentile(ms, 0.9):7.0f} ms"
                  f"   min {min(ms):7.0f} ms   max {max(ms):7.0f} ms")


if __name__ == "__main__":
    main()
