"""Python in an image: what the spec says, where it runs, how it becomes a container; and --allow-network's
refusals. Pure functions only (the real containers: tests/integration/test_python_image.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli.errors import CLIError
from cli.wheels import PYODIDE_PACKAGE, pyodide_python
from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from executors.base import ExecutorError
from executors.docker import PYTHON_ENV, container
from executors.images import DEBIAN_IMAGES, PYTHON_SCI_TAG, unneeded_packages
from jobs import JobSpec, Resources
from jobs.messages import NodeInfo
from requester.selection import can_ever_run, never_runnable

CONTEXT = {"source": "ipfs://bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy", "path": "/context"}
BIG = Resources(cpu=4, memory="8GiB")


def spec(engine: dict, **kw) -> JobSpec:
    return JobSpec.model_validate({"engine": engine, **kw})


def sci(**engine) -> JobSpec:
    return spec({"name": "python", "image": "shoal/python-sci", **engine}, inputs=[CONTEXT])


def test_a_script_runs_as_python3_in_the_context_with_the_engines_conventions() -> None:
    docker, env = container(sci(main="sim/main.py", args=["--n", "10"]))
    assert docker.image == "shoal/python-sci"
    assert [*docker.entrypoint, *docker.args] == ["python3", "/context/sim/main.py", "--n", "10"]
    assert docker.workdir == "/context" and not docker.network
    assert env["PYTHONHASHSEED"] == "0" and env["LANG"] == "C.UTF-8" and env["TZ"] == "UTC"
    assert env["OPENBLAS_NUM_THREADS"] == env["OMP_NUM_THREADS"] == env["MKL_NUM_THREADS"] == "1"
    assert env["HOME"] == "/tmp"  # the root file system is read-only


def test_inline_code_wheels_and_the_jobs_own_env() -> None:
    job = spec({"name": "python", "image": "img:1", "code": "print(1)", "args": ["a"],
                "requirements": [".shoal-wheels/six-1.16.0-py2.py3-none-any.whl"]},
               env={"OMP_NUM_THREADS": "4", "ALPHA": "0.5"})
    docker, env = container(job)
    assert [*docker.entrypoint, *docker.args] == ["python3", "-c", "print(1)", "a"]
    assert docker.workdir == "/tmp"  # no context travelled with it
    assert env["PYTHONPATH"] == "/context/.shoal-wheels/six-1.16.0-py2.py3-none-any.whl"
    assert env["ALPHA"] == "0.5" and env["OMP_NUM_THREADS"] == "4"  # the job's env is the last word


def test_docker_jobs_are_unchanged_and_pyodide_jobs_are_not_the_docker_executors() -> None:
    job = spec({"name": "docker", "image": "busybox", "entrypoint": ["sh"]}, env={"A": "1"})
    assert container(job) == (job.engine, {"HOME": "/tmp", "A": "1"})
    assert not set(PYTHON_ENV) & set(container(job)[1])
    with pytest.raises(ExecutorError, match="without an image"):
        container(spec({"name": "python", "code": "1"}))


def test_python_in_an_image_needs_docker_and_is_verified_not_cached() -> None:
    assert sci(main="m.py").engine.executor == "docker"
    assert spec({"name": "python", "code": "1"}).engine.executor == "python"
    assert sci(main="m.py").cache_key() is None  # real entropy and clocks; images of one name may differ
    assert spec({"name": "python", "code": "1"}).cache_key() is not None


def test_a_pyodide_jobs_bytes_are_what_they_were_before_image_existed() -> None:
    """The digest, cache key and seed of every python job stay those older nodes compute."""
    job = spec({"name": "python", "code": "print(1)"})
    assert "image" not in json.loads(job.canonical_json())["engine"]
    assert "image" not in job.model_dump(mode="json")["engine"]
    assert sci(main="m.py").model_dump(mode="json")["engine"]["image"] == "shoal/python-sci"


@pytest.mark.parametrize("image", ["", "two words", "x" * 300])
def test_a_bad_image_name_is_refused_by_the_spec(image: str) -> None:
    with pytest.raises(ValueError, match="image"):
        spec({"name": "python", "code": "1", "image": image})


def machine(engines: list[str], network: bool = False) -> ComputeMachine:
    return ComputeMachine(node_id="n", capacity=CapacityTracker(BIG), engines=engines, network=network)


def test_a_node_without_docker_passes_over_python_in_an_image() -> None:
    assert "'docker' not available" in (machine(["python"]).refusal(sci(main="m.py")) or "")
    assert machine(["docker"]).refusal(sci(main="m.py")) is None


def test_a_node_refuses_a_network_job_unless_its_operator_allows_network() -> None:
    job = spec({"name": "docker", "image": "busybox", "network": True})
    assert "--allow-network" in (machine(["docker"]).refusal(job) or "")
    assert machine(["docker"], network=True).refusal(job) is None
    assert machine(["docker"]).refusal(spec({"name": "docker", "image": "busybox"})) is None


def node(name: str, engines: tuple[str, ...] = ("docker",), network: bool = False) -> NodeInfo:
    return NodeInfo(peer_id=name, engines=list(engines), max_per_job=BIG, total=BIG, free=BIG, network=network)


def test_the_requester_fails_fast_when_no_node_gives_network_and_says_why() -> None:
    job = spec({"name": "docker", "image": "busybox", "network": True})
    why = never_runnable(job, [node("a"), node("b")])
    assert why is not None and "no compute node gives jobs network access (0 of 2 nodes" in why
    assert never_runnable(job, [node("a"), node("b", network=True)]) is None
    assert not can_ever_run(job, node("a")) and can_ever_run(job, node("b", network=True))
    assert "engine 'docker'" in (never_runnable(sci(main="m.py"), [node("p", engines=("python",))]) or "")
    assert can_ever_run(sci(main="m.py"), node("d"))


STATUS = """\
Package: base
Status: install ok installed
Priority: required
Essential: yes
Depends: libc

