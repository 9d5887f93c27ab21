"""Stress benchmark: N submitters, each submitting jobs one after another and waiting for each.

With the defaults (3 noop nodes, 10 submitters, ``concurrency=3``) this is Bacalhau's 2022
stress test; success is a job that reached Completed (not merely "some state line").
"""

from __future__ import annotations

import json
import math
import random
import signal
import socket
import statistics
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path

import trio

from devstack.stack import Devstack
from jobs import JobSpec


@dataclass
class BenchReport:
    jobs: int
    submitters: int
    concurrency: int
    nodes: int
    completed: int
    failed: int
    errors: int
    wall_seconds: float
    jobs_per_second: float
    latency_ms: dict[str, float]
    phases_ms: dict[str, float] = field(default_factory=dict)
    failure_reasons: dict[str, int] = field(default_factory=dict)
    rss_mb: dict[str, list[float]] = field(default_factory=dict)
    peak_rss_mb: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)
    chaos_kills: int = 0
    freezes: int = 0
    freeze_seconds: float = 0.0
    reoffers: int = 0

    def summary(self) -> str:
        lat = self.latency_ms
        lines = [
            f"{self.jobs} jobs, {self.submitters} submitters, concurrency {self.concurrency}, {self.nodes} nodes",
            f"completed {self.completed}/{self.jobs} ({100 * self.completed / max(self.jobs, 1):.1f} %), "
            f"failed {self.failed}, client errors {self.errors}",
            f"submit->completed latency: mean {lat['mean']:.1f} ms, p50 {lat['p50']:.1f}, p90 {lat['p90']:.1f}, "
            f"p99 {lat['p99']:.1f}, max {lat['max']:.1f}",
            f"throughput: {self.jobs_per_second:.1f} jobs/s over {self.wall_seconds:.1f} s",
        ]
        if self.phases_ms:
            phases = ", ".join(f"{k} {v:.1f}" for k, v in self.phases_ms.items())
            lines.append(f"phases (median ms after submit): {phases}")
        if self.chaos_kills:
            lines.append(f"chaos: {self.chaos_kills} nodes killed with SIGKILL and restarted during the run")
        if self.freezes:
            lines.append(f"freeze: {self.freezes} nodes stopped with SIGSTOP for {self.freeze_seconds:g} s each, "
                         f"then resumed; {self.reoffers} executions re-offered by the requesters")
        for reason, n in self.failure_reasons.items():
            lines.append(f"  {n} x {reason}")
        for name, (before, at_1000, after) in self.rss_mb.items():
            cpu = self.cpu_seconds.get(name, math.nan)
            lines.append(f"  {name}: RSS {before:.0f} MB at start, {at_1000:.0f} MB after 1,000 jobs, "
                         f"{after:.0f} MB at the end, peak {self.peak_rss_mb.get(name, math.nan):.0f} MB; "
                         f"CPU {cpu:.1f} s ({cpu / self.wall_seconds if self.wall_seconds else math.nan:.2f} cores)")
        return "\n".join(lines)


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


