"""The node's SQLite store (WAL), used from trio through worker threads.

Writes are grouped: every coroutine that writes hands its operation to one writer task, which
commits everything queued so far in a single transaction in a worker thread and then wakes
all of them (group commit). A caller's ``await`` returns only once its write is durable in
the WAL, so "written before acted on" holds while thousands of small writes per second cost
one thread hop and one commit per batch.

Every update is conditional on the revision the caller read; a mismatch raises
``StaleState`` for that operation only, and its event rows are not written.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from jobs import Event, Execution, ExecutionSide, ExecutionState, Job, JobState, RunResult, StaleState

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    revision INTEGER NOT NULL,
    idempotency_key TEXT,
    request_digest TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs(owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state) WHERE state IN ('pending', 'running');
CREATE UNIQUE INDEX IF NOT EXISTS jobs_idempotency ON jobs(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS executions (
    side TEXT NOT NULL,
    id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    state TEXT NOT NULL,
    revision INTEGER NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (side, id)
);
CREATE INDEX IF NOT EXISTS executions_job ON executions(job_id);
CREATE INDEX IF NOT EXISTS executions_live ON executions(side, state)
    WHERE state IN ('bidding', 'accepted', 'proposed');
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    execution_id TEXT,
    node_id TEXT,
    message TEXT NOT NULL,
    side TEXT NOT NULL DEFAULT 'requester'  -- a node that is both roles logs each role's view apart
);
CREATE INDEX IF NOT EXISTS events_job ON events(job_id, side, seq);
CREATE TABLE IF NOT EXISTS result_cache (
    key TEXT PRIMARY KEY,
    job_id TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reputation (
    peer TEXT PRIMARY KEY,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL
);
"""

_LIVE_EXECUTION_STATES = tuple(s.value for s in ExecutionState if not s.is_terminal)
_LIVE_JOB_STATES = tuple(s.value for s in JobState if not s.is_terminal)
MAX_BATCH = 512  # writes per transaction; bounds how long one commit holds the writer


class StoreClosed(Exception):
    """The node is shutting down; the write was not made."""


@dataclass(frozen=True)
class StoreStatistics:
    commits: int
    writes: int
    stale: int
    queued: int


