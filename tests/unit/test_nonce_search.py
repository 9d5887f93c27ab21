"""examples/nonce-search/main.py under plain CPython: its finds are checked against an independent search."""

from __future__ import annotations

import hashlib
import importlib.util
import itertools
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

MAIN = Path(__file__).resolve().parents[2] / "examples" / "nonce-search" / "main.py"
BLOCK = "shoal nonce-search example block"


def sha256d(block: bytes, nonce: int) -> bytes:
    return hashlib.sha256(hashlib.sha256(block + nonce.to_bytes(4, "big")).digest()).digest()


def zero_bits(digest: bytes) -> int:
    bits = bin(int.from_bytes(digest, "big"))[2:].zfill(256)
    return len(bits) - len(bits.lstrip("0"))


def first_hit(block: bytes, difficulty: int, start: int, end: int) -> int | None:
    """The reference: the plainest possible search."""
    return next((n for n in range(start, end) if zero_bits(sha256d(block, n)) >= difficulty), None)


def nonce_range(index: int, count: int) -> range:
    return range(index * 2**32 // count, (index + 1) * 2**32 // count)


def run_main(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path / "outputs"
    full_env = {"PATH": os.environ.get("PATH", ""), "OUTPUT_DIR": str(out), **env}
    proc = subprocess.run([sys.executable, str(MAIN)], env=full_env, capture_output=True, text=True, timeout=60)
    return proc, out


@pytest.fixture(scope="module")
def program() -> ModuleType:
    spec = importlib.util.spec_from_file_location("nonce_search_main", MAIN)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("block_env", [BLOCK, "0x" + BLOCK.encode().hex(), BLOCK.encode().hex()])
def test_finds_the_first_valid_nonce_of_its_range(tmp_path: Path, block_env: str) -> None:
    count, index, difficulty = 2**22, 12345, 8  # ranges of 1024 nonces: one almost surely has a 1-in-256 hit
    nonces = nonce_range(index, count)
    expected = first_hit(BLOCK.encode(), difficulty, nonces.start, nonces.stop)
    assert expected is not None

    proc, out = run_main(tmp_path, BLOCK=block_env, DIFFICULTY=str(difficulty),
                         SHOAL_INDEX=str(index), SHOAL_COUNT=str(count))
    assert proc.returncode == 0, proc.stderr
    nonce_text, hash_hex = (out / "nonce.txt").read_text().split()
    nonce = int(nonce_text)
    assert nonce == expected and nonce in nonces
    assert hash_hex == sha256d(BLOCK.encode(), nonce).hex()
    assert zero_bits(bytes.fromhex(hash_hex)) >= difficulty
    assert f"FOUND nonce {nonce}" in proc.stdout


def test_a_range_without_a_solution_exits_0_and_writes_nothing(tmp_path: Path) -> None:
    count, difficulty = 2**24, 16  # ranges of 256 nonces: a 1-in-65536 hit is rarely among them
    index = next(i for i in range(100) if first_hit(BLOCK.encode(), difficulty, *_bounds(i, count)) is None)

    proc, out = run_main(tmp_path, DIFFICULTY=str(difficulty), SHOAL_INDEX=str(index), SHOAL_COUNT=str(count))
    assert proc.returncode == 0, proc.stderr
    assert not out.exists() or not any(out.iterdir())
    assert "no nonce with 16 leading zero bits" in proc.stdout


def _bounds(index: int, count: int) -> tuple[int, int]:
    r = nonce_range(index, count)
    return r.start, r.stop


def test_defaults_and_bad_settings(tmp_path: Path) -> None:
    proc, out = run_main(tmp_path, DIFFICULTY="4")  # one index: the whole space from 0
    assert proc.returncode == 0, proc.stderr
    assert int((out / "nonce.txt").read_text().split()[0]) == first_hit(BLOCK.encode(), 4, 0, 1000)

    for env in ({"DIFFICULTY": "x"}, {"SHOAL_INDEX": "3", "SHOAL_COUNT": "3"}, {"DIFFICULTY": "257"},
                {"BLOCK": "0xzz"}):
        proc, out = run_main(tmp_path, **env)
        assert proc.returncode == 2 and "nonce-search:" in proc.stderr, env


def test_shares_tile_the_nonce_space(program: ModuleType) -> None:
    for count in (1, 3, 32, 1000):
        bounds = [program.share(i, count) for i in range(count)]
        assert bounds[0][0] == 0 and bounds[-1][1] == 2**32
        assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize(("start", "end"), [(0, 4096), (1_431_655_765, 1_431_655_765 + 3000), (700, 1000),
                                            (5, 6), (2**32 - 2000, 2**32)])
def test_search_matches_the_reference_on_unaligned_ranges(program: ModuleType, start: int, end: int) -> None:
    block = b"\x00\x01unaligned"
    for difficulty in (0, 6, 9):
        found = program.search(block, difficulty, start, end)
        expected = first_hit(block, difficulty, start, end)
        assert (found[0] if found else None) == expected, (difficulty, start, end)
        if found:
            assert found[1] == sha256d(block, found[0])
