"""The rlimits a python runner gets: a hard CPU budget for its life, a soft limit per job under it."""

from __future__ import annotations

import os
import resource
import subprocess
import time
from pathlib import Path

import pytest
import trio

from executors.sandbox import Limits, as_user


def test_a_runner_starts_with_a_soft_cpu_limit_under_a_hard_one():
    args = Limits(cpu_seconds=3600, cpu_seconds_hard=691200).prlimit_args()
    assert "--cpu=3600:691200" in args


def test_a_job_lowers_only_the_soft_limits():
    args = Limits(cpu_seconds=70, file_size=4096, soft=True).prlimit_args()
    assert {"--cpu=70:", "--fsize=4096:"} <= set(args)


@pytest.fixture
def child():
    process = subprocess.Popen(["sleep", "60"])
    yield process.pid
    process.kill()
    process.wait()


def test_soft_limits_go_down_and_up_again_under_the_hard_ones(child: int):
    trio.run(Limits(cpu_seconds=100, cpu_seconds_hard=1000, file_size=1 << 20).apply, child, None)
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (100, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    trio.run(Limits(cpu_seconds=50, file_size=4096, soft=True).apply, child, None)  # one job
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (50, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (4096, 1 << 20)
    trio.run(Limits(cpu_seconds=900, file_size=1 << 20, soft=True).apply, child, None)  # the next, allowed more
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (900, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    with pytest.raises(ValueError):  # never above the hard limit
        trio.run(Limits(cpu_seconds=2000, soft=True).apply, child, None)


def test_a_first_job_sets_its_hard_and_soft_limits_in_one_call(child: int):
    trio.run(Limits(cpu_seconds=3600, cpu_seconds_hard=691200).apply, child, None)  # the runner at its start
    first = Limits(memory=1 << 30, cpu_seconds=70, file_size=4096, file_size_hard=1 << 20, soft=True)
    assert {"--data=1073741824", "--cpu=70:", "--fsize=4096:1048576"} <= set(first.prlimit_args())
    trio.run(first.apply, child, None)
    assert resource.prlimit(child, resource.RLIMIT_DATA) == (1 << 30, 1 << 30)
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (70, 691200)  # the runner's hard limit stays
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (4096, 1 << 20)
    trio.run(Limits(cpu_seconds=80, file_size=1 << 20, soft=True).apply, child, None)  # its next job
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    with pytest.raises(ValueError):  # never above the first job's hard limit
        trio.run(Limits(file_size=2 << 20, soft=True).apply, child, None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the child runs as another uid")
def test_without_the_capability_prlimit_runs_as_the_sandbox_uid(monkeypatch: pytest.MonkeyPatch):
    process = subprocess.Popen([*as_user(65534), "sleep", "60"])  # as a root node's sandboxes run
    try:
        while Path(f"/proc/{process.pid}/comm").read_text() != "sleep\n":  # setpriv took the uid and exec'd it
            time.sleep(0.005)
        def refused(self: Limits, pid: int) -> None:
            raise PermissionError(1, "Operation not permitted")

        monkeypatch.setattr(Limits, "_set", refused)  # as for a process in bubblewrap's user namespace
        trio.run(Limits(cpu_seconds=70, file_size=4096, file_size_hard=1 << 20, soft=True).apply, process.pid, 65534)
        limits = Path(f"/proc/{process.pid}/limits").read_text().splitlines()
        assert next(line for line in limits if line.startswith("Max cpu time")).split()[3] == "70"
        assert next(line for line in limits if line.startswith("Max file size")).split()[3:5] == ["4096", "1048576"]
    finally:
        process.kill()
        process.wait()
