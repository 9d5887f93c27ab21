"""A node upgraded on a data dir holding sweeps the previous release took and this one refuses starts, and its
client lists and describes what is left."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from shoal import Client, NotFound
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

FIXTURE = Path(__file__).parent.parent / "fixtures" / "store-ca036c6-sweeps.db"  # make_refused_sweeps_store.py


def test_a_node_starts_on_sweeps_the_previous_release_took_and_lists_the_rest(tmp_path):
    """ca036c6 took a sweep of 300 parameters and one of a 70,000-character value: upgraded, the node exited at
    start (the live one), or answered its owner's listings "the node failed to handle this request"."""
    port = free_base_port(1)
    (tmp_path / "node").mkdir()
    db = tmp_path / "node" / "shoal.db"
    shutil.copyfile(FIXTURE, db)
    with Client(f"http://127.0.0.1:{port}") as client:
        with sqlite3.connect(db) as conn:  # this test's client owns the fixture's records
            for table in ("jobs", "sweeps"):
                conn.execute(f"UPDATE {table} SET owner=?, body=json_set(body, '$.owner', ?)", (client.client_id,) * 2)
        with noop_node(tmp_path, port, log=(log := [])):
            assert [s.id for s in client.list_sweeps().sweeps] == ["s-ok"]
            assert [j.id for j in client.list().jobs] == ["j-done"]
            for gone in ("s-params", "s-big"):
                with pytest.raises(NotFound):
                    client.describe_sweep(gone)
    assert any("2 records stored by an earlier Shoal break rules made stricter since" in line for line in log)
