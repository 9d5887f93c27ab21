"""A node's data dir and store are its user's alone: under the usual umask (022) the store was made 0644, so any
local user could read every job's spec, results, event log and the sealed secrets' blobs."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from node import datadir
from node.identity import KEY_FILE, load_or_create_seed
from node.store import Store


@pytest.fixture
def umask_022() -> Iterator[None]:
    old = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(old)


def others(path: Path) -> int:
    """The permission bits the group and other users have on ``path``."""
    return stat.S_IMODE(path.stat().st_mode) & 0o077


def store_files(path: Path) -> list[Path]:
    return [path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")]


async def test_a_new_data_dir_and_store_are_readable_by_the_nodes_user_only(tmp_path: Path, umask_022: None) -> None:
    data_dir = tmp_path / "node"
    with datadir.hold(data_dir):
        load_or_create_seed(data_dir)
        store = Store(data_dir / "shoal.db")
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            files = store_files(store.path)
            assert all(f.exists() for f in files)  # open in WAL mode: all three are there
            assert {f.name: others(f) for f in files} == dict.fromkeys(["shoal.db", "shoal.db-wal", "shoal.db-shm"], 0)
            assert stat.S_IMODE(store.path.stat().st_mode) == 0o600  # and the node can still write it
            nursery.cancel_scope.cancel()
    assert others(data_dir) == 0 and others(data_dir / KEY_FILE) == 0


async def test_an_existing_store_readable_by_others_is_tightened_on_open(tmp_path: Path, umask_022: None) -> None:
    path = tmp_path / "shoal.db"
    # an older node's store, with the -wal and -shm a crash leaves (here: another connection holds them)
    operator = sqlite3.connect(path, isolation_level=None)
    try:
        operator.execute("PRAGMA journal_mode=WAL")
        operator.execute("CREATE TABLE t (x)")
        files = store_files(path)
        assert [stat.S_IMODE(f.stat().st_mode) for f in files] == [0o644] * 3
        store = Store(path)
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            assert {f.name: others(f) for f in files} == dict.fromkeys(["shoal.db", "shoal.db-wal", "shoal.db-shm"], 0)
            nursery.cancel_scope.cancel()
    finally:
        operator.close()


def test_an_existing_data_dir_readable_by_others_is_tightened_when_a_node_takes_it(tmp_path: Path) -> None:
    """A data dir an earlier release made 0755: its results/ and node.lock were anyone's to read."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    with datadir.hold(data):
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
