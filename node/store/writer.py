"""The store's one writer: a task that commits every queued write together (group commit).

Every coroutine that writes hands its operation to this task, which commits everything queued so
far in a single transaction in a worker thread and then wakes all of them. A caller's ``await``
returns only once its write is durable in the WAL, so "written before acted on" holds while
thousands of small writes per second cost one thread hop and one commit per batch.

Each operation runs in its own savepoint: one that raises (``StaleState``, ``DuplicateKey``) is
undone alone and its caller gets the error; the rest of the batch commits.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass

import trio

from jobs import DuplicateKey, ShoalError, StaleState
from node.tasks import RunBlocking

MAX_BATCH = 512  # writes per transaction; bounds how long one commit holds the writer
Operation = Callable[[sqlite3.Connection], None]


class StoreClosed(ShoalError):
    """The node is shutting down; the write (or read) was not made.

    Not retryable: this process's store will not come back (a restarted node is another store).
    """


@dataclass(frozen=True)
class StoreStatistics:
    commits: int
    writes: int
    stale: int
    queued: int


class _Write:
    __slots__ = ("done", "error", "fn")

    def __init__(self, fn: Operation) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.error: BaseException | None = None


def _mapped(e: Exception) -> Exception:
    """sqlite's unique-key violation as the project's ``DuplicateKey``; anything else as it is."""
    if isinstance(e, sqlite3.IntegrityError) and "UNIQUE" in str(e):
        error = DuplicateKey(str(e))
        error.__cause__ = e
        return error
    return e


class Writer:
    """Owns the writing connection: ``run`` is the task, ``write`` queues an operation and waits for it."""

    def __init__(self, conn: sqlite3.Connection, *, run_blocking: RunBlocking = trio.to_thread.run_sync) -> None:
        self._conn = conn
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
                    await self._run_blocking(self._commit, batch)  # once started, finishes even if cancelled
                    committed = True
                    self._commits += 1
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

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for w in batch:
                conn.execute("SAVEPOINT op")
                try:
                    w.fn(conn)
                    conn.execute("RELEASE op")
                except Exception as e:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    w.error = _mapped(e)
            conn.execute("COMMIT")
        except BaseException as e:
            conn.execute("ROLLBACK")
            for w in batch:
                w.error = w.error or e
            raise

    async def write(self, fn: Operation) -> None:
        """Run ``fn`` in the next transaction; returns once it is committed, or raises what ``fn`` raised."""
        w = _Write(fn)
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