class _Write:
    __slots__ = ("done", "error", "fn")

    def __init__(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.error: BaseException | None = None


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes; WAL keeps it consistent
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


class Store:
    """Open with ``async with Store.open(path) as store`` inside a nursery-owning task."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        self._reader = _connect(path)
        self._read_lock = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self._commits = self._writes = self._stale = 0

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task. Runs until cancelled; then closes the connections."""
        try:
            task_status.started()
            async for first in self._receive:
                batch = [first]
                while len(batch) < MAX_BATCH:
                    try:
                        batch.append(self._receive.receive_nowait())
                    except trio.WouldBlock:
                        break
                try:
                    await trio.to_thread.run_sync(self._commit, batch)  # finishes even if cancelled
                    self._commits += 1
                finally:
                    for w in batch:
                        w.done.set()
        finally:
            while True:  # no await in this loop or before close(): nothing can slip in between
                try:
                    w = self._receive.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                w.error = StoreClosed("the store is shutting down")
                w.done.set()
            self._receive.close()  # later writers get BrokenResourceError instead of waiting forever
            self._writer.close()
            self._reader.close()

    def _commit(self, batch: list[_Write]) -> None:
        conn = self._writer
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
                    w.error = e
            conn.execute("COMMIT")
        except BaseException as e:
            conn.execute("ROLLBACK")
            for w in batch:
                w.error = w.error or e
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        w = _Write(fn)
        await self._send.send(w)
        with trio.CancelScope(shield=True):  # the write is queued: see it through so memory matches disk
            await w.done.wait()
        self._writes += 1
        if w.error is not None:
            if isinstance(w.error, StaleState):
                self._stale += 1
            raise w.error

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_lock)

    def statistics(self) -> StoreStatistics:
        return StoreStatistics(self._commits, self._writes, self._stale, self._send.statistics().current_buffer_used)

    # -- writes --------------------------------------------------------------------------------

    async def save(
        self,
        *,
        side: ExecutionSide = ExecutionSide.REQUESTER,
        new_job: Job | None = None,
        job: Job | None = None,
        new_executions: Sequence[Execution] = (),
        executions: Sequence[Execution] = (),
        events: Sequence[Event] = (),
        idempotency_key: str | None = None,
        request_digest: str = "",
        cache: tuple[str, str, RunResult] | None = None,
        reputation: dict[str, tuple[int, int]] | None = None,
    ) -> None:
        """Write all of it in one transaction, or none of it.

        ``job`` and ``executions`` are updates: each carries its bumped revision and is written
        only if the stored revision is the one before it (else ``StaleState``).
        """
        jrow = None
        if new_job is not None:
            jrow = (new_job.id, new_job.owner, new_job.state.value, new_job.created_at, new_job.revision,
                    idempotency_key, request_digest, new_job.model_dump_json())
        jupd = None
        if job is not None:
            jupd = (job.state.value, job.revision, job.model_dump_json(), job.id, job.revision - 1)
        xrows = [(side.value, x.id, x.job_id, x.state.value, x.revision, x.model_dump_json()) for x in new_executions]
        xupd = [(x.state.value, x.revision, x.model_dump_json(), side.value, x.id, x.revision - 1) for x in executions]
        erows = [(e.job_id, e.at, e.kind.value, e.execution_id, e.node_id, e.message, side.value) for e in events]
        crow = (cache[0], cache[1], cache[2].model_dump_json(), time.time()) if cache else None
        rrows = [(peer, a, r) for peer, (a, r) in (reputation or {}).items()]

        def op(conn: sqlite3.Connection) -> None:
            if jrow:
                conn.execute(
                    "INSERT INTO jobs (id, owner, state, created_at, revision, idempotency_key, request_digest,"
                    " body) VALUES (?,?,?,?,?,?,?,?)",
                    jrow,
                )
            if jupd and conn.execute(
                "UPDATE jobs SET state=?, revision=?, body=? WHERE id=? AND revision=?", jupd
            ).rowcount != 1:
                raise StaleState(f"job {jupd[3]}: stored revision is not {jupd[4]}")
            if xrows:
                conn.executemany(
                    "INSERT INTO executions (side, id, job_id, state, revision, body) VALUES (?,?,?,?,?,?)", xrows
                )
            for row in xupd:
                if conn.execute(
                    "UPDATE executions SET state=?, revision=?, body=? WHERE side=? AND id=? AND revision=?", row
                ).rowcount != 1:
                    raise StaleState(f"execution {row[4]}: stored revision is not {row[5]}")
            if erows:
                conn.executemany(
                    "INSERT INTO events (job_id, at, kind, execution_id, node_id, message, side)"
                    " VALUES (?,?,?,?,?,?,?)",
                    erows,
                )
            if crow:
                conn.execute("INSERT OR REPLACE INTO result_cache (key, job_id, result, created_at) VALUES (?,?,?,?)",
                             crow)
            if rrows:
                conn.executemany("INSERT OR REPLACE INTO reputation (peer, accepted, rejected) VALUES (?,?,?)", rrows)

        await self._write(op)

    # -- reads ---------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        row = await self._read(lambda c: c.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone())
        return Job.model_validate_json(row[0]) if row else None

    async def find_idempotent(self, owner: str, key: str) -> tuple[Job, str] | None:
        row = await self._read(
            lambda c: c.execute(
                "SELECT body, request_digest FROM jobs WHERE owner=? AND idempotency_key=?", (owner, key)
            ).fetchone()
        )
        return (Job.model_validate_json(row[0]), row[1]) if row else None

    async def list_jobs(
        self, *, owner: str | None, state: JobState | None, limit: int, offset: int
    ) -> tuple[list[Job], int]:
        where, args = [], []
        if owner is not None:
            where.append("owner=?")
            args.append(owner)
        if state is not None:
            where.append("state=?")
            args.append(state.value)
        clause = f"WHERE {' AND '.join(where)}" if where else ""

        def q(c: sqlite3.Connection) -> tuple[list[Job], int]:
            total = c.execute(f"SELECT count(*) FROM jobs {clause}", args).fetchone()[0]
            rows = c.execute(
                f"SELECT body FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                [*args, limit, offset],
            ).fetchall()
            return [Job.model_validate_json(r[0]) for r in rows], total

        return await self._read(q)

    async def live_jobs(self) -> list[Job]:
        marks = ",".join("?" * len(_LIVE_JOB_STATES))
        rows = await self._read(
            lambda c: c.execute(f"SELECT body FROM jobs WHERE state IN ({marks})", _LIVE_JOB_STATES).fetchall()
        )
        return [Job.model_validate_json(r[0]) for r in rows]

    async def count_jobs_by_state(self) -> dict[str, int]:
        rows = await self._read(lambda c: c.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())
        return dict(rows)

    # -- executions (reads) --------------------------------------------------------------------------

    async def executions_of(self, side: ExecutionSide, job_id: str) -> list[Execution]:
        rows = await self._read(
            lambda c: c.execute(
                "SELECT body FROM executions WHERE side=? AND job_id=? ORDER BY rowid", (side.value, job_id)
            ).fetchall()
        )
        return [Execution.model_validate_json(r[0]) for r in rows]

    async def live_executions(self, side: ExecutionSide) -> list[Execution]:
        marks = ",".join("?" * len(_LIVE_EXECUTION_STATES))
        rows = await self._read(
            lambda c: c.execute(
                f"SELECT body FROM executions WHERE side=? AND state IN ({marks})",
                (side.value, *_LIVE_EXECUTION_STATES),
            ).fetchall()
        )
        return [Execution.model_validate_json(r[0]) for r in rows]

    async def expired_results(self, before: float, limit: int = 200) -> tuple[list[Job], list[Execution]]:
        """Finished jobs (requester) and executions (compute) whose published results are older than
        ``before`` and not yet removed."""
        terminal_jobs = tuple(s.value for s in JobState if s.is_terminal)
        terminal_ex = tuple(s.value for s in ExecutionState if s.is_terminal)

        def q(c: sqlite3.Connection) -> tuple[list[Job], list[Execution]]:
            jobs = c.execute(
                f"SELECT body FROM jobs WHERE state IN ({','.join('?' * len(terminal_jobs))})"
                " AND json_extract(body, '$.updated_at') < ? AND json_extract(body, '$.result.cid') IS NOT NULL"
                " AND json_extract(body, '$.results_removed_at') IS NULL LIMIT ?",
                (*terminal_jobs, before, limit),
            ).fetchall()
            executions = c.execute(
                f"SELECT body FROM executions WHERE side='compute' AND state IN ({','.join('?' * len(terminal_ex))})"
                " AND json_extract(body, '$.updated_at') < ? AND json_extract(body, '$.result.cid') IS NOT NULL"
                " AND json_extract(body, '$.results_removed_at') IS NULL LIMIT ?",
                (*terminal_ex, before, limit),
            ).fetchall()
            return ([Job.model_validate_json(r[0]) for r in jobs],
                    [Execution.model_validate_json(r[0]) for r in executions])

        return await self._read(q)

    async def forget_cached(self, job_id: str) -> None:
        await self._write(lambda c: c.execute("DELETE FROM result_cache WHERE job_id=?", (job_id,)))

    async def cached_result(self, key: str) -> tuple[str, RunResult] | None:
        row = await self._read(
            lambda c: c.execute("SELECT job_id, result FROM result_cache WHERE key=?", (key,)).fetchone()
        )
        return (row[0], RunResult.model_validate_json(row[1])) if row else None

    async def reputations(self) -> dict[str, tuple[int, int]]:
        rows = await self._read(lambda c: c.execute("SELECT peer, accepted, rejected FROM reputation").fetchall())
        return {peer: (a, r) for peer, a, r in rows}

    # -- events --------------------------------------------------------------------------------

    async def events(self, job_id: str, *, after: int = 0, limit: int = 1000,
                     side: ExecutionSide = ExecutionSide.REQUESTER) -> list[Event]:
        """The job's event log as its requester recorded it (``side``: or the compute node's view)."""
        rows = await self._read(
            lambda c: c.execute(
                "SELECT seq, job_id, at, kind, execution_id, node_id, message FROM events"
                " WHERE job_id=? AND side=? AND seq>? ORDER BY seq LIMIT ?",
                (job_id, side.value, after, limit),
            ).fetchall()
        )
        return [
            Event(seq=r[0], job_id=r[1], at=r[2], kind=r[3], execution_id=r[4], node_id=r[5], message=r[6])
            for r in rows
        ]

