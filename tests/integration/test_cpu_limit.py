"""A node with --limit-total-cpu 1 never runs more than one CPU's worth of jobs, whatever the jobs ask for."""

from __future__ import annotations

import time

import pytest
import trio

from devstack import Devstack
from shoal import Client, InvalidRequest
from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow


def test_total_cpu_limit_holds_and_jobs_cannot_ask_for_nothing(tmp_path):
    stack = Devstack(1, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(1), write_state=False,
                     extra_args=["--limit-total-cpu", "1"])
    trio.run(stack.start)
    try:
        with Client(stack.nodes[0].api) as client:
            for cpu in (0, -1):  # would reserve nothing (or less), and so escape the limit
                with pytest.raises(InvalidRequest) as refused:
                    client.submit({"engine": {"name": "noop", "delay": 1}, "resources": {"cpu": cpu}})
                assert "cpu" in str(refused.value)
            with pytest.raises(InvalidRequest) as refused:
                client.submit({"engine": {"name": "noop"}, "resources": {"memory": 0}})
            assert "memory" in str(refused.value)

            jobs = [client.submit({"engine": {"name": "noop", "delay": 1.5}, "resources": {"cpu": 0.5},
                                   "env": {"I": str(i)}}) for i in range(6)]
            jobs += [client.submit({"engine": {"name": "noop", "delay": 1.5}, "env": {"J": str(i)}})
                     for i in range(6)]  # the default, 0.1 CPU each
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                described = [client.describe(j.job.id) for j in jobs]
                if all(d.job.state.value in ("completed", "failed", "cancelled") for d in described):
                    break
                time.sleep(0.5)
            assert [d.job.state.value for d in described] == ["completed"] * len(jobs)
            # From the runs' own timestamps: the CPU of the jobs running at any moment, at its largest.
            edges = []
            for d in described:
                (run,) = [x.result for x in d.executions if x.result is not None]
                edges += [(run.started_at, d.job.spec.resources.cpu), (run.finished_at, -d.job.spec.resources.cpu)]
            in_use = peak = 0.0
            for _, change in sorted(edges, key=lambda e: (e[0], e[1])):  # ends before starts at one instant
                in_use += change
                peak = max(peak, in_use)
            assert 0.5 <= peak <= 1.0 + 1e-9
    finally:
        trio.run(stack.stop)


def peak_at_once(described) -> int:
    """From the runs' own timestamps: how many ran at once, at the most (ends before starts at one instant)."""
    edges = []
    for d in described:
        (run,) = [x.result for x in d.executions if x.result is not None]
        edges += [(run.started_at, 1), (run.finished_at, -1)]
    in_use = peak = 0
    for _, change in sorted(edges):
        in_use += change
        peak = max(peak, in_use)
    return peak


def test_total_disk_limit_holds_for_jobs_that_state_no_disk(tmp_path):
    """Jobs stating no disk reserved none, yet each may write 1 GiB (``DEFAULT_DISK``): on a node with
    --limit-total-disk 2.5GiB all six ran at once. Now two at the most do; jobs stating 512 MiB, up to five."""
    stack = Devstack(1, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(1), write_state=False,
                     extra_args=["--limit-total-disk", "2.5GiB"])
    trio.run(stack.start)
    try:
        with Client(stack.nodes[0].api) as client:
            peaks = []
            for disk in (None, "512MiB"):
                resources = {"disk": disk} if disk else {}
                jobs = [client.submit({"engine": {"name": "noop", "delay": 1.5}, "resources": resources,
                                       "env": {"I": str(i)}}) for i in range(6)]
                described = [client.wait(j.job.id, timeout=120) for j in jobs]
                assert [d.job.state.value for d in described] == ["completed"] * len(jobs)
                peaks.append(peak_at_once(described))
            assert peaks[0] <= 2 < peaks[1] <= 5, peaks
    finally:
        trio.run(stack.stop)
