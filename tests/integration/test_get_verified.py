"""``shoal get`` against a real node process whose stored results were tampered with.

The node serves a well-formed tar under the genuine CID, with the genuine ``X-Shoal-CID`` header:
only the bytes differ. The CLI must refuse with one line, and write nothing; once the stored copy
is genuine again, the same command works.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal import Client, ClientKey
from tests.integration.rogue import free_base_port
from tests.integration.single_node import SHOAL, noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"http://127.0.0.1:{PORT}"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("get-home")
    with noop_node(home, PORT):
        yield home


def shoal(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SHOAL_HOME": str(home)}
    return subprocess.run([SHOAL, "--api", API, *args], capture_output=True, text=True, env=env, timeout=60)


def test_a_tampered_result_is_refused_and_nothing_is_written(node: Path, tmp_path: Path) -> None:
    with Client(API, key=ClientKey.load_or_create(node / "client.key")) as client:
        spec = {"engine": {"name": "noop"}, "outputs": [{"name": "o", "path": "/out"}]}  # outputs: a published CID
        job = client.wait(client.submit(spec, cache=False).job.id, timeout=30)
    cid = job.job.result.cid
    assert job.job.state == "completed" and cid
    stored = node / "node" / "results" / cid / "exitCode"
    genuine = stored.read_text()
    os.chmod(stored, 0o644)
    stored.write_text("1")  # same size, same names, same header: other bytes

    result = shoal(node, "get", job.job.id, "-o", str(tmp_path / "out"))
    assert result.returncode == 1, result.stderr
    [line] = result.stderr.splitlines()
    assert line.startswith(f"Error: the results of job {job.job.id} do not match their CID {cid}")
    assert line.endswith("the download was corrupted or tampered with; nothing was written")
    assert list(tmp_path.iterdir()) == []  # no target, no partial directory beside it

    stored.write_text(genuine)
    result = shoal(node, "get", job.job.id, "-o", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "exitCode").read_text() == "0" and (tmp_path / "out" / "stdout").read_text() == ""
