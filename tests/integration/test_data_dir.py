"""A node's data dir, as an operator meets it: started twice, damaged, or impossible to make. Each refusal is
one line, and what the data dir holds is left as it was."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from shoal import Client
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow


def serve(home: Path, data: Path, port: int) -> subprocess.CompletedProcess:
    """``shoal serve`` on ``data``, expected to refuse to start."""
    return subprocess.run([sys.executable, "-m", "cli.main", "serve", "--noop", "--data-dir", str(data),
                           "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", str(port), "--ipfs-api", "none"],
                          capture_output=True, text=True, timeout=60, env={**os.environ, "SHOAL_HOME": str(home)})


def one_error(done: subprocess.CompletedProcess) -> str:
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "Traceback" not in done.stderr and "unexpected" not in errors[0], done.stderr
    return errors[0]


def test_a_second_node_on_a_data_dir_in_use_refuses_to_start_and_takes_nothing_of_the_first(tmp_path):
    """A second node on the same data dir removed the first one's running containers as left behind, resumed
    its jobs as its own, and the two then told clients different states of one job for good."""
    port = free_base_port(2)
    with noop_node(tmp_path, port) as ready, Client(ready["api"]) as client:
        job = client.submit({"engine": {"name": "noop", "delay": 3.0}}).job.id
        error = one_error(serve(tmp_path, tmp_path / "node", port + 1))
        assert f"the data dir {tmp_path / 'node'} is in use by another node (pid " in error
        done = client.wait(job, timeout=60)
        assert done.job.state.value == "completed" and done.job.requester == ready["peer_id"]


def test_a_damaged_store_is_refused_at_start_and_left_as_it_was(tmp_path):
    """Pages of a store overwritten (a disk fault): the node said it was ready, then answered every request for
    a job with "the node failed to handle this request (DatabaseError)"."""
    port = free_base_port(1)
    with noop_node(tmp_path, port) as ready, Client(ready["api"]) as client:
        for _ in range(200):
            client.submit({"engine": {"name": "noop"}, "env": {"PAD": "x" * 2000}})
    db = tmp_path / "node" / "shoal.db"
    with sqlite3.connect(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        assert conn.execute("PRAGMA page_count").fetchone()[0] > 20
    with db.open("r+b") as f:  # pages 10-13: past the header and the schema, into the tables
        f.seek(page_size * 10)
        f.write(os.urandom(page_size * 4))
    before = hashlib.sha256(db.read_bytes()).hexdigest()
    error = one_error(serve(tmp_path, tmp_path / "node", port))
    assert f"the store {db} is damaged (" in error and "restore it from a backup, or move it away" in error
    assert hashlib.sha256(db.read_bytes()).hexdigest() == before


def test_a_data_dir_that_cannot_be_made_is_said_in_one_line(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    error = one_error(serve(tmp_path, tmp_path / "file" / "node", free_base_port(1)))
    assert f"cannot use the data dir {tmp_path / 'file' / 'node'}: Not a directory" in error


def test_a_data_dir_too_long_for_what_jobs_may_write_below_it_is_said_in_one_line(tmp_path):
    """A job's outputs may hold paths of 3,000 bytes on every node; below a data dir whose own path is long, such
    a path passed the system's 4,095 bytes, and the job failed on that node alone (as nested too deep), a result
    other nodes outvoted. A node refuses such a data dir at start, and makes nothing in it."""
    data = tmp_path.joinpath(*["a-data-dir-far-too-deep-for-the-jobs-it-would-hold"] * 16)
    error = one_error(serve(tmp_path, data, free_base_port(1)))
    assert f"the data dir's path is {len(os.fsencode(data)):,} bytes long; at most 768: a job's outputs may hold " \
           "paths of 3,000 bytes below it" in error
    assert not data.exists()
