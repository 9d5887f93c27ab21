"""Pulling images for jobs, against a real Docker Engine and a real registry (Debian's docker-registry on a
free port, installed by ``scripts/install-docker``).

A job names any image, and its pull took what it took of the node's disk: one job could fill it with a
large image, and a stream of jobs with many. A pull now stops past the node's ``--max-image-size``, an image
that unpacks to more is removed, and the images pulled for jobs are kept within ``--image-cache-size``, the
least recently used removed first (``executors/docker_pulls.py``). About 15 s.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from executors.base import ExecutorError, RunRequest
from executors.docker import DockerExecutor
from executors.images import build_busybox
from jobs import JobSpec
from tests.integration.rogue import free_base_port

MiB = 1024**2


def _require(what: str) -> None:
    if os.environ.get("SHOAL_REQUIRE_DOCKER") == "1":
        pytest.fail(f"{what}; run scripts/install-docker")
    pytest.skip(f"{what}; run scripts/install-docker")


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    try:
        c = docker.from_env(timeout=60)
        c.ping()
    except docker.errors.DockerException:
        _require("no Docker daemon answers")
    build_busybox(c, progress=lambda _: None)
    return c


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, client: docker.DockerClient) -> Iterator[str]:
    """``127.0.0.1:PORT``: a registry Docker pulls from over plain HTTP (it trusts 127.0.0.0/8)."""
    binary = shutil.which("docker-registry")
    if binary is None:
        _require("no docker-registry")
    home = tmp_path_factory.mktemp("registry")
    address = f"127.0.0.1:{free_base_port(1)}"
    (home / "config.yml").write_text(f"version: 0.1\nstorage:\n  filesystem:\n    rootdirectory: {home / 'data'}\n"
                                     f"http:\n  addr: {address}\nlog:\n  level: warn\n")
    with open(home / "registry.log", "wb") as log:
        process = subprocess.Popen([binary, "serve", str(home / "config.yml")], stdout=subprocess.DEVNULL,
                                   stderr=log)
    try:
        import httpx

        for _ in range(100):
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            trio.run(trio.sleep, 0.1)
        else:
            pytest.fail(f"docker-registry did not answer: {(home / 'registry.log').read_text()[-2000:]}")
        yield address
    finally:
        process.terminate()
        process.wait(10)


def push(client: docker.DockerClient, registry: str, tmp_path: Path, name: str, *, blob: bytes) -> str:
    """Build ``busybox`` plus one file (offline), push it, and remove it here: the next use pulls it."""
    context = tmp_path / f"ctx-{name}"
    context.mkdir()
    (context / "blob").write_bytes(blob)
    (context / "Dockerfile").write_text("FROM busybox:latest\nCOPY blob /blob\n")
    image = f"{registry}/shoal-test/{name}-{uuid.uuid4().hex[:8]}:1"
    client.images.build(path=str(context), tag=image, rm=True)
    for line in client.images.push(image, stream=True, decode=True):
        assert "error" not in line, line
    client.images.remove(image)
    return image


def present(client: docker.DockerClient, image: str) -> bool:
    try:
        client.images.get(image)
        return True
    except docker.errors.ImageNotFound:
        return False


def request_for(tmp_path: Path, image: str) -> RunRequest:
    execution_id = f"ex-{uuid.uuid4().hex[:12]}"
    spec = JobSpec(engine={"name": "docker", "image": image, "args": ["true"]})
    return RunRequest(job_id=f"job-{execution_id}", execution_id=execution_id, spec=spec,
                      work_dir=tmp_path / execution_id, outputs_dir=tmp_path / execution_id / "outputs")


@pytest.fixture
def cleanup(client: docker.DockerClient) -> Iterator[list[str]]:
    images: list[str] = []
    yield images
    for image in images:
        with contextlib.suppress(docker.errors.ImageNotFound):
            client.images.remove(image, force=True)


def test_a_pull_stops_once_its_layers_pass_the_nodes_limit(client, registry, tmp_path, cleanup):
    large = push(client, registry, tmp_path, "large", blob=os.urandom(3 * MiB))
    cleanup.append(large)
    executor = DockerExecutor(f"test-{uuid.uuid4().hex[:8]}", max_image_size=1 * MiB,
                              pulled_record=tmp_path / "pulled.txt")
    with pytest.raises(ExecutorError) as refused:
        trio.run(executor.prepare, request_for(tmp_path, large))
    assert f"image {large!r} is larger than this node pulls: its layers pass 1 MiB" in str(refused.value)
    assert refused.value.retryable  # a node allowing larger images may take it
    assert not present(client, large) and large not in executor.pulled
    roomy = DockerExecutor(f"test-{uuid.uuid4().hex[:8]}", max_image_size=16 * MiB)  # the control
    trio.run(roomy.prepare, request_for(tmp_path, large))
    assert present(client, large)


def test_an_image_unpacking_past_the_limit_is_removed(client, registry, tmp_path, cleanup):
    """A layer of zeros compresses a thousandfold: its download stays under the limit, its disk does not."""
    bomb = push(client, registry, tmp_path, "zeros", blob=bytes(24 * MiB))
    cleanup.append(bomb)
    executor = DockerExecutor(f"test-{uuid.uuid4().hex[:8]}", max_image_size=8 * MiB,
                              pulled_record=tmp_path / "pulled.txt")
    with pytest.raises(ExecutorError) as refused:
        trio.run(executor.prepare, request_for(tmp_path, bomb))
    assert "unpacked, more than this node keeps of one image (8 MiB" in str(refused.value)
    assert not present(client, bomb)
    assert bomb not in executor.pulled and not (tmp_path / "pulled.txt").exists()


def test_images_pulled_for_jobs_are_kept_within_the_cache_least_recently_used_first(client, registry, tmp_path,
                                                                                   cleanup):
    a, b, c = (push(client, registry, tmp_path, name, blob=os.urandom(3 * MiB)) for name in "abc")
    cleanup.extend([a, b, c])
    size = client.images.get("busybox:latest").attrs["Size"] + 3 * MiB  # each image: busybox and its file
    record = tmp_path / "pulled.txt"
    executor = DockerExecutor(f"test-{uuid.uuid4().hex[:8]}", pulled_record=record,
                              image_cache_size=int(2.5 * size))  # room for two of them
    for image in (a, b, a, c):  # a is used again after b is pulled: b is the least recently used
        trio.run(executor.prepare, request_for(tmp_path, image))
    assert [present(client, x) for x in (a, b, c)] == [True, False, True]
    assert sorted(record.read_text().split()) == sorted([a, c])  # what a restarted node still counts as its own
    assert present(client, "busybox:latest")  # a base image is never removed
    trio.run(executor.prepare, request_for(tmp_path, b))  # pulled again when a job needs it
    assert present(client, b) and b in executor.pulled
