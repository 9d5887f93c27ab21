"""GPUs: in the job spec (`--gpu N`), counted by compute nodes like CPU, refused early where no node has
one, and passed to Docker as device requests. No GPU on this machine: accounting and plumbing only
(the closing note of issue 22 says what needs a real one)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import docker
import pytest
from docker.types import DeviceRequest
from pydantic import ValidationError

from cli.daemon import Limit, build_node_config
from cli.options import JobFlags
from cli.specs import build_spec
from compute.capacity import CapacityTracker
from executors.base import RunRequest
from executors.docker import DockerExecutor, container, gpu_device_requests
from jobs import JobSpec, Resources
from jobs.messages import NodeInfo
from node.config import count_gpus, detect_gpus
from requester.selection import can_ever_run, never_runnable

GIB = 1024**3
NODE = Resources(cpu=8, memory=32 * GIB, disk=100 * GIB)
GPU_NODE = Resources(cpu=8, memory=32 * GIB, disk=100 * GIB, gpu=2)
SMI_OUTPUT = ("GPU 0: NVIDIA L4 (UUID: GPU-5b1f3a8e-0000-0000-0000-000000000000)\n"
              "GPU 1: NVIDIA L4 (UUID: GPU-5b1f3a8e-0000-0000-0000-000000000001)\n")


def spec(gpu: int = 0, engine: str = "docker") -> JobSpec:
    eng = {"name": "docker", "image": "busybox", "args": ["true"]} if engine == "docker" else {"name": engine}
    return JobSpec.model_validate({"engine": eng, "resources": {"gpu": gpu} if gpu else {}})


def node(name: str, total: Resources) -> NodeInfo:
    return NodeInfo(peer_id=name, engines=["docker", "noop"], max_per_job=total, total=total, free=total)


def test_a_spec_without_gpus_is_written_and_hashed_as_before_gpus_existed() -> None:
    plain = spec()
    assert b"gpu" not in plain.canonical_json()
    assert plain.digest() == JobSpec.model_validate_json(plain.canonical_json()).digest()
    with_gpus = spec(2)
    assert b'"gpu":2' in with_gpus.canonical_json() and with_gpus.digest() != plain.digest()
    assert JobSpec.model_validate_json(with_gpus.canonical_json()).resources.gpu == 2


@pytest.mark.parametrize("bad", [-1, 65, 1.5, "two"])
def test_a_bad_gpu_count_is_refused(bad: object) -> None:
    with pytest.raises(ValidationError):
        Resources.model_validate({"gpu": bad})


def test_gpus_are_counted_like_cpu() -> None:
    one, two = Resources(cpu=1, gpu=1), Resources(cpu=1, gpu=2)
    assert one.fits_in(GPU_NODE) and two.fits_in(GPU_NODE) and not Resources(gpu=3).fits_in(GPU_NODE)
    assert not one.fits_in(NODE)
    assert (one + two).gpu == 3 and (GPU_NODE - two).gpu == 0 and (one - two).gpu == 0
    assert Resources(gpu=3).shortfall(GPU_NODE) == ["3 GPU"]


def test_a_node_reserves_its_gpus_and_gives_them_back() -> None:
    tracker = CapacityTracker(GPU_NODE)
    assert tracker.try_reserve("e1", Resources(cpu=1, gpu=1))
    assert tracker.try_reserve("e2", Resources(cpu=1, gpu=1))
    assert tracker.free.gpu == 0
    assert not tracker.try_reserve("e3", Resources(cpu=1, gpu=1))  # CPU is free, no GPU is
    assert tracker.try_reserve("e4", Resources(cpu=1))  # jobs without GPUs still run beside them
    assert tracker.release("e1") and tracker.free.gpu == 1
    assert tracker.try_reserve("e3", Resources(cpu=1, gpu=1))
    assert tracker.statistics().used.gpu == 2


def test_a_job_asking_for_gpus_never_goes_to_a_node_without_them() -> None:
    gpu_job = spec(1)
    assert not can_ever_run(gpu_job, node("cpu-only", NODE))
    assert can_ever_run(gpu_job, node("gpu", GPU_NODE))
    assert can_ever_run(spec(), node("gpu", GPU_NODE))


def test_a_gpu_job_fails_fast_when_no_known_node_has_a_gpu() -> None:
    reason = never_runnable(spec(1), [node("a", NODE), node("b", NODE)])
    assert reason == "the job asks for 1 GPU and no compute node offering engine 'docker' has one (0 of 2 nodes)"
    assert never_runnable(spec(1), [node("a", NODE), node("b", GPU_NODE)]) is None
    assert never_runnable(spec(4), [node("b", GPU_NODE)]) == ("0 of 1 nodes can offer 4 GPU per job "
                                                              "(the most one offers: 2 GPU)")
    assert never_runnable(spec(1), []) is None  # no node known yet: wait, do not fail


def test_nvidia_smi_listing_is_counted() -> None:
    assert count_gpus(SMI_OUTPUT) == 2
    assert count_gpus("") == 0
    assert count_gpus("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n") == 0


def _fake_smi(bin_dir: Path, output: str, code: int = 0) -> None:
    smi = bin_dir / "nvidia-smi"
    smi.write_text(f"#!/bin/sh\n[ \"$1\" = -L ] || exit 9\nprintf '%s' '{output}'\nexit {code}\n")
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)


@pytest.mark.parametrize(("output", "code", "expected"), [(SMI_OUTPUT, 0, 2), ("", 9, 0), (None, 0, 0)])
def test_detect_gpus_asks_the_driver(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, output: str | None,
                                     code: int, expected: int) -> None:  # fmt: skip
    if output is not None:
        _fake_smi(tmp_path, output, code)
    monkeypatch.setenv("PATH", str(tmp_path))
    detect_gpus.cache_clear()
    try:
        assert detect_gpus() == expected
    finally:
        detect_gpus.cache_clear()


def test_the_cli_sets_gpus_and_explains_a_bad_value() -> None:
    engine = {"name": "docker", "image": "busybox", "args": ["true"]}
    assert build_spec(engine, JobFlags(gpu=2)).resources.gpu == 2
    assert build_spec(engine, JobFlags()).resources.gpu == 0
    from cli.errors import CLIError

    with pytest.raises(CLIError) as exc:
        build_spec(engine, JobFlags(gpu=-1))
    assert exc.value.lines == ("resources.gpu (--gpu): Input should be greater than or equal to 0",)


def test_serve_limit_total_gpu_sets_the_nodes_total(tmp_path: Path) -> None:
    config = build_node_config(data_dir=tmp_path, limit_total=Limit(gpu=3))
    assert config.limit_total is not None and config.limit_total.gpu == 3
    assert config.limit_total.cpu == float(os.cpu_count() or 1)  # the rest: what the machine has
    assert build_node_config(data_dir=tmp_path, limit_total=Limit(cpu="2")).limit_total.gpu == detect_gpus()


def test_docker_gets_one_device_request_for_the_jobs_gpus(tmp_path: Path) -> None:
    assert gpu_device_requests(2) == [DeviceRequest(count=2, capabilities=[["gpu"]])]
    api = docker.APIClient(base_url="unix:///nonexistent.sock", version="1.41")  # builds configs, never connects
    executor = DockerExecutor("test-node")

    def host_config(job: JobSpec) -> dict:
        request = RunRequest(job_id="j", execution_id="e", spec=job, work_dir=tmp_path, outputs_dir=tmp_path / "out")
        return executor._create_args(api, request, container(job)[0], (), "none", (os.getuid(), os.getgid()))[
            "host_config"]

    assert host_config(spec(2))["DeviceRequests"] == [
        {"Driver": "", "Count": 2, "DeviceIDs": [], "Capabilities": [["gpu"]], "Options": {}}]
    assert "DeviceRequests" not in host_config(spec())
