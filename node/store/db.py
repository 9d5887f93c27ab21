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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from jobs import DuplicateKey, Event, Execution, ExecutionSide, ExecutionState, Job, JobState, RunResult, StaleState
from jobs.sweep import IndexRecord, Sweep
from node.store.bell import EventBell
from node.store.sealed import Sealer, SealError

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
    created_at REAL NOT NULL,
    verified INTEGER NOT NULL DEFAULT 0  -- agreed by two nodes or run here: may serve other clients
);
CREATE INDEX IF NOT EXISTS result_cache_job ON result_cache(job_id);  -- forgetting a job's entries (TTL)
CREATE TABLE IF NOT EXISTS sweeps (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    state TEXT NOT NULL,
    created_at REAL NOT NULL,
    revision INTEGER NOT NULL,
    idempotency_key TEXT,
    request_digest TEXT,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS sweeps_owner ON sweeps(owner, created_at);
CREATE UNIQUE INDEX IF NOT EXISTS sweeps_idempotency ON sweeps(owner, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE TABLE IF NOT EXISTS sweep_indexes (
    sweep_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    state TEXT NOT NULL,
    node_id TEXT,
    reason TEXT NOT NULL DEFAULT '',
    attempts INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    updated_at REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (sweep_id, idx)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS published (  -- compute side: results of sweep indexes this node published
    cid TEXT PRIMARY KEY,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS reputation (
    peer TEXT PRIMARY KEY,
    accepted INTEGER NOT NULL,
    rejected INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shares (  -- a job or sweep its owner lets another client read
    target TEXT NOT NULL,  -- job or sweep id
    client TEXT NOT NULL,  -- the reader's client id
    created_at REAL NOT NULL,
    PRIMARY KEY (target, client)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS nonces (  -- API: nonces of signed requests, kept while their timestamp is valid
    client TEXT NOT NULL,
    nonce BLOB NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (client, nonce)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS nonces_expires ON nonces(expires);
CREATE TABLE IF NOT EXISTS job_secrets (  -- requester side: a live job's secret_env, sealed (see sealed.py)
    job_id TEXT PRIMARY KEY,
    env TEXT NOT NULL
);
"""

_LIVE_EXECUTION_STATES = tuple(s.value for s in ExecutionState if not s.is_terminal)
_LIVE_JOB_STATES = tuple(s.value for s in JobState if not s.is_terminal)
MAX_BATCH = 512  # writes per transaction; bounds how long one commit holds the writer


class StoreClosed(Exception):
    """The node is shutting down; the write (or read) was not made."""


@dataclass(frozen=True)
class StoreStatistics:
    commits: int
    writes: int
    stale: int
    queued: int


@dataclass(frozen=True)
class ExpiredRecords:
    """What ``Store.expired_records`` found: finished records past their time to live.

    Deleting a job takes its requester-side executions, events and result-cache entries with it;
    a sweep its indexes and events; a compute-side execution its compute-side events.
    """

    jobs: list[Job] = field(default_factory=list)  # requester side
    sweeps: list[Sweep] = field(default_factory=list)
    sweep_cids: list[str] = field(default_factory=list)  # results the sweeps' indexes name
    executions: list[Execution] = field(default_factory=list)  # compute side
    published: list[str] = field(default_factory=list)  # compute side: CIDs from the published table

    def __len__(self) -> int:
        return len(self.jobs) + len(self.sweeps) + len(self.executions) + len(self.published)

    def cids(self) -> list[str]:
        """Results these records still hold (not yet removed by retention), each once."""
        held = [r.result.cid for r in [*self.jobs, *self.executions]
                if r.result is not None and r.result.cid and r.results_removed_at is None]
        return list(dict.fromkeys([*held, *self.sweep_cids, *self.published]))


class _Write:
    __slots__ = ("done", "error", "fn")

    def __init__(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        self.fn = fn
        self.done = trio.Event()
        self.error: BaseException | None = None


def _upgrade(conn: sqlite3.Connection) -> None:
    """Bring a data dir written by an earlier release up to this schema.

    Cache entries from before results were verified whole are kept as unverified: they serve only
    their own client's identical jobs.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(result_cache)")}
    if "verified" not in columns:
        conn.execute("ALTER TABLE result_cache ADD COLUMN verified INTEGER NOT NULL DEFAULT 0")


def _mapped(e: Exception) -> Exception:
    """sqlite's unique-key violation as the project's ``DuplicateKey``; anything else as it is."""
    if isinstance(e, sqlite3.IntegrityError) and "UNIQUE" in str(e):
        error = DuplicateKey(str(e))
        error.__cause__ = e
        return error
    return e


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes; WAL keeps it consistent
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=FAST")  # deleted rows (job secrets) zeroed where it costs no extra I/O
    return conn


class Store:
    """Open with ``async with Store.open(path) as store`` inside a nursery-owning task."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sealer = Sealer(path.with_suffix(".secrets.key"))
        self._writer = _connect(path)
        self._writer.executescript(SCHEMA)
        _upgrade(self._writer)
        self._reader = _connect(path)
        self._read_lock = trio.CapacityLimiter(1)
        self._send, self._receive = trio.open_memory_channel[_Write](10_000)
        self._commits = self._writes = self._stale = 0
        self._closed = False
        self.bell = EventBell()  # rung for the jobs whose events a write added, once it is committed

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
            self._receive.close()  # later writers get StoreClosed instead of waiting forever
            self._closed = True
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
                    w.error = _mapped(e)
            conn.execute("COMMIT")
        except BaseException as e:
            conn.execute("ROLLBACK")
            for w in batch:
                w.error = w.error or e
            raise

    async def _write(self, fn: Callable[[sqlite3.Connection], None]) -> None:
        w = _Write(fn)
        try:
            await self._send.send(w)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as e:
            raise StoreClosed("the store is shutting down") from e
        with trio.CancelScope(shield=True):  # the write is queued: see it through so memory matches disk
            await w.done.wait()
        self._writes += 1
        if w.error is not None:
            if isinstance(w.error, StaleState):
                self._stale += 1
            raise w.error

    async def _read(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        try:
            return await trio.to_thread.run_sync(fn, self._reader, limiter=self._read_lock)
        except sqlite3.ProgrammingError as e:  # a read that raced the shutdown: say so, not "bug"
            if self._closed:
                raise StoreClosed("the store is shutting down") from e
            raise

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
        cache: tuple[str, str, RunResult, bool] | None = None,
        reputation: dict[str, tuple[int, int]] | None = None,
        secrets: dict[str, str] | None = None,
    ) -> None:
        """Write all of it in one transaction, or none of it.

        ``job`` and ``executions`` are updates: each carries its bumped revision and is written
        only if the stored revision is the one before it (else ``StaleState``).
        ``secrets``: the secret_env of ``new_job``, sealed; a job's secrets are deleted by the
        update that makes it terminal.
        """
        jrow = srow = None
        if new_job is not None:
            jrow = (new_job.id, new_job.owner, new_job.state.value, new_job.created_at, new_job.revision,
                    idempotency_key, request_digest, new_job.model_dump_json())
            if secrets and not new_job.state.is_terminal:
                srow = (new_job.id, self.sealer.seal(new_job.id, secrets))
        jupd = None
        if job is not None:
            jupd = (job.state.value, job.revision, job.model_dump_json(), job.id, job.revision - 1)
        forget = job.id if job is not None and job.state.is_terminal else None
        xrows = [(side.value, x.id, x.job_id, x.state.value, x.revision, x.model_dump_json()) for x in new_executions]
        xupd = [(x.state.value, x.revision, x.model_dump_json(), side.value, x.id, x.revision - 1) for x in executions]
        erows = [(e.job_id, e.at, e.kind.value, e.execution_id, e.node_id, e.message, side.value) for e in events]
        crow = (cache[0], cache[1], cache[2].model_dump_json(), time.time(), int(cache[3])) if cache else None
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
            if srow:
                conn.execute("INSERT INTO job_secrets (job_id, env) VALUES (?,?)", srow)
            if forget:
                conn.execute("DELETE FROM job_secrets WHERE job_id=?", (forget,))
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
                conn.execute(  # an unverified result never displaces a verified one
                    "INSERT INTO result_cache (key, job_id, result, created_at, verified) VALUES (?,?,?,?,?)"
                    " ON CONFLICT(key) DO UPDATE SET job_id=excluded.job_id, result=excluded.result,"
                    " created_at=excluded.created_at, verified=excluded.verified"
                    " WHERE excluded.verified >= result_cache.verified", crow)
            if rrows:
                conn.executemany("INSERT OR REPLACE INTO reputation (peer, accepted, rejected) VALUES (?,?,?)", rrows)

        await self._write(op)
        if erows:
            self.bell.ring(row[0] for row in erows)

    async def save_sweep(
        self,
        *,
        new_sweep: Sweep | None = None,
        sweep: Sweep | None = None,
        indexes: Sequence[IndexRecord] = (),
        events: Sequence[Event] = (),
        idempotency_key: str | None = None,
        request_digest: str = "",
        end_unfinished: tuple[JobState, str] | None = None,
    ) -> None:
        """A new sweep (with a row per index, in the sweep's own state), or an update of one
        (revision-guarded, like ``save``) and of some of its indexes, in one transaction.

        ``end_unfinished``: (state, reason) for every index still pending or running — how a
        cancelled or won sweep ends the rest without a row each in memory.
        """
        srow = None
        if new_sweep is not None:
            srow = (new_sweep.id, new_sweep.owner, new_sweep.state.value, new_sweep.created_at, new_sweep.revision,
                    idempotency_key, request_digest, new_sweep.model_dump_json())
        target = new_sweep or sweep
        supd = (sweep.state.value, sweep.revision, sweep.model_dump_json(), sweep.id, sweep.revision - 1) \
            if sweep is not None else None
        irows = [(x.state.value, x.node_id, x.reason, x.attempts, x.result.model_dump_json() if x.result else None,
                  x.updated_at, target.id, x.index) for x in indexes] if target is not None else []
        erows = [(e.job_id, e.at, e.kind.value, e.execution_id, e.node_id, e.message, "requester") for e in events]

        def op(conn: sqlite3.Connection) -> None:
            if srow:
                conn.execute("INSERT INTO sweeps (id, owner, state, created_at, revision, idempotency_key,"
                             " request_digest, body) VALUES (?,?,?,?,?,?,?,?)", srow)
                conn.executemany("INSERT INTO sweep_indexes (sweep_id, idx, state, reason) VALUES (?,?,?,?)",
                                 ((srow[0], i, srow[2], new_sweep.reason if new_sweep.state.is_terminal else "")
                                  for i in range(new_sweep.count)))
            if supd and conn.execute(
                "UPDATE sweeps SET state=?, revision=?, body=? WHERE id=? AND revision=?", supd
            ).rowcount != 1:
                raise StaleState(f"sweep {supd[3]}: stored revision is not {supd[4]}")
            if irows:
                conn.executemany("UPDATE sweep_indexes SET state=?, node_id=?, reason=?, attempts=?, result=?,"
                                 " updated_at=? WHERE sweep_id=? AND idx=?", irows)
            if end_unfinished is not None and target is not None:
                conn.execute("UPDATE sweep_indexes SET state=?, reason=?, updated_at=? WHERE sweep_id=?"
                             " AND state IN ('pending', 'running')",
                             (end_unfinished[0].value, end_unfinished[1], time.time(), target.id))
            if erows:
                conn.executemany("INSERT INTO events (job_id, at, kind, execution_id, node_id, message, side)"
                                 " VALUES (?,?,?,?,?,?,?)", erows)

        await self._write(op)
        if erows:
            self.bell.ring(row[0] for row in erows)

    async def add_published(self, cids: Sequence[str], at: float) -> None:
        """Remember results (or uploaded contexts) this node published outside an execution record, so
        retention finds them; publishing one again counts from the latest time."""
        rows = [(cid, at) for cid in cids]
        await self._write(lambda c: c.executemany(
            "INSERT INTO published (cid, at) VALUES (?,?) ON CONFLICT(cid) DO UPDATE SET at=max(at, excluded.at)",
            rows))

    # -- nonces of signed API requests (replay protection, see node.api.auth) ----------------------

    async def record_nonce(self, client: str, nonce: bytes, expires: float) -> bool:
        """Record a request's nonce durably; False if this client used it before (a replay).

        Each call is one row in the writer's next group commit, so a busy API costs one commit
        per batch of requests, not one per request.
        """
        fresh = False

        def op(conn: sqlite3.Connection) -> None:
            nonlocal fresh
            fresh = conn.execute("INSERT OR IGNORE INTO nonces (client, nonce, expires) VALUES (?,?,?)",
                                 (client, nonce, expires)).rowcount == 1

        await self._write(op)
        return fresh

    async def purge_nonces(self, now: float) -> int:
        """Delete the nonces whose requests' timestamps are no longer accepted."""
        removed = 0

        def op(conn: sqlite3.Connection) -> None:
            nonlocal removed
            removed = conn.execute("DELETE FROM nonces WHERE expires < ?", (now,)).rowcount

        await self._write(op)
        return removed

    async def nonce_counts(self, now: float) -> list[tuple[str, int, int]]:
        """(client, whole second of expiry, how many) of the nonces still live at ``now``."""
        return await self._read(lambda c: c.execute(
            "SELECT client, CAST(expires AS INTEGER), COUNT(*) FROM nonces WHERE expires >= ? GROUP BY 1, 2",
            (now,)).fetchall())

    # -- sweeps (reads) ----------------------------------------------------------------------------

    async def get_sweep(self, sweep_id: str) -> Sweep | None:
        row = await self._read(lambda c: c.execute("SELECT body FROM sweeps WHERE id=?", (sweep_id,)).fetchone())
        return Sweep.model_validate_json(row[0]) if row else None

    async def find_idempotent_sweep(self, owner: str, key: str) -> tuple[Sweep, str] | None:
        row = await self._read(lambda c: c.execute(
            "SELECT body, request_digest FROM sweeps WHERE owner=? AND idempotency_key=?", (owner, key)).fetchone())
        return (Sweep.model_validate_json(row[0]), row[1]) if row else None

    async def list_sweeps(self, *, owner: str, limit: int, offset: int) -> tuple[list[Sweep], int]:
        def q(c: sqlite3.Connection) -> tuple[list[Sweep], int]:
            total = c.execute("SELECT count(*) FROM sweeps WHERE owner=?", (owner,)).fetchone()[0]
            rows = c.execute("SELECT body FROM sweeps WHERE owner=? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                             (owner, limit, offset)).fetchall()
            return [Sweep.model_validate_json(r[0]) for r in rows], total

        return await self._read(q)

    async def live_sweeps(self) -> list[Sweep]:
        marks = ",".join("?" * len(_LIVE_JOB_STATES))
        rows = await self._read(
            lambda c: c.execute(f"SELECT body FROM sweeps WHERE state IN ({marks})", _LIVE_JOB_STATES).fetchall())
        return [Sweep.model_validate_json(r[0]) for r in rows]

    async def index_states(self, sweep_id: str) -> list[tuple[int, JobState, str, int, str | None]]:
        """(index, state, reason, attempts, node) of every index, in index order."""
        rows = await self._read(lambda c: c.execute(
            "SELECT idx, state, reason, attempts, node_id FROM sweep_indexes WHERE sweep_id=? ORDER BY idx",
            (sweep_id,)).fetchall())
        return [(i, JobState(s), r, a, n) for i, s, r, a, n in rows]

    async def sweep_indexes(self, sweep_id: str, *, state: JobState | None = None, first: int = 0,
                            limit: int = 1000) -> tuple[list[IndexRecord], int]:
        """Index records from ``first`` on (in index order), and how many match ``state`` in all."""
        where, args = "sweep_id=?", [sweep_id]
        if state is not None:
            where += " AND state=?"
            args.append(state.value)

        def q(c: sqlite3.Connection) -> tuple[list[IndexRecord], int]:
            total = c.execute(f"SELECT count(*) FROM sweep_indexes WHERE {where}", args).fetchone()[0]
            rows = c.execute(f"SELECT idx, state, node_id, reason, attempts, result, updated_at FROM sweep_indexes"
                             f" WHERE {where} AND idx>=? ORDER BY idx LIMIT ?", [*args, first, limit]).fetchall()
            return [IndexRecord(index=i, state=s, node_id=n, reason=r, attempts=a, updated_at=u,
                                result=RunResult.model_validate_json(res) if res else None)
                    for i, s, n, r, a, res, u in rows], total

        return await self._read(q)

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

    async def live_secrets(self) -> dict[str, dict[str, str] | None]:
        """job id -> its secret_env, for every job that has some (only live jobs do); None for
        secrets that cannot be opened (the key file was lost or replaced)."""
        def q(c: sqlite3.Connection) -> dict[str, dict[str, str] | None]:
            out: dict[str, dict[str, str] | None] = {}
            for job_id, blob in c.execute("SELECT job_id, env FROM job_secrets").fetchall():
                try:
                    out[job_id] = self.sealer.open(job_id, blob)
                except SealError:
                    out[job_id] = None
            return out

        return await self._read(q)

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

    async def share(self, target: str, client: str, *, limit: int) -> bool:
        """Let ``client`` read job or sweep ``target``; False (and nothing written) when ``target``
        already has ``limit`` readers. Sharing again with the same client is a no-op."""
        added = True

        def op(conn: sqlite3.Connection) -> None:
            nonlocal added
            if conn.execute("SELECT 1 FROM shares WHERE target=? AND client=?", (target, client)).fetchone():
                return
            if conn.execute("SELECT count(*) FROM shares WHERE target=?", (target,)).fetchone()[0] >= limit:
                added = False
                return
            conn.execute("INSERT INTO shares (target, client, created_at) VALUES (?, ?, ?)",
                         (target, client, time.time()))

        await self._write(op)
        return added

    async def is_shared(self, target: str, client: str) -> bool:
        row = await self._read(lambda c: c.execute(
            "SELECT 1 FROM shares WHERE target=? AND client=?", (target, client)).fetchone())
        return row is not None

    async def cached_result(self, key: str, owner: str) -> tuple[str, RunResult, bool] | None:
        """The cached result ``owner`` may be served: a verified one, or one of ``owner``'s own jobs.

        Returns (source job id, result, verified)."""
        row = await self._read(lambda c: c.execute(
            "SELECT rc.job_id, rc.result, rc.verified FROM result_cache rc JOIN jobs j ON j.id = rc.job_id"
            " WHERE rc.key=? AND (rc.verified=1 OR j.owner=?)", (key, owner)).fetchone())
        return (row[0], RunResult.model_validate_json(row[1]), bool(row[2])) if row else None

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


    # -- time to live ----------------------------------------------------------------------------

    async def expired_records(self, before: float, limit: int = 200) -> ExpiredRecords:
        """Finished jobs and sweeps (requester), finished executions (compute) last updated before
        ``before``, and published results recorded before it: at most ``limit`` of each kind."""
        terminal_jobs = tuple(s.value for s in JobState if s.is_terminal)
        terminal_ex = tuple(s.value for s in ExecutionState if s.is_terminal)
        jmarks, xmarks = ",".join("?" * len(terminal_jobs)), ",".join("?" * len(terminal_ex))

        def q(c: sqlite3.Connection) -> ExpiredRecords:
            # created_at <= updated_at: the column narrows the scan before any JSON is parsed
            jobs = c.execute(f"SELECT body FROM jobs WHERE state IN ({jmarks}) AND created_at < ?"
                             " AND json_extract(body, '$.updated_at') < ? LIMIT ?",
                             (*terminal_jobs, before, before, limit)).fetchall()
            sweeps = [Sweep.model_validate_json(r[0]) for r in c.execute(
                f"SELECT body FROM sweeps WHERE state IN ({jmarks}) AND created_at < ?"
                " AND json_extract(body, '$.updated_at') < ? LIMIT ?",
                (*terminal_jobs, before, before, limit)).fetchall()]
            sweep_cids = [r[0] for s in sweeps for r in c.execute(
                "SELECT json_extract(result, '$.cid') FROM sweep_indexes WHERE sweep_id=? AND result IS NOT NULL"
                " AND json_extract(result, '$.cid') IS NOT NULL", (s.id,)).fetchall()]
            executions = c.execute(f"SELECT body FROM executions WHERE side='compute' AND state IN ({xmarks})"
                                   " AND json_extract(body, '$.updated_at') < ? LIMIT ?",
                                   (*terminal_ex, before, limit)).fetchall()
            return ExpiredRecords(jobs=[Job.model_validate_json(r[0]) for r in jobs], sweeps=sweeps,
                                  sweep_cids=sweep_cids,
                                  executions=[Execution.model_validate_json(r[0]) for r in executions],
                                  published=_published_before(c, before, limit))

        return await self._read(q)

    async def delete_records(self, records: ExpiredRecords) -> int:
        """Delete ``records`` and what hangs off them, in one transaction; returns how many of them
        went. A record updated since it was read (another revision) stays, with its children."""
        deleted = 0

        def op(conn: sqlite3.Connection) -> None:
            nonlocal deleted
            n = 0
            for job in records.jobs:
                if conn.execute("DELETE FROM jobs WHERE id=? AND revision=?", (job.id, job.revision)).rowcount:
                    n += 1
                    conn.execute("DELETE FROM executions WHERE side='requester' AND job_id=?", (job.id,))
                    conn.execute("DELETE FROM events WHERE job_id=? AND side='requester'", (job.id,))
                    conn.execute("DELETE FROM result_cache WHERE job_id=?", (job.id,))
                    conn.execute("DELETE FROM shares WHERE target=?", (job.id,))
                    conn.execute("DELETE FROM job_secrets WHERE job_id=?", (job.id,))
            for sweep in records.sweeps:
                if conn.execute("DELETE FROM sweeps WHERE id=? AND revision=?", (sweep.id, sweep.revision)).rowcount:
                    n += 1
                    conn.execute("DELETE FROM sweep_indexes WHERE sweep_id=?", (sweep.id,))
                    conn.execute("DELETE FROM events WHERE job_id=? AND side='requester'", (sweep.id,))
                    conn.execute("DELETE FROM shares WHERE target=?", (sweep.id,))
            for ex in records.executions:
                if conn.execute("DELETE FROM executions WHERE side='compute' AND id=? AND revision=?",
                                (ex.id, ex.revision)).rowcount:
                    n += 1
                    conn.execute("DELETE FROM events WHERE job_id=? AND side='compute' AND execution_id=?",
                                 (ex.job_id, ex.id))
            n += _delete_published(conn, records.published)
            deleted = n  # set last: a failed transaction deleted nothing

        await self._write(op)
        return deleted

    async def expired_published(self, before: float, limit: int = 200) -> list[str]:
        """CIDs in the published table recorded before ``before`` (results retention)."""
        return await self._read(lambda c: _published_before(c, before, limit))

    async def delete_published(self, cids: Sequence[str]) -> None:
        await self._write(lambda c: _delete_published(c, cids))


def _published_before(c: sqlite3.Connection, before: float, limit: int) -> list[str]:
    return [r[0] for r in c.execute("SELECT cid FROM published WHERE at < ? LIMIT ?", (before, limit)).fetchall()]


def _delete_published(c: sqlite3.Connection, cids: Sequence[str]) -> int:
    return c.executemany("DELETE FROM published WHERE cid=?", [(cid,) for cid in cids]).rowcount
