"""The protocol past this machine's size: the real roles and store on 100 and 1,000 simulated nodes.

    python -m devstack.bench_sim --nodes 100 1000 --jobs 200 [--concurrency 1] [--loss 0.01]

Each size is one requester node and N compute nodes on the in-memory network (``tests/memnet.py``) with
a latency and loss model (``Links``: every message and reply delayed 5-50 ms, lost with ``--loss``), on
a virtual clock, so waits cost nothing and the figures do not depend on this machine's speed. Jobs (noop,
1 s of simulated work, ``--concurrency`` nodes each) are submitted at ``--rate`` per second.

Prints, for each size: messages per job by kind (direct requests; gossip published, and the copies that
reach other nodes), submit->accepted latency (every slot the job asks for accepted) and
submit->completed latency in virtual time, node info sent per node per minute (background, not per job),
and the wall time and memory the simulation took here. Messages per job should stay bounded by
``concurrency``, not grow with the number of nodes.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import trio
import trio.testing

from jobs import Deal, EventKind, JobSpec, NoopEngine
from tests.memnet import Links, MemoryHub, MemoryNode, memory_node

SETTLE = 20.0  # virtual seconds for node info to reach the requester before jobs start
WAIT = 600.0  # virtual seconds a job may take before it counts as not completed


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def simulate(nodes: int, jobs: int, concurrency: int, rate: float, links: Links, base: Path) -> dict:
    hub = MemoryHub(links)
    started = time.perf_counter()
    async with trio.open_nursery() as network:
        hub.nursery = network

        async def node(name: str, *, task_status: trio.TaskStatus[MemoryNode], **roles: bool) -> None:
            async with memory_node(hub, name, base / name, **roles) as started:  # side by side, not nested
                task_status.started(started)
                await trio.sleep_forever()

        requester = await network.start(functools.partial(node, "requester", compute=False))
        for i in range(nodes):
            await network.start(functools.partial(node, f"node-{i:04d}", requester=False))
        await trio.sleep(SETTLE)
        assert requester.requester is not None
        known = len(requester.requester.known_nodes())
        before = Counter(hub.sent)
        spec = JobSpec(engine=NoopEngine(delay=1.0), deal=Deal(concurrency=concurrency), cache=False)
        ids: list[str] = []

        async def run_one() -> None:
            job, _ = await requester.requester.submit(spec, "bench")
            ids.append(job.id)
            await requester.requester.wait(job.id, WAIT)

        async with trio.open_nursery() as submitters:
            for _ in range(jobs):
                submitters.start_soon(run_one)
                await trio.sleep(1 / rate)
        elapsed = trio.current_time()  # virtual seconds since the nodes started
        sent = Counter(hub.sent)
        sent.subtract(before)
        accepted, completed = [], []
        for job_id in ids:
            events = await requester.store.events(job_id, limit=10_000)
            created = next(e.at for e in events if e.kind is EventKind.CREATED)
            taken = [e.at for e in events if e.kind is EventKind.BID_ACCEPTED]
            if len(taken) >= concurrency:
                accepted.append(sorted(taken)[concurrency - 1] - created)
            completed += [e.at - created for e in events if e.kind is EventKind.COMPLETED]
        network.cancel_scope.cancel()
    per_job = {f"{way} {kind}": round(n / jobs, 2) for (way, kind), n in sorted(sent.items())
               if kind != "node_info" and n}
    gossip = sum(n for (way, kind), n in sent.items() if way == "gossip" and kind != "node_info")
    return {
        "nodes": nodes, "known_to_requester": known, "jobs": jobs, "completed": len(completed),
        "messages_per_job": per_job,
        "requests_per_job": round(sum(n for (way, kind), n in sent.items() if way == "request") / jobs, 2),
        "gossip_copies_per_job": round(gossip * nodes / jobs, 1),
        "accepted_ms": {"p50": round(_percentile(accepted, 0.5) * 1000),
                        "p99": round(_percentile(accepted, 0.99) * 1000),
                        "mean": round(statistics.fmean(accepted) * 1000) if accepted else None},
        "completed_ms": {"p50": round(_percentile(completed, 0.5) * 1000),
                         "p99": round(_percentile(completed, 0.99) * 1000)},
        "node_info_per_node_per_minute": round(hub.sent["gossip", "node_info"] / (nodes * elapsed / 60), 2),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def measure(nodes: int, jobs: int, concurrency: int = 1, rate: float = 20.0, loss: float = 0.0) -> dict:
    """``simulate`` one size on a virtual clock, in a fresh temporary directory."""
    base = Path(tempfile.mkdtemp(prefix=f"shoal-sim-{nodes}-"))
    return trio.run(simulate, nodes, jobs, concurrency, rate, Links(loss=loss), base,
                    clock=trio.testing.MockClock(autojump_threshold=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--rate", type=float, default=20.0, help="jobs submitted per virtual second")
    parser.add_argument("--loss", type=float, default=0.0, help="the chance that a message is lost")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    reports = []
    for n in args.nodes:
        report = measure(n, args.jobs, args.concurrency, args.rate, args.loss)
        reports.append(report)
        if not args.json:
            print(f"{n:>5} nodes ({report['known_to_requester']} known), {report['completed']}/{args.jobs} jobs "
                  f"completed, concurrency {args.concurrency}, loss {args.loss:g}: "
                  f"{report['requests_per_job']} requests/job, {report['gossip_copies_per_job']} gossip copies/job, "
                  f"submit->accepted p50 {report['accepted_ms']['p50']} ms p99 {report['accepted_ms']['p99']} ms; "
                  f"node info {report['node_info_per_node_per_minute']}/node/min; "
                  f"simulated in {report['wall_seconds']} s, max RSS {report['max_rss_mb']} MB")
            print("       per job: " + ", ".join(f"{k} {v}" for k, v in report["messages_per_job"].items()))
    if args.json:
        print(json.dumps(reports, indent=2))


if __name__ == "__main__":
    main()
