"""Python in an image and network for docker jobs, on a real devstack with real Docker, driven by the CLI.

Three nodes with one Kubo each; only node 2 allows network (``--allow-network``). A seeded numpy program
runs on two nodes with ``--confidence 2``: the job completes only if both computed the same bytes.
Skipped when no Docker daemon answers or ``shoal/python-sci`` is missing (``shoal images build``), unless
``SHOAL_REQUIRE_DOCKER=1`` (CI), where that fails instead.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from devstack import Devstack
from devstack.kubo import ipfs_binary
from executors.images import PYTHON_SCI_TAG
from tests.integration.rogue import free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed "
                                                   "(scripts/install-kubo)")]

SCI = "shoal/python-sci"
MONTE_CARLO = textwrap.dedent("""
    import hashlib, sys
    import numpy as np, pandas as pd
    from scipy import stats

    rng = np.random.default_rng(int(sys.argv[1]))
    paths = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, size=(2000, 250)), axis=1))
    payoff = np.maximum(paths[:, -1] - 100, 0)
    cov = np.cov(paths[:, ::25].T)  # BLAS and LAPACK at work
    chol = np.linalg.cholesky(cov + 1e-6 * np.eye(len(cov)))
    frame = pd.DataFrame({"payoff": payoff, "last": paths[:, -1]}).describe()
    frame.to_csv("/outputs/summary.csv")
    np.save("/outputs/chol.npy", chol)
    digest = hashlib.sha256(paths.tobytes() + chol.tobytes()).hexdigest()
    print(f"price={payoff.mean():.6f} ks={stats.kstest(payoff, 'norm').statistic:.6f} digest={digest}")
