"""The store's writer: a caller's write returns only once committed, or raises."""

from __future__ import annotations

import sqlite3

import pytest
import trio
import trio.testing

from node.store.schema import StoreDamaged
from node.store.writer import StoreClosed, StoreUnavailable, Writer


async def test_a_write_cancelled_before_its_commit_began_is_not_reported_as_made(tmp_path):
    conn = sqlite3.connect(tmp_path / "w.db", check_same_thread=False, isolation_level=None)
    conn.execute("CREATE TABLE t (x)")
    commit_started = trio.Event()

    async def stuck_before_the_commit(fn, *args):  # the shutdown comes while the batch waits for its thread
        commit_started.set()
        await trio.sleep_forever()

    writer = Writer(conn, tmp_path / "w.db", run_blocking=stuck_before_the_commit)
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

    writer = Writer(conn, tmp_path / "w.db", run_blocking=stuck_before_the_commit)
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


async def _written_or_refused(writer: Writer, outcome: dict[str, object], name: str, *, wait: bool = True,
                              statement: str = "INSERT INTO t VALUES (?)") -> None:
    try:
        await writer.write(lambda c: c.execute(statement, (name,)), wait=wait)
        outcome[name] = "written"
    except Exception as e:
        outcome[name] = e


async def _until(condition, seconds: float = 20.0) -> None:
    with trio.fail_after(seconds):
        while not condition():
            await trio.sleep(0.05)


async def test_a_full_store_holds_its_writes_until_there_is_room_and_the_node_carries_on(tmp_path):
    """SQLite's 'database or disk is full' once ended the writer's task, and with it the node (found by
    filling a node's data dir). Now nothing of the refused batch is written, its writers wait, and it
    commits once there is room; an API request's write, which may not wait, is refused at once."""
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count={pages}")  # the disk is full: no page more
    writer = Writer(conn, tmp_path / "w.db")
    outcome: dict[str, object] = {}
    big = "x" * 100_000
    async with trio.open_nursery() as node:  # raises if the writer's task ends with an error
        await node.start(writer.run)
        node.start_soon(_written_or_refused, writer, outcome, big)
        node.start_soon(lambda: _written_or_refused(writer, outcome, "nonce", wait=False))
        await _until(lambda: "nonce" in outcome)
        assert isinstance(outcome["nonce"], StoreUnavailable)
        assert "database or disk is full" in str(outcome["nonce"]) and outcome["nonce"].retryable
        await trio.sleep(1.0)
        assert big not in outcome  # held, neither failed nor written
        conn.execute(f"PRAGMA max_page_count={pages * 1000}")  # room again
        await _until(lambda: big in outcome)
        await writer.write(lambda c: c.execute("INSERT INTO t VALUES ('after')"))
        node.cancel_scope.cancel()
    assert outcome[big] == "written"
    rows = sqlite3.connect(path).execute("SELECT x FROM t").fetchall()
    assert rows == [(big,), ("after",)]  # the refused nonce was not written


async def test_a_store_another_process_locks_makes_writes_wait_and_a_bad_statement_fails_alone(tmp_path):
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0.05)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    operator = sqlite3.connect(path, isolation_level=None)
    operator.execute("BEGIN EXCLUSIVE")  # an operator's sqlite3 shell, say
    writer = Writer(conn, tmp_path / "w.db")
    outcome: dict[str, object] = {}
    async with trio.open_nursery() as node:
        await node.start(writer.run)
        node.start_soon(_written_or_refused, writer, outcome, "waits")
        await trio.sleep(1.0)
        assert outcome == {}
        operator.execute("COMMIT")
        await _until(lambda: "waits" in outcome)
        node.start_soon(lambda: _written_or_refused(writer, outcome, "bad", statement="INSERT INTO nowhere VALUES (?)"))
        await _until(lambda: "bad" in outcome, 5)  # an error of the statement itself is not waited out
        node.cancel_scope.cancel()
    assert outcome["waits"] == "written"
    assert isinstance(outcome["bad"], sqlite3.OperationalError) and "no such table" in str(outcome["bad"])


async def test_a_write_that_may_not_wait_is_refused_while_a_waiting_one_holds_the_writer(tmp_path):
    """A node's own write (which waits) refused by an operator's lock held the writer while it tried again, and
    an API request's nonce queued behind it waited out the lock instead of being answered 503 (CI, once)."""
    path = tmp_path / "w.db"
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=0.2)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE t (x)")
    operator = sqlite3.connect(path, isolation_level=None)
    operator.execute("BEGIN EXCLUSIVE")
    writer = Writer(conn, tmp_path / "w.db")
    outcome: dict[str, object] = {}
    async with trio.open_nursery() as node:
        await node.start(writer.run)
        node.start_soon(_written_or_refused, writer, outcome, "own")
        await trio.sleep(0.5)  # refused once: it waits to try again
        node.start_soon(lambda: _written_or_refused(writer, outcome, "nonce", wait=False))
        await _until(lambda: "nonce" in outcome, 5)  # at once, not when the lock goes
        assert isinstance(outcome["nonce"], StoreUnavailable) and "locked" in str(outcome["nonce"])
        node.start_soon(_written_or_refused, writer, outcome, "later")  # one that may wait joins the batch
        await trio.sleep(0.5)
        assert "own" not in outcome and "later" not in outcome
        operator.execute("COMMIT")
        await _until(lambda: "own" in outcome and "later" in outcome)
        node.cancel_scope.cancel()
    assert outcome["own"] == outcome["later"] == "written"
    assert sorted(sqlite3.connect(path).execute("SELECT x FROM t").fetchall()) == [("later",), ("own",)]


async def test_a_write_meeting_a_damaged_index_stops_the_writer_naming_the_damage(tmp_path):
    """SQLite reports a damaged index with an extended code (CORRUPT_INDEX, 779), which was not taken for damage:
    the write failed with a bare DatabaseError and the writer wrote on, on a store no write could be trusted to."""
    path = tmp_path / "w.db"
    setup = sqlite3.connect(path, isolation_level=None)
    setup.execute("CREATE TABLE t (a INTEGER PRIMARY KEY, b TEXT, c TEXT)")
    setup.execute("CREATE INDEX i ON t (b)")
    setup.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"b{i}", f"c{i}") for i in range(1000)])
    setup.execute("PRAGMA writable_schema=ON")  # the index no longer matches its rows, as after a torn page
    setup.execute("UPDATE sqlite_master SET sql = 'CREATE INDEX i ON t (c)' WHERE name = 'i'")
    setup.close()
    writer = Writer(sqlite3.connect(path, check_same_thread=False, isolation_level=None), path)
    failed: list[BaseException] = []
    with pytest.raises(BaseExceptionGroup) as stopped:  # the writer's task ends: the node stops, saying why
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            try:
                await writer.write(lambda conn: conn.execute("DELETE FROM t WHERE a = 5"))
            except StoreDamaged as e:
                failed.append(e)
    assert [type(e) for e in stopped.value.exceptions] == [StoreDamaged]
    assert failed and "restore it from a backup" in str(failed[0])
