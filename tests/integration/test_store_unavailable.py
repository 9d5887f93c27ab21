"""A real node whose SQLite store cannot be written for a while (another process holds it, as an
operator's ``sqlite3`` shell would, or the disk is full): it answers signed requests 503 saying why,
makes nothing of them, and carries on once it can write again. Such a refusal once ended the node's process at
the first signed request."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from shoal import Client, ClientKey
from shoal._errors import ServerError
from tests.integration.rogue import free_base_port
from tests.integration.single_node import SHOAL, noop_node

pytestmark = pytest.mark.slow

NOOP = {"engine": {"name": "noop"}}


def test_a_node_whose_store_is_locked_answers_503_and_carries_on_once_it_is_free(tmp_path: Path) -> None:
    port = free_base_port(1)
    with noop_node(tmp_path, port, expected_errors=("cannot write the store",)) as ready, \
            Client(ready["api"], key=ClientKey.generate()) as client:
        client.submit_retry_delays = ()  # the node's own answer, which the SDK would otherwise try again
        before = client.submit(NOOP)
        assert client.wait(before.job.id, timeout=30).job.state.value == "completed"
        operator = sqlite3.connect(tmp_path / "node" / "shoal.db", isolation_level=None, check_same_thread=False)
        operator.execute("BEGIN EXCLUSIVE")
        released = threading.Timer(12.0, lambda: operator.execute("COMMIT"))
        released.start()
        try:
            started = time.monotonic()
            with pytest.raises(ServerError) as refused:
                client.submit(NOOP)
            assert refused.value.status == 503
            assert "cannot write its store now: database is locked" in refused.value.message
            assert time.monotonic() - started < 11  # answered while the store is still held
            with pytest.raises(ServerError, match="cannot write its store now"):
                client.list()  # every signed request records its nonce (replays are refused across restarts)
        finally:
            released.join()
        after = client.submit(NOOP)  # the same process, free again
        assert client.wait(after.job.id, timeout=30).job.state.value == "completed"
        assert {j.id for j in client.list().jobs} == {before.job.id, after.job.id}  # the refused one made nothing


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 2 MiB file system of its own (tmpfs: needs root, as CI has)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(disk: Path, leave_kib: int) -> Path:
    """Fill ``disk`` up to ``leave_kib`` KiB free; the file that takes the room."""
    filler = disk / "filler"
    filler.unlink(missing_ok=True)
    free = shutil.disk_usage(disk).free
    with filler.open("wb") as f:
        f.write(b"\0" * max(0, free - leave_kib * 1024))
    return filler


def test_a_node_started_on_a_full_disk_names_the_file_and_starts_whole_once_there_is_room(small_disk, tmp_path):
    """It exited with "unexpected OSError: [Errno 28]" naming nothing, and left an empty node.key that
    every later start refused ("not a 32-byte seed") until someone moved it away."""
    data = small_disk / "node"
    port = free_base_port(1)
    serve = [SHOAL, "serve", "--noop", "--data-dir", str(data), "--api-port", str(port), "--ipfs-api", "none"]
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home")}

    def start() -> str:
        done = subprocess.run(serve, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode != 0 and "Traceback" not in done.stderr
        return done.stderr.strip().splitlines()[-1]

    filler = fill(small_disk, 0)
    assert start() == f"Error: cannot keep the node's identity in {data / 'node.key'}: No space left on device"
    assert not (data / "node.key").exists()  # nothing half written
    fill(small_disk, 24)  # room for the key, not for the store
    assert start().startswith(f"Error: cannot open the store {data / 'shoal.db'}: ")
    filler.unlink()
    with noop_node(tmp_path, port, args=["--data-dir", str(data)]) as first:
        pass
    with noop_node(tmp_path, port, args=["--data-dir", str(data)]) as again:
        assert again["peer_id"] == first["peer_id"]
