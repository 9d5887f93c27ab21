"""The store's one writer: a task that commits every queued write together (group commit).

Every coroutine that writes hands its operation to this task, which commits everything queued so
far in a single transaction in a worker thread and then wakes all of them. A caller's ``await``
returns only once its write is durable in the WAL, so "written before acted on" holds while
thousands of small writes per second cost one thread hop and one commit per batch.

Each operation runs in its own savepoint: one that raises (``StaleState``, ``DuplicateKey``) is
undone alone and its caller gets the error; the rest of the batch commits.

When SQLite refuses to write at all (the disk is full, another process holds the database, it is
read-only, an I/O error), nothing of the batch is written and the writer tries it again, backing off,
until SQLite writes it: its callers wait, so nothing is acted on unwritten, and the node carries on once
the disk has room. A write that must not wait (an API request's nonce) fails at once instead, with
``StoreUnavailable``, which the API answers with 503. (Such an error once ended the node.)
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from jobs import DuplicateKey, ShoalError, StaleState
from node.store.schema import damaged, is_damage
from node.tasks import RunBlocking

log = logging.getLogger("shoal.store")

MAX_BATCH = 512  # writes per transaction; bounds how long one commit holds the writer
RETRY_FIRST, RETRY_MAX = 0.5, 10.0  # seconds between tries of a batch SQLite refused to write
# SQLite's primary result codes for "cannot write now", whatever the statement: BUSY, LOCKED, NOMEM,
# READONLY, IOERR, FULL, CANTOPEN (anything else, e.g. a bad statement, is the operation's own error)
REFUSALS = frozenset({5, 6, 7, 8, 10, 13, 14})
Operation = Callable[[sqlite3.Connection], None]


class StoreClosed(ShoalError):
    """The node is shutting down; the write (or read) was not made.

    Not retryable: this process's store will not come back (a restarted node is another store).
    """


class StoreUnavailable(ShoalError):
    """SQLite cannot write now (the disk is full, the database is locked or read-only); nothing of the
    write was made. The node carries on, and writes again once SQLite lets it."""

    retryable = True


def _refused(e: BaseException) -> bool:
    """Whether SQLite refused to write at all, rather than the operation failing."""
    return isinstance(e, sqlite3.OperationalError) and (getattr(e, "sqlite_errorcode", 0) & 0xFF) in REFUSALS


@dataclass(frozen=True)
class StoreStatistics:
    commits: int
    writes: int
    stale: int
    queued: int


class _Write:
    __slots__ = ("done", "error", "fn", "wait")

    def __init__(self, fn: Operation, wait: bool) -> None:
        self.fn = fn
        self.wait = wait
        self.done = trio.Event()
        self.error: BaseException | None = None


def _mapped(e: Exception, path: Path) -> Exception:
    """sqlite's unique-key violation as the project's ``DuplicateKey``, a damaged page as ``StoreDamaged``;
    anything else as it is."""
    if isinstance(e, sqlite3.IntegrityError) and "UNIQUE" in str(e):
        error: Exception = DuplicateKey(str(e))
    elif is_damage(e):
        error = damaged(path, e)
    else:
        return e
    error.__cause__ = e
    return error


class Writer:
    """Owns the writing connection: ``run`` is the task, ``write`` queues an operation and waits for it."""

    def __init__(self, conn: sqlite3.Connection, path: Path, *,
                 run_blocking: RunBlocking = trio.to_thread.run_sync) -> None:
        self._conn = conn
        self.path = path
        self._run_blocking = run_blocking
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self._commits = self._writes = self._stale = 0
        self.closed = False  # set once shutting down: reads racing it are StoreClosed too

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Runs until cancelled; then fails what is still queued and closes the connection."""
        try:
            task_status.started()
            async for first in self._receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                committed = False
                try:
                    await self._commit_when_possible(batch)
                    committed = True
                except sqlite3.DatabaseError as e:  # no write can be trusted: the node stops, saying why in a line
                    if is_damage(e):
                        raise damaged(self.path, e) from e
                    raise
                finally:
                    for w in batch:
                        if not committed and w.error is None:  # cancelled before the commit began
                            w.error = StoreClosed("the store is shutting down")
                        w.done.set()
        finally:
            while True:  # no await in this loop or before close(): nothing can slip in between
                try:
                    w = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                w.error = StoreClosed("the store is shutting down")
                w.done.set()
            self._receive.close()  # later writers get StoreClosed instead of waiting forever
            self.closed = True
            self._conn.close()

    async def _commit_when_possible(self, batch: list[_Write]) -> None:
        """Commit ``batch``, trying again while SQLite refuses to write; writes that may not wait fail then."""
        delay = RETRY_FIRST
        while True:
            try:
                await self._run_blocking(self._commit, batch)  # once started, finishes even if cancelled
                self._commits += 1
                return
            except sqlite3.OperationalError as e:
                if not _refused(e):
                    raise
                refused = StoreUnavailable(f"the node cannot write its store now: {e}")
                for w in batch:
                    w.error = None if w.wait else refused  # the batch was undone whole: run it all again
                    if not w.wait:
                        w.done.set()
                batch[:] = [w for w in batch if w.wait]
                log.error("cannot write the store (%s): %d writes wait; next try in %g s", e, len(batch), delay)
                if not batch:
                    return
                # Until the next try, writes that come may not wait behind this batch if they may not wait: an API
                # request's nonce, queued behind a node's own write, waited out an operator's lock and was never
                # refused. Those that may wait join the batch. Cancelled (shutting down): they get StoreClosed.
                with trio.move_on_after(delay):
                    async for w in self._receive:
                        if w.wait:
                            batch.append(w)
                        else:
                            w.error = refused
                            w.done.set()
                delay = min(delay * 2, RETRY_MAX)

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            for w in batch:
                conn.execute("SAVEPOINT op")
                try:
                    w.fn(conn)
                    conn.execute("RELEASE op")
                except Exception as e:
                    if _refused(e) or is_damage(e):
                        raise  # not this operation's fault: the whole batch waits, or the node stops
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    w.error = _mapped(e, self.path)
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # SQLite itself rolls back on some errors (a full disk, I/O)
                with contextlib.suppress(sqlite3.Error):  # never hide the error that got us here
                    conn.execute("ROLLBACK")
            if not _refused(e):
                for w in batch:
                    w.error = w.error or (_mapped(e, self.path) if isinstance(e, Exception) else e)
            raise

    async def write(self, fn: Operation, *, wait: bool = True) -> None:
        """Run ``fn`` in the next transaction; returns once it is committed, or raises what ``fn`` raised.
        Without ``wait``, a write SQLite refuses raises ``StoreUnavailable`` instead of waiting for it to pass."""
        w = _Write(fn, wait)
        try:
            await self._send.send(w)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            await trio.lowlevel.checkpoint_if_cancelled()  # see below
            raise StoreClosed("the store is shutting down") from e
        with trio.CancelScope(shield=True):  # the write is queued: see it through so memory matches disk
            await w.done.wait()
        self._writes += 1
        if w.error is not None:
            if isinstance(w.error, StaleState):
                self._stale += 1
            if isinstance(w.error, StoreClosed):
                # a caller stopping with the node (one nursery, one cancel) stops as cancelled: a shutdown,
                # not an error of its task (which once turned a clean SIGTERM into a crash)
                await trio.lowlevel.checkpoint_if_cancelled()
            raise w.error

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._commits, self._writes, self._stale, self._send.statistics().current_buffer_used)