async def run(api_urls: list[str], *, jobs: int, submitters: int, concurrency: int, nodes: int,
              job_timeout: float = 120.0, spec: dict | None = None, sample_phases: int = 200,
              chaos: Devstack | None = None, chaos_interval: float = 3.0, freeze_for: float = 0.0,
              on_job_done: Callable[[int], None] | None = None) -> BenchReport:
    """Submit ``jobs`` jobs from ``submitters`` concurrent clients, each waiting for its job to end.

    With ``chaos``, a random node of that stack is killed with SIGKILL every ``chaos_interval``
    seconds and restarted; submitters ride through their node's restarts (same idempotency key).
    With ``freeze_for`` as well, the node is stopped with SIGSTOP for that long instead, then
    resumed: a node that stops answering, whose work the requesters must re-offer.
    """
    from shoal import AsyncClient, ConnectionFailed, ShoalAPIError

    # every job must run (Bacalhau's method): no cached results, even though noop is deterministic
    job_spec = JobSpec.model_validate({"engine": {"name": "noop"}, "deal": {"concurrency": concurrency},
                                       **(spec or {}), "cache": False})
    latencies: list[float] = []
    outcomes: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    finished_ids: list[tuple[str, int]] = []
    counter = iter(range(jobs))

    async def patiently(call, deadline: float):
        while True:
            try:
                return await call()
            except ConnectionFailed:
                if time.monotonic() > deadline:
                    raise
                await trio.sleep(0.3)

    async def submitter(i: int) -> None:
        url = api_urls[i % len(api_urls)]
        async with AsyncClient(url, timeout=job_timeout) as client:
            for n in counter:
                t0 = time.perf_counter()
                deadline = time.monotonic() + job_timeout
                key = f"bench-{start_id}-{n}"
                try:
                    d = await patiently(partial(client.submit, job_spec, idempotency_key=key), deadline)
                    job_id = d.job.id
                    if not d.job.state.is_terminal:
                        wait = partial(client.wait, job_id, timeout=job_timeout, poll=min(job_timeout, 30.0))
                        d = await patiently(wait, deadline)
                except ShoalAPIError as e:
                    outcomes["error"] += 1
                    reasons[f"client: {type(e).__name__}: {str(e)[:80]}"] += 1
                    continue
                latencies.append(time.perf_counter() - t0)
                outcomes[d.job.state.value] += 1
                if d.job.state.value != "completed":
                    reasons[d.job.reason[:120]] += 1
                else:
                    done_by = [x.node_id for x in d.executions if x.state.value == "completed"]
                    if not len(done_by) == len(set(done_by)) == d.job.spec.deal.concurrency:
                        outcomes["completed_wrongly"] += 1  # not exactly `concurrency` results, from as many nodes
                finished_ids.append((d.job.id, i))
                if on_job_done is not None:
                    on_job_done(len(finished_ids))

    async def chaos_monkey() -> None:
        assert chaos is not None
        rng = random.Random(0)
        while True:
            await trio.sleep(chaos_interval)
            victim = rng.randrange(len(chaos.nodes))
            chaos_events.append(victim)
            if freeze_for:
                chaos.kill(victim, signal.SIGSTOP)
                try:
                    await trio.sleep(freeze_for)
                finally:  # also when the run ends meanwhile: never leave a node stopped
                    chaos.kill(victim, signal.SIGCONT)
            else:
                chaos.kill(victim)
                try:
                    await trio.sleep(0.5)
                finally:  # also when the run ends meanwhile: never leave a node dead
                    with trio.CancelScope(shield=True), trio.fail_after(60):
                        await chaos.restart(victim)

    start_id = uuid.uuid4().hex[:8]
    chaos_events: list[int] = []
    start = time.perf_counter()
    async with trio.open_nursery() as outer:
        if chaos is not None:
            outer.start_soon(chaos_monkey)
        async with trio.open_nursery() as nursery:
            for i in range(submitters):
                nursery.start_soon(submitter, i)
        outer.cancel_scope.cancel()
    wall = time.perf_counter() - start

    phases = await _phase_medians(api_urls, finished_ids[-sample_phases:])
    reoffers = await _requester_total(api_urls, "reoffers") if freeze_for else 0
    ms = [x * 1000 for x in latencies]
    return BenchReport(
        jobs=jobs, submitters=submitters, concurrency=concurrency, nodes=nodes,
        completed=outcomes["completed"] - outcomes["completed_wrongly"],
        failed=outcomes["failed"] + outcomes["cancelled"], errors=outcomes["error"] + outcomes["completed_wrongly"],
        wall_seconds=wall, jobs_per_second=outcomes["completed"] / wall if wall else 0.0,
        latency_ms={"mean": statistics.fmean(ms) if ms else math.nan, "p50": _percentile(ms, 0.5),
                    "p90": _percentile(ms, 0.9), "p99": _percentile(ms, 0.99), "max": max(ms, default=math.nan)},
        phases_ms=phases, failure_reasons=dict(reasons.most_common(10)),
        chaos_kills=0 if freeze_for else len(chaos_events), freezes=len(chaos_events) if freeze_for else 0,
        freeze_seconds=freeze_for, reoffers=reoffers,
    )


async def _phase_medians(api_urls: list[str], sample: list[tuple[str, int]]) -> dict[str, float]:
    """Median time from submit to each phase, from the requester's own timestamps."""
    from shoal import AsyncClient, ShoalAPIError

    per_phase: dict[str, list[float]] = {}
    clients = [AsyncClient(url) for url in api_urls]
    descriptions = []
    try:
        for job_id, i in sample:
            try:
                descriptions.append(await clients[i % len(clients)].describe(job_id))
            except ShoalAPIError:  # a sample, not a result: skip a job whose node cannot answer now
                continue
    finally:
        for client in clients:
            await client.aclose()
    for description in descriptions:
        phases = description.phases
        if phases.submitted is None:
            continue
        for name, value in phases.model_dump().items():
            if value is not None and name != "submitted":
                per_phase.setdefault(name, []).append((value - phases.submitted) * 1000)
    return {k: statistics.median(v) for k, v in per_phase.items()}