Package: libc
Status: install ok installed
Priority: optional

Package: sci
Status: install ok installed
Priority: optional
Depends: libc (>= 2), builder, blas-ref | libblas.so.3, helper:any

Package: helper
Status: install ok installed
Priority: optional

Package: builder
Status: install ok installed
Priority: optional
Depends: compiler, libc
Description: the build-time dependency
 a continuation line: Depends: nothing

Package: compiler
Status: install ok installed
Priority: optional
Depends: blas-fast

Package: blas-ref
Status: install ok installed
Priority: optional

Package: blas-fast
Status: install ok installed
Priority: optional
Provides: libblas.so.3

Package: removed
Status: deinstall ok config-files
Priority: optional
"""


def test_purging_a_dropped_dependency_takes_what_only_it_needed() -> None:
    assert unneeded_packages(STATUS, keep=["sci"], drop=["builder"]) == ["blas-fast", "builder", "compiler"]
    assert unneeded_packages(STATUS, keep=["sci"], drop=[]) == []
    assert unneeded_packages(STATUS, keep=[], drop=[]) == ["blas-fast", "blas-ref", "builder", "compiler", "helper",
                                                          "sci"]


def test_the_sci_image_is_built_from_debians_numpy_scipy_and_pandas() -> None:
    (image,) = [i for i in DEBIAN_IMAGES if i.tag == PYTHON_SCI_TAG]
    assert {"python3-numpy", "python3-scipy", "python3-pandas"} <= set(image.packages)


def test_wheels_are_resolved_for_the_python_of_the_pinned_pyodide(tmp_path: Path) -> None:
    lock = PYODIDE_PACKAGE.parent / "node_modules" / "pyodide" / "pyodide-lock.json"
    if lock.is_file():  # the installed Pyodide says which Python it runs: the pin must agree
        runs = json.loads(lock.read_text())["info"]["python"]
        assert runs.startswith(pyodide_python() + ".")
    pin = tmp_path / "package.json"
    pin.write_text(json.dumps({"dependencies": {"pyodide": "315.1.0"}}))
    assert pyodide_python(pin) == "3.15"
    pin.write_text(json.dumps({"dependencies": {"pyodide": "latest"}}))
    with pytest.raises(CLIError, match="latest"):
        pyodide_python(pin)
    with pytest.raises(CLIError, match="no Pyodide pin"):
        pyodide_python(tmp_path / "missing.json")