""")


def _require(reason: str) -> None:
    if os.environ.get("SHOAL_REQUIRE_DOCKER") == "1":
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def daemon() -> docker.DockerClient:
    try:
        return docker.from_env(timeout=60)
    except docker.errors.DockerException:
        _require("no Docker daemon answers; run scripts/install-docker")
        raise


@pytest.fixture(scope="module")
def stack(tmp_path_factory, daemon):
    try:
        daemon.images.get(PYTHON_SCI_TAG)
    except docker.errors.ImageNotFound:
        _require(f"{PYTHON_SCI_TAG} is missing: shoal images build (scripts/install-docker)")
    home = tmp_path_factory.mktemp("python-image")
    os.environ["SHOAL_HOME"] = str(home / "home")
    devstack = Devstack(3, base_dir=home / "stack", base_port=free_base_port(3), kubo=True, write_state=False,
                        node_args={2: ["--allow-network"]})
    trio.run(devstack.start)
    try:
        yield devstack
    finally:
        trio.run(devstack.stop)


def shoal(stack: Devstack, *args: str, cwd: Path | None = None, timeout: float = 300,
          node: int = 0) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_API": stack.nodes[node].api, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=cwd)


def describe(stack: Devstack, job_id: str) -> dict:
    out = shoal(stack, "describe", job_id, "--json")
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_a_seeded_numpy_program_gives_the_same_bytes_on_two_nodes(stack, tmp_path):
    (tmp_path / "main.py").write_text(MONTE_CARLO)
    # a core each, as a quant would ask (the default tenth of one took most of this test's time)
    out = shoal(stack, "run", "python", "main.py", "7", "--image", SCI, "--concurrency", "2", "--confidence", "2",
                "--memory", "256MiB", "--cpu", "1", "-o", "outputs:/outputs", "--id-only", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    job = describe(stack, job_id)
    assert job["job"]["state"] == "completed", job
    done = [x for x in job["executions"] if x["state"] == "completed"]
    assert len(done) == 2 and len({x["node_id"] for x in done}) == 2  # two nodes, one verified result
    assert len({x["result"]["cid"] for x in done}) == 1, done
    logs = shoal(stack, "logs", job_id)
    assert logs.returncode == 0 and logs.stdout.startswith("price=") and "digest=" in logs.stdout
    got = tmp_path / "got"
    assert shoal(stack, "get", job_id, "--output-dir", str(got)).returncode == 0
    summary = next(got.rglob("summary.csv")).read_text()
    assert summary.startswith(",payoff,last\ncount,2000.0,2000.0")
    # another seed is another result: the program, not a constant, made those bytes
    again = shoal(stack, "run", "python", "main.py", "8", "--image", SCI, "--memory", "256MiB", "--cpu", "1", "-o",
                  "outputs:/outputs", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.split("digest=")[1] != logs.stdout.split("digest=")[1]


def test_the_python_engines_conventions_hold_in_an_image(stack, tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rates.txt").write_text("0.01 0.02\n")
    (tmp_path / "helper.py").write_text("NAME = 'helper from the context'\n")
    code = textwrap.dedent("""
        import os, sys, helper
        print("cwd", os.getcwd())
        print("argv", sys.argv[1:])
        print("rates", open("data/rates.txt").read().split())
        print("import", helper.NAME)
        print("env", os.environ["ALPHA"], os.environ["PYTHONHASHSEED"], os.environ["OPENBLAS_NUM_THREADS"],
              os.environ["OMP_NUM_THREADS"], os.environ["MKL_NUM_THREADS"])
        print("hash", hash("shoal"))
        print("root", os.getuid() == 0)
        for path in ("/context/new.txt", "/usr/x"):
            try:
                open(path, "w")
                print("wrote", path)
            except OSError as e:
                print("refused", path, type(e).__name__)
        os.makedirs("/outputs/out", exist_ok=True)
        open("/outputs/out/answer.txt", "w").write("42\\n")
    """)
    (tmp_path / "main.py").write_text(code)
    out = shoal(stack, "run", "python", "--image", SCI, "--env", "ALPHA=0.5", "-o", "outputs:/outputs", "--id-only",
                "--", "main.py", "a", "-b", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()
    lines = shoal(stack, "logs", job_id).stdout.splitlines()
    assert "cwd /context" in lines and "argv ['a', '-b']" in lines and "rates ['0.01', '0.02']" in lines
    assert "import helper from the context" in lines and "env 0.5 0 1 1 1" in lines and "root False" in lines
    hashed = [ln for ln in lines if ln.startswith("hash ")]
    here = subprocess.run([sys.executable, "-c", "print('hash', hash('shoal'))"], capture_output=True, text=True,
                          env={"PYTHONHASHSEED": "0"})  # 64-bit CPython (Pyodide's hashes are 32-bit)
    assert hashed == [here.stdout.strip()]
    assert any(ln.startswith("refused /context/new.txt") for ln in lines)
    assert any(ln.startswith("refused /usr/x") for ln in lines)
    got = tmp_path / "got"
    assert shoal(stack, "get", job_id, "--output-dir", str(got)).returncode == 0
    assert next(got.rglob("answer.txt")).read_text() == "42\n"
    inline = shoal(stack, "run", "python", "-c", "import sys, numpy; print(numpy.arange(3).sum(), sys.argv[1:])",
                   "x", "--image", SCI)
    assert inline.returncode == 0, inline.stderr
    assert inline.stdout == "3 ['x']\n"


def test_a_failing_program_in_an_image_fails_like_python(stack, tmp_path):
    out = shoal(stack, "run", "python", "-c", "raise SystemExit(3)", "--image", SCI)
    assert out.returncode == 1 and "exit code 3" in out.stderr
    (tmp_path / "main.py").write_text("import numpy\n1 / 0\n")
    out = shoal(stack, "run", "python", "main.py", "--image", SCI, cwd=tmp_path)
    assert out.returncode == 1 and "exit code 1" in out.stderr
    job_id = out.stderr.split()[1]  # "Job j-… submitted"
    traceback = shoal(stack, "logs", job_id, "--stderr").stdout
    assert 'File "/context/main.py", line 2' in traceback
    assert traceback.endswith("ZeroDivisionError: division by zero\n")


def test_network_runs_on_the_node_that_allows_it(stack):
    out = shoal(stack, "docker", "run", "--network", "--id-only", "busybox", "--", "sh", "-c", "ls /sys/class/net")
    assert out.returncode == 0, out.stderr
    job = describe(stack, out.stdout.strip())
    assert job["job"]["state"] == "completed"
    (ran,) = [x for x in job["executions"] if x["state"] == "completed"]
    assert ran["node_id"] == stack.nodes[2].peer_id
    lines = shoal(stack, "logs", out.stdout.strip()).stdout.split()
    assert "eth0" in lines and "lo" in lines  # a network, not just loopback
    plain = shoal(stack, "docker", "run", "busybox", "--", "sh", "-c", "ls /sys/class/net")
    assert plain.stdout.split() == ["lo"]  # without --network, none, on every node


def test_network_is_refused_with_a_reason_where_no_node_allows_it(daemon, tmp_path):
    os.environ["SHOAL_HOME"] = str(tmp_path / "home")
    stack = Devstack(1, base_dir=tmp_path / "stack", base_port=free_base_port(1), write_state=False)

    async def run() -> subprocess.CompletedProcess:
        async with stack:
            return await trio.to_thread.run_sync(lambda: shoal(
                stack, "docker", "run", "--network", "busybox", "--", "true", timeout=120))

    out = trio.run(run)
    assert out.returncode == 1
    assert "no compute node gives jobs network access" in out.stderr and "--allow-network" in out.stderr
    assert "Traceback" not in out.stderr


def test_a_sweep_runs_each_index_in_the_image_with_its_values(stack, tmp_path):
    (tmp_path / "main.py").write_text(
        "import os, numpy as np\nprint(np.full(2, float(os.environ['alpha'])).sum(), os.environ['SHOAL_INDEX'])\n")
    out = shoal(stack, "run", "python", "main.py", "--image", SCI, "--param", "alpha=0.5,1.5", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    sweep_id = next(word for word in out.stdout.split() + out.stderr.split() if word.startswith("s-"))
    logs = [shoal(stack, "sweep", "logs", sweep_id, str(i)).stdout for i in range(2)]
    assert logs == ["1.0 0\n", "3.0 1\n"]
