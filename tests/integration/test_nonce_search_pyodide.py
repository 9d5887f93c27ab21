"""examples/nonce-search through the real python executor (Node.js + Pyodide), as one index of its sweep runs."""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path

import pytest

from executors.base import Mount, RunRequest
from executors.pyodide import PyodideExecutor
from jobs import JobSpec, OutputSpec, PythonEngine, RunResult
from jobs.sweep import SweepSpec

pytestmark = pytest.mark.skipif(
    not PyodideExecutor(Path("/nonexistent")).is_installed(), reason="Pyodide not installed: scripts/install-pyodide"
)

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "nonce-search"
BLOCK = b"shoal nonce-search example block"  # main.py's default
COUNT = 32


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One snapshot for the whole module: building it takes seconds."""
    return tmp_path_factory.mktemp("pyodide-cache")


def sweep(difficulty: int, parts: int = COUNT, subparts: int = 0) -> SweepSpec:
    """What ``shoal run python main.py --sweep sweep.yaml --success any --success-output nonce
    --output nonce:/outputs --env DIFFICULTY=...`` submits (less the context input)."""
    job = JobSpec(engine=PythonEngine(main="main.py"), env={"DIFFICULTY": str(difficulty)},
                  outputs=[OutputSpec(name="nonce", path="/outputs")])
    grid = {"PART": [str(i) for i in range(parts)]}
    if subparts:
        grid["SUBPART"] = [str(i) for i in range(subparts)]
    return SweepSpec(job=job, grid=grid, success="any", success_output="nonce")


def sha256d(nonce: int) -> bytes:
    return hashlib.sha256(hashlib.sha256(BLOCK + nonce.to_bytes(4, "big")).digest()).digest()


def output_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else 0


async def run_index(cache_dir: Path, tmp_path: Path, spec: SweepSpec, index: int) -> tuple[RunResult, Path]:
    context = tmp_path / "context"
    if not context.exists():
        shutil.copytree(EXAMPLE, context, ignore=shutil.ignore_patterns("__pycache__"))
    work = tmp_path / f"work-{index}-{time.monotonic_ns()}"
    request = RunRequest("sweep-1", f"sweep-1-{index}", spec.job_for(index), work, work / "outputs",
                         (Mount(context, "/context"),), b"seed-1")
    result = await PyodideExecutor(cache_dir, pool_size=0).run(request)
    out = request.outputs_dir / "nonce"
    return result.model_copy(update={"output_sizes": {"nonce": output_size(out)}}), out


async def test_an_index_finds_a_valid_nonce_in_its_share(cache_dir: Path, tmp_path: Path) -> None:
    spec, index, difficulty = sweep(12), 7, 12
    result, out = await run_index(cache_dir, tmp_path, spec, index)
    assert result.exit_code == 0, result.stderr
    assert spec.is_hit(result)

    nonce_text, hash_hex = (out / "nonce.txt").read_text().split()
    nonce = int(nonce_text)
    assert index * 2**32 // COUNT <= nonce < (index + 1) * 2**32 // COUNT
    digest = sha256d(nonce)
    assert hash_hex == digest.hex()
    assert int.from_bytes(digest, "big") >> (256 - difficulty) == 0
    assert f"FOUND nonce {nonce}" in result.stdout
    # the first hit of the share: no earlier nonce of it qualifies
    assert all(int.from_bytes(sha256d(n), "big") >> (256 - difficulty)
               for n in range(index * 2**32 // COUNT, nonce))


async def test_a_share_without_a_solution_is_not_a_hit(cache_dir: Path, tmp_path: Path) -> None:
    spec = sweep(24, parts=1000, subparts=1000)  # a million indexes: shares of 4294-4295 nonces
    first_share = range(0, 2**32 // 1_000_000 + 1)
    assert all(int.from_bytes(sha256d(n), "big") >> (256 - 24) for n in first_share)  # none qualifies
    result, out = await run_index(cache_dir, tmp_path, spec, 0)
    assert result.exit_code == 0, result.stderr
    assert not spec.is_hit(result)
    assert output_size(out) == 0
    assert "no nonce with 24 leading zero bits" in result.stdout
