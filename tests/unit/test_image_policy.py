"""Which docker images a node hands to jobs: its operator's patterns, else base and pulled images only."""

from __future__ import annotations

from pathlib import Path

from executors.docker import DockerExecutor


def test_allow_images_patterns_decide_when_given():
    ex = DockerExecutor("n", allow_images=("python:*", "ghcr.io/acme/*"))
    assert ex.image_problem("python:3.12-slim") is None
    assert ex.image_problem("ghcr.io/acme/tool:1") is None
    assert "not allowed on this node" in ex.image_problem("busybox")
    assert "not allowed on this node" in ex.image_problem("ghcr.io/other/tool:1")


def test_without_patterns_only_base_and_pulled_images_run(tmp_path: Path):
    record = tmp_path / "pulled.txt"
    ex = DockerExecutor("n", pulled_record=record)
    assert ex._local_image_problem("busybox") is None
    assert ex._local_image_problem("docker.io/library/busybox:latest") is None
    assert ex._local_image_problem("shoal/python:3") is None
    assert "was not pulled for jobs" in ex._local_image_problem("acme/private:1")
    ex.pulled.add("acme/private:1")
    assert ex._local_image_problem("acme/private:1") is None
    # the record outlives the process
    assert DockerExecutor("n", pulled_record=record)._local_image_problem("acme/private:1") is None
