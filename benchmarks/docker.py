"""Overhead of ``DockerExecutor.run`` over a bare ``docker run --rm``, measured side by side.

    python -m benchmarks.docker [-n 30] [--image busybox:latest]

Each round times both, alternating which goes first, so drift on a shared machine hits both
alike: ``DockerExecutor.run`` of ``/bin/true`` (create, attach, start, wait, remove, with all the
hardening) and docker-py's ``containers.run(image, "/bin/true", remove=True)`` (what
``docker run --rm`` does), once with Docker's default bridge network and once with
``network_mode="none"`` like Shoal's containers (most of the difference between the two is setting up
the bridge's veth pair, which Shoal skips). Prints p50/p90 of each and of the per-round difference
against the like-for-like bare run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import docker
import trio

from executors.base import RunRequest
from executors.docker import DockerExecutor, cleanup_leftovers
from jobs import JobSpec


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def bench(n: int, image: str, warmup: int = 3) -> dict[str, list[float]]:
    label = f"bench-{uuid.uuid4().hex[:8]}"
    executor = DockerExecutor(label)
    client = docker.from_env()
    spec = JobSpec(engine={"name": "docker", "image": image, "args": ["/bin/true"]})
    times: dict[str, list[float]] = {"executor": [], "bare": [], "bare_nonet": [], "overhead": []}
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:

        async def shoal_run() -> float:
            eid = uuid.uuid4().hex
            request = RunRequest(f"job-{eid}", eid, spec, Path(tmp) / eid, Path(tmp) / eid / "outputs")
            started = time.perf_counter()
            result = await executor.run(request)
            elapsed = time.perf_counter() - started
            assert result.exit_code == 0, result
            return elapsed

        def bare_run(**options: str) -> float:
            started = time.perf_counter()
            client.containers.run(image, "/bin/true", remove=True, **options)
            return time.perf_counter() - started

        try:
            for i in range(warmup + n):
                if i % 2:
                    bare_nonet = await trio.to_thread.run_sync(lambda: bare_run(network_mode="none"))
                    bare = await trio.to_thread.run_sync(bare_run)
                    ours = await shoal_run()
                else:
                    ours = await shoal_run()
                    bare = await trio.to_thread.run_sync(bare_run)
                    bare_nonet = await trio.to_thread.run_sync(lambda: bare_run(network_mode="none"))
                if i >= warmup:
                    times["executor"].append(ours)
                    times["bare"].append(bare)
                    times["bare_nonet"].append(bare_nonet)
                    times["overhead"].append(ours - bare_nonet)
        finally:
            await cleanup_leftovers(label)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="measured rounds (after 3 warm-up rounds)")
    parser.add_argument("--image", default="busybox:latest")
    args = parser.parse_args()
    times = trio.run(bench, args.n, args.image)
    print(f"/bin/true in {args.image}, N={args.n}, side by side")
    rows = (("executor", "DockerExecutor.run"), ("bare", "bare run --rm (bridge network)"),
            ("bare_nonet", "bare run --rm --network none"), ("overhead", "executor - bare (no network)"))
    for name, label in rows:
        ms = [t * 1000 for t in times[name]]
        print(f"  {label:<31} p50 {percentile(ms, 50):7.1f} ms   p90 {percentile(ms, 90):7.1f} ms   "
              f"mean {statistics.fmean(ms):7.1f} ms")


if __name__ == "__main__":
    main()
