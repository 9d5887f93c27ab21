"""A store whose pages are damaged while its node runs (a disk fault): the node says so in one line and stops, as
it refuses to start on one. It answered each request reading them with a 500 naming only "DatabaseError", logged
a traceback each, and kept saying it was ready; its writer's first failed commit then took it down with a
traceback."""

from __future__ import annotations

import os
import sqlite3
import subprocess
from contextlib import closing
from pathlib import Path

from shoal import Client, ClientKey, ConnectionFailed, ShoalAPIError
from tests.integration.rogue import free_base_port
from tests.integration.single_node import SHOAL, _wait_for_ready

PAGE = 4096


def test_a_store_damaged_while_its_node_runs_stops_the_node_in_one_line(tmp_path: Path) -> None:
    port = free_base_port(1)
    node = subprocess.Popen([SHOAL, "serve", "--noop", "--data-dir", str(tmp_path / "node"), "--api-port", str(port),
                             "--ipfs-api", "none"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "SHOAL_HOME": str(tmp_path)})
    answers: list[ShoalAPIError] = []
    try:
        _wait_for_ready(node, 60)
        with Client(f"http://127.0.0.1:{port}", key=ClientKey.generate(), timeout=10) as client:
            jobs = [client.submit({"engine": {"name": "noop"}, "env": {"N": str(i)}}) for i in range(200)]
            for job in jobs:
                client.wait(job.job.id, timeout=60)
            db = tmp_path / "node" / "shoal.db"
            with closing(sqlite3.connect(db)) as conn:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # what the jobs wrote is in the file's pages now
            with open(db, "r+b") as f:
                for page in range(2, os.path.getsize(db) // PAGE, 3):
                    f.seek(page * PAGE)
                    f.write(os.urandom(PAGE))
            for job in jobs:
                try:
                    client.describe(job.job.id)
                except ConnectionFailed:
                    break
                except ShoalAPIError as e:
                    answers.append(e)
        node.wait(timeout=30)
    finally:
        node.kill()
        _, err = node.communicate(timeout=30)
    log = err.decode()
    assert node.returncode not in (0, None) and "Traceback" not in log, log[-3000:]
    stopped = [line for line in log.splitlines() if "node stopped" in line]
    assert len(stopped) == 1 and "is damaged" in stopped[0] and "restore it from a backup" in stopped[0], log[-3000:]
    assert all(e.status == 503 and "is damaged" in str(e) for e in answers), answers
