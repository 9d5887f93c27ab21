"""The rlimits a python runner gets: a hard CPU budget for its life, a soft limit per job under it."""

from __future__ import annotations

import resource
import subprocess

import pytest
import trio

from executors.sandbox import Limits


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
    trio.run(Limits(cpu_seconds=100, cpu_seconds_hard=1000, file_size=1 << 20).apply, child, {})
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (100, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    trio.run(Limits(cpu_seconds=50, file_size=4096, soft=True).apply, child, {})  # one job
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (50, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (4096, 1 << 20)
    trio.run(Limits(cpu_seconds=900, file_size=1 << 20, soft=True).apply, child, {})  # the next, allowed more
    assert resource.prlimit(child, resource.RLIMIT_CPU) == (900, 1000)
    assert resource.prlimit(child, resource.RLIMIT_FSIZE) == (1 << 20, 1 << 20)
    with pytest.raises(ValueError):  # never above the hard limit
        trio.run(Limits(cpu_seconds=2000, soft=True).apply, child, {})