def counters(api: str) -> dict[str, float]:
    """A node's counters from its /metrics, keyed by series (``shoal_requester_total{event="bids"}``)."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(f"{api}/metrics", timeout=10).text.splitlines():
        if line.startswith(("shoal_network_total", "shoal_requester_total")):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


async def _requester_total(api_urls: list[str], event: str) -> int:
    """Sum one ``shoal_requester_total`` counter over the nodes."""
    key = f'shoal_requester_total{{event="{event}"}}'
    return int(sum([(await trio.to_thread.run_sync(counters, url)).get(key, 0.0) for url in api_urls]))


def cpu_and_peak(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) a process used so far, and its peak RSS in MB (VmHWM)."""
    import psutil

    try:
        times = psutil.Process(pid).cpu_times()
        status = Path(f"/proc/{pid}/status").read_text()
    except (psutil.NoSuchProcess, OSError):
        return math.nan, math.nan
    peak_kib = next((int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM:")), None)
    peak = peak_kib * 1024 / 1e6 if peak_kib is not None else math.nan
    return times.user + times.system, peak


def rss_mb(pid: int) -> float:
    import psutil

    try:
        return psutil.Process(pid).memory_info().rss / 1e6
    except psutil.NoSuchProcess:
        return math.nan


async def on_devstack(*, nodes: int, jobs: int, submitters: int, concurrency: int, base_dir: Path, base_port: int,
                      spec: dict | None = None, chaos: bool = False, chaos_interval: float = 3.0,
                      freeze_for: float = 0.0, rss_first: int = 1000) -> BenchReport:
    """``run`` on a fresh noop devstack in ``base_dir``, with each node's RSS (at the start, after the
    first ``rss_first`` jobs, at the end), peak RSS and CPU seconds in the report."""
    async with Devstack(nodes, noop=True, base_dir=base_dir, base_port=base_port, write_state=False) as stack:
        before = {f"node-{n.index}": rss_mb(n.pid) for n in stack.nodes if n.pid}
        cpu_before = {f"node-{n.index}": (n.pid, cpu_and_peak(n.pid)[0]) for n in stack.nodes if n.pid}
        at_first: dict[str, float] = {}

        def sample(done: int) -> None:  # RSS after the first jobs, to compare with the end
            if done == rss_first:
                at_first.update({f"node-{n.index}": rss_mb(n.pid) for n in stack.nodes if n.pid})

        report = await run([n.api for n in stack.nodes], jobs=jobs, submitters=submitters, spec=spec,
                           concurrency=concurrency, nodes=nodes, chaos=stack if chaos or freeze_for else None,
                           chaos_interval=chaos_interval, freeze_for=freeze_for, on_job_done=sample)
        report.rss_mb = {name: [before[name], at_first.get(name, math.nan), rss_mb(n.pid)] for name, n in
                         ((f"node-{n.index}", n) for n in stack.nodes) if n.pid}
        for n in stack.nodes:
            if n.pid:
                name = f"node-{n.index}"
                cpu, peak = cpu_and_peak(n.pid)
                pid, cpu_at_start = cpu_before.get(name, (None, 0.0))
                report.cpu_seconds[name] = cpu - cpu_at_start if pid == n.pid else cpu  # restarted: since then
                report.peak_rss_mb[name] = peak
        return report


def free_base_port(nodes: int) -> int:
    """A base port whose API (``base + i``) and libp2p (``base + 100 + i``) ports are free now."""
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(20_000, 32_000)  # below Linux's ephemeral ports (32768-)
        try:
            for port in [base + i for i in range(nodes)] + [base + 100 + i for i in range(nodes)]:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no free port range found")


def main(*, nodes: int = 3, jobs: int = 10_000, submitters: int = 10, concurrency: int = 3,
         api: str | None = None, base_port: int = 8800, as_json: bool = False, chaos: bool = False,
         chaos_interval: float = 3.0, freeze_for: float = 0.0, job_seconds: float = 0.0) -> BenchReport:
    """``shoal bench``: start a fresh noop devstack (or use ``api``), run, print a summary and JSON."""
    from node.config import shoal_home

    spec = {"engine": {"name": "noop", "delay": job_seconds}} if job_seconds else None

    async def _main() -> BenchReport:
        if api:
            return await run([api], jobs=jobs, submitters=submitters, concurrency=concurrency, nodes=nodes,
                             spec=spec)
        base = shoal_home() / "bench"
        import shutil

        shutil.rmtree(base, ignore_errors=True)
        return await on_devstack(nodes=nodes, jobs=jobs, submitters=submitters, concurrency=concurrency,
                                 base_dir=base, base_port=base_port, spec=spec, chaos=chaos,
                                 chaos_interval=chaos_interval, freeze_for=freeze_for)

    report = trio.run(_main)
    if as_json:
        print(json.dumps(asdict(report), indent=2))
    else:
        print(report.summary())
        print(json.dumps(asdict(report)))
    return report


if __name__ == "__main__":  # python -m devstack.bench [jobs] [submitters] [concurrency] [nodes]
    import sys

    args = [int(a) for a in sys.argv[1:]]
    keys = ["jobs", "submitters", "concurrency", "nodes"]
    main(**dict(zip(keys, args, strict=False)))
