"""The store's writer: a caller's write returns only once committed, or raises."""

from __future__ import annotations

import sqlite3

import pytest
import trio
import trio.testing

from node.store.writer import StoreClosed, Writer


async def test_a_write_cancelled_before_its_commit_began_is_not_reported_as_made(tmp_path):
    conn = sqlite3.connect(tmp_path / "w.db", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    commit_started = trio.Event()

    async def stuck_before_the_commit(fn, *args):  # the shutdown comes while the batch waits for its thread
        commit_started.set()
        await trio.sleep_forever()

    writer = Writer(conn, run_blocking=stuck_before_the_commit)
    outcome: list[BaseException | None] = []

    async def write() -> None:
        try:
            await writer.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
            outcome.append(None)
        except StoreClosed as e:
            outcome.append(e)

    async with trio.open_nursery() as writers, trio.open_nursery() as store:  # only the store stops
        await store.start(writer.run)
        writers.start_soon(write)
        await commit_started.wait()
        store.cancel_scope.cancel()
    assert len(outcome) == 1 and isinstance(outcome[0], StoreClosed)
    check = sqlite3.connect(tmp_path / "w.db")
    assert check.execute("SELECT count(*) FROM t").fetchone() == (0,)
    with pytest.raises(StoreClosed):
        await writer.write(lambda c: None)


async def test_a_caller_stopping_with_the_store_stops_as_cancelled_not_with_an_error(tmp_path):
    """One nursery holds the store and the roles, and a signal cancels it: a role's task whose write
    the shutdown cut off ends cancelled, as everything else does (StoreClosed made a clean stop a crash)."""
    conn = sqlite3.connect(tmp_path / "w.db", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    commit_started = trio.Event()

    async def stuck_before_the_commit(fn, *args):
        commit_started.set()
        await trio.sleep_forever()

    writer = Writer(conn, run_blocking=stuck_before_the_commit)
    made: list[bool] = []

    async def write() -> None:
        await writer.write(lambda c: c.execute("INSERT INTO t VALUES (1)"))
        made.append(True)

    async with trio.open_nursery() as node:  # raises if a task ended with an error rather than cancelled
        await node.start(writer.run)
        node.start_soon(write)
        await commit_started.wait()
        node.cancel_scope.cancel()
    assert made == []
    assert sqlite3.connect(tmp_path / "w.db").execute("SELECT count(*) FROM t").fetchone() == (0,)
