"""Benchmark of the node's store: CPU and wall time per read by key, through the ``Store``'s own API.

    python -m benchmarks.store [--jobs 2000] [--reads 5000]

Fills a fresh store with ``--jobs`` finished jobs (one execution each), then times ``get_job``,
``executions_of`` and ``is_shared`` one after another: what each lookup of a job costs a node's event loop.
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, RunResult
from node.store import Store


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bench(jobs: int, reads: int, folder: Path) -> None:
    spec = JobSpec.model_validate({"engine": {"name": "noop"}})
    store = Store(folder / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        now = time.time()
        for i in range(jobs):
            job = Job(id=f"j-{i}", owner="alice", spec=spec, state=JobState.COMPLETED, created_at=now,
                      updated_at=now, result=RunResult(stdout="ok\n"))
            ex = Execution(id=f"x-{i}", job_id=job.id, node_id="n", requester="r", state=ExecutionState.COMPLETED,
                           created_at=now, updated_at=now, spec=spec)
            await store.save(new_job=job, new_executions=[ex])
        for name, read in (("get_job", lambda i: store.get_job(f"j-{i % jobs}")),
                           ("executions_of", lambda i: store.executions_of(ExecutionSide.REQUESTER, f"j-{i % jobs}")),
                           ("is_shared", lambda i: store.is_shared(f"j-{i % jobs}", "bob"))):
            wall, cpu = time.perf_counter(), cpu_seconds()
            for i in range(reads):
                await read(i)
            wall, cpu = time.perf_counter() - wall, cpu_seconds() - cpu
            print(f"{name:14s} {wall / reads * 1e6:7.1f} µs wall  {cpu / reads * 1e6:7.1f} µs CPU  a read")
        nursery.cancel_scope.cancel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--reads", type=int, default=5000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        trio.run(bench, args.jobs, args.reads, Path(folder))


if __name__ == "__main__":
    main()
