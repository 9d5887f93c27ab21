"""The node's SQLite store (WAL), used from trio: writes through one group-commit writer, reads in a worker thread.

Three seams, each in its own module: ``schema`` (the tables and the numbered migrations that bring
an older data dir up to them), ``writer`` (the task that commits queued writes together) and
``queries`` (the reads). ``Store`` here is what the roles use: it builds each write as one
operation for the writer, and runs each read on the reading connection.

Every update is conditional on the revision the caller read; a mismatch raises
``StaleState`` for that operation only, and its event rows are not written.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar, TypeVarTuple

import trio

from jobs import Event, Execution, ExecutionSide, Job, JobState, RunResult, ShoalError, StaleState
from jobs.sweep import IndexRange, IndexRecord, Sweep
from node.store import queries
from node.store.bell import EventBell
from node.store.queries import ExpiredRecords
from node.store.schema import connect, damage, damaged, is_damage, migrate
from node.store.sealed import Sealer
from node.store.writer import StoreClosed, StoreStatistics, StoreUnavailable, Writer
from node.tasks import RunBlocking

__all__ = ["ExpiredRecords", "Store", "StoreClosed", "StoreStatistics", "StoreUnavailable"]

T = TypeVar("T")
CLOSE_WAIT = 10.0  # seconds a stopping store waits for a read in a worker thread to end before closing under it
Args = TypeVarTuple("Args")


class Store:
    """A node's store. Run its writer in a nursery before writing: ``await nursery.start(store.run)``;
    cancelling that task closes the store (later calls raise ``StoreClosed``).

    ``run_blocking`` runs each SQLite call: in a worker thread by default (see ``node.tasks.RunBlocking``).
    """

    def __init__(self, path: Path, *, run_blocking: RunBlocking = trio.to_thread.run_sync) -> None:
        self.path = path
        self.sealer = Sealer(path.with_suffix(".secrets.key"))
        try:
            conn = connect(path)
            try:
                damage(conn, path)
                migrate(conn, path)
            except BaseException:
                conn.close()
                raise
            self._reader = connect(path)
        except sqlite3.Error as e:  # a full disk, a read-only or locked file: say which, at start
            raise StoreUnavailable(f"cannot open the store {path}: {e}") from e
        self._writer = Writer(conn, path, run_blocking=run_blocking)
        self._run_blocking = run_blocking
        self._read_lock = trio.CapacityLimiter(1)
        self.bell = EventBell()  # rung for the jobs whose events a write added, once it is committed

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The writer task. Runs until cancelled; then closes the connections."""
        try:
            await self._writer.run(task_status=task_status)
        finally:
            # a read in a worker thread cannot be cancelled: closing the reader under it failed it with "closed
            # database" (a logged 500 while a node stopped); later reads are StoreClosed (``closed`` is set)
            with trio.CancelScope(shield=True), trio.move_on_after(CLOSE_WAIT):
                await self._read_lock.acquire()
            self._reader.close()

    async def _read(self, fn: Callable[[sqlite3.Connection, *Args], T], *args: *Args) -> T:
        """``fn(reader, *args)`` through ``run_blocking`` (a worker thread), one read at a time."""
        if self._writer.closed:
            raise StoreClosed("the store is shutting down")
        try:
            return await self._run_blocking(fn, self._reader, *args, limiter=self._read_lock)
        except sqlite3.Error as e:
            if (said := self._said(e)) is None:
                raise
            raise said from e

    async def _read_by_key(self, fn: Callable[[sqlite3.Connection, *Args], T], *args: *Args) -> T:
        """``fn(reader, *args)`` for a read of a few rows by key: on the event loop's thread when no other read
        holds the reader (else in its turn, as ``_read``). Such a read takes microseconds; the hop to a worker
        thread and back took ten times as long, and 6 % of a busy requester's CPU went to it (py-spy)."""
        await trio.lowlevel.checkpoint()  # a schedule point, as a thread's read is: a loop of reads lets others run
        if self._writer.closed:
            raise StoreClosed("the store is shutting down")
        try:
            self._read_lock.acquire_nowait()
        except trio.WouldBlock:
            return await self._read(fn, *args)
        try:
            return fn(self._reader, *args)
        except sqlite3.Error as e:
            if (said := self._said(e)) is None:
                raise
            raise said from e
        finally:
            self._read_lock.release()

    def _said(self, e: sqlite3.Error) -> ShoalError | None:
        """A read's error as the node says it (None: as it is): a read that raced the shutdown is StoreClosed, not
        a bug; pages damaged while the node runs are StoreDamaged, as at start (they failed each request naming
        nothing)."""
        if isinstance(e, sqlite3.ProgrammingError) and self._writer.closed:
            return StoreClosed("the store is shutting down")
        return damaged(self.path, e) if is_damage(e) else None

    def statistics(self) -> StoreStatistics:
        return self._writer.statistics()

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
        judged_at: float = 0.0,
        secrets: dict[str, str] | None = None,
    ) -> None:
        """Write all of it in one transaction, or none of it.

        ``job`` and ``executions`` are updates: each carries its bumped revision and is written
        only if the stored revision is the one before it (else ``StaleState``).
        ``secrets``: the secret_env of ``new_job``, sealed; a job's secrets are deleted by the
        update that makes it terminal. ``reputation``: (results accepted, rejected) to add to each peer's; a
        rejection among them was counted at ``judged_at``.
        """
        jrow = srow = None
        if new_job is not None:
            jrow = (new_job.id, new_job.owner, new_job.state.value, new_job.created_at, new_job.revision,
                    idempotency_key, request_digest, new_job.model_dump_json(), new_job.updated_at,
                    _holds_result(new_job))
            if secrets and not new_job.state.is_terminal:
                srow = (new_job.id, self.sealer.seal(new_job.id, secrets))
        jupd = None
        if job is not None:
            jupd = (job.state.value, job.revision, job.model_dump_json(), job.updated_at, _holds_result(job), job.id,
                    job.revision - 1)
        forget = job.id if job is not None and job.state.is_terminal else None
        xrows = [(side.value, x.id, x.job_id, x.state.value, x.revision, x.model_dump_json(), x.updated_at,
                  _holds_result(x)) for x in new_executions]
        xupd = [(x.state.value, x.revision, x.model_dump_json(), x.updated_at, _holds_result(x), side.value, x.id,
                 x.revision - 1) for x in executions]
        erows = [(e.job_id, e.at, e.kind.value, e.execution_id, e.node_id, e.message, side.value) for e in events]
        crow = (cache[0], cache[1], cache[2].model_dump_json(), time.time(), int(cache[3])) if cache else None
        rrows = [(peer, a, r, judged_at if r else 0.0) for peer, (a, r) in (reputation or {}).items()]

        def op(conn: sqlite3.Connection) -> None:
            if jrow:
                conn.execute(
                    "INSERT INTO jobs (id, owner, state, created_at, revision, idempotency_key, request_digest,"
                    " body, updated_at, holds_result) VALUES (?,?,?,?,?,?,?,?,?,?)",
                    jrow,
                )
            if jupd and conn.execute(
                "UPDATE jobs SET state=?, revision=?, body=?, updated_at=?, holds_result=? WHERE id=? AND revision=?",
                jupd
            ).rowcount != 1:
                raise StaleState(f"job {jupd[5]}: stored revision is not {jupd[6]}")
            if srow:
                conn.execute("INSERT INTO job_secrets (job_id, env) VALUES (?,?)", srow)
            if forget:
                conn.execute("DELETE FROM job_secrets WHERE job_id=?", (forget,))
            if xrows:
                conn.executemany(
                    "INSERT INTO executions (side, id, job_id, state, revision, body, updated_at, holds_result)"
                    " VALUES (?,?,?,?,?,?,?,?)", xrows
                )
            for row in xupd:
                if conn.execute(
                    "UPDATE executions SET state=?, revision=?, body=?, updated_at=?, holds_result=? WHERE side=?"
                    " AND id=? AND revision=?", row
                ).rowcount != 1:
                    raise StaleState(f"execution {row[6]}: stored revision is not {row[7]}")
            if erows:
                conn.executemany(
                    "INSERT INTO events (job_id, at, kind, execution_id, node_id, message, side)"
                    " VALUES (?,?,?,?,?,?,?)",
                    erows,
                )
            if crow:
                conn.execute(  # a verified result stays until it expires: no later run displaces it
                    "INSERT INTO result_cache (key, job_id, result, created_at, verified) VALUES (?,?,?,?,?)"
                    " ON CONFLICT(key) DO UPDATE SET job_id=excluded.job_id, result=excluded.result,"
                    " created_at=excluded.created_at, verified=excluded.verified"
                    " WHERE NOT result_cache.verified", crow)
            if rrows:
                conn.executemany(  # added, not set: decisions about other jobs count for the same peers meanwhile
                    "INSERT INTO reputation (peer, accepted, rejected, rejected_at) VALUES (?,?,?,?) ON CONFLICT(peer)"
                    " DO UPDATE SET accepted=accepted+excluded.accepted, rejected=rejected+excluded.rejected,"
                    " rejected_at=max(rejected_at, excluded.rejected_at)", rrows)

        await self._writer.write(op)
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
                    idempotency_key, request_digest, new_sweep.model_dump_json(), new_sweep.updated_at)
        target = new_sweep or sweep
        supd = (sweep.state.value, sweep.revision, sweep.model_dump_json(), sweep.updated_at, sweep.id,
                sweep.revision - 1) \
            if sweep is not None else None
        irows = [(x.state.value, x.node_id, x.reason, x.attempts, x.retries,
                  x.result.model_dump_json() if x.result else None, x.updated_at, target.id, x.index)
                 for x in indexes] if target is not None else []
        erows = [(e.job_id, e.at, e.kind.value, e.execution_id, e.node_id, e.message, "requester") for e in events]

        def op(conn: sqlite3.Connection) -> None:
            if srow:
                conn.execute("INSERT INTO sweeps (id, owner, state, created_at, revision, idempotency_key,"
                             " request_digest, body, updated_at) VALUES (?,?,?,?,?,?,?,?,?)", srow)
                conn.executemany("INSERT INTO sweep_indexes (sweep_id, idx, state, reason) VALUES (?,?,?,?)",
                                 ((srow[0], i, srow[2], new_sweep.reason if new_sweep.state.is_terminal else "")
                                  for i in range(new_sweep.count)))
            if supd and conn.execute(
                "UPDATE sweeps SET state=?, revision=?, body=?, updated_at=? WHERE id=? AND revision=?", supd
            ).rowcount != 1:
                raise StaleState(f"sweep {supd[4]}: stored revision is not {supd[5]}")
            if irows:
                conn.executemany("UPDATE sweep_indexes SET state=?, node_id=?, reason=?, attempts=?, retries=?,"
                                 " result=?, updated_at=? WHERE sweep_id=? AND idx=?", irows)
            if end_unfinished is not None and target is not None:
                conn.execute("UPDATE sweep_indexes SET state=?, reason=?, updated_at=? WHERE sweep_id=?"
                             " AND state IN ('pending', 'running')",
                             (end_unfinished[0].value, end_unfinished[1], time.time(), target.id))
            if erows:
                conn.executemany("INSERT INTO events (job_id, at, kind, execution_id, node_id, message, side)"
                                 " VALUES (?,?,?,?,?,?,?)", erows)

        await self._writer.write(op)
        if erows:
            self.bell.ring(row[0] for row in erows)

    async def add_published(self, cids: Sequence[str], at: float) -> None:
        """Remember results (or uploaded contexts) this node published outside an execution record, so
        retention finds them; publishing one again counts from the latest time."""
        rows = [(cid, at) for cid in cids]
        await self._writer.write(lambda c: c.executemany(
            "INSERT INTO published (cid, at) VALUES (?,?) ON CONFLICT(cid) DO UPDATE SET at=max(at, excluded.at)",
            rows))

    # -- nonces of signed API requests (replay protection, see node.api.auth) ----------------------

    async def record_nonce(self, client: str, nonce: bytes, expires: float) -> bool:
        """Record a request's nonce durably; False if this client used it before (a replay).

        Each call is one row in the writer's next group commit, so a busy API costs one commit
        per batch of requests, not one per request. A request does not wait for a store that cannot
        be written (``StoreUnavailable``: the API answers 503).
        """
        fresh = False

        def op(conn: sqlite3.Connection) -> None:
            nonlocal fresh
            fresh = conn.execute("INSERT OR IGNORE INTO nonces (client, nonce, expires) VALUES (?,?,?)",
                                 (client, nonce, expires)).rowcount == 1

        await self._writer.write(op, wait=False)
        return fresh

    async def purge_nonces(self, now: float) -> int:
        """Delete the nonces whose requests' timestamps are no longer accepted."""
        removed = 0

        def op(conn: sqlite3.Connection) -> None:
            nonlocal removed
            removed = conn.execute("DELETE FROM nonces WHERE expires < ?", (now,)).rowcount

        await self._writer.write(op)
        return removed

    async def forget_cached(self, job_id: str) -> None:
        await self._writer.write(lambda c: c.execute("DELETE FROM result_cache WHERE job_id=?", (job_id,)))

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

        await self._writer.write(op)
        return added

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

        await self._writer.write(op)
        return deleted

    async def delete_published(self, cids: Sequence[str]) -> None:
        await self._writer.write(lambda c: _delete_published(c, cids))

    # -- reads (see queries.py) --------------------------------------------------------------------

    async def get_job(self, job_id: str) -> Job | None:
        return await self._read_by_key(queries.get_job, job_id)

    async def find_idempotent(self, owner: str, key: str) -> tuple[Job, str] | None:
        return await self._read_by_key(queries.find_idempotent, owner, key)

    async def list_jobs(
        self, *, owner: str | None, state: JobState | None, limit: int, offset: int, selector: str | None = None
    ) -> tuple[list[Job], int]:
        return await self._read(queries.list_jobs, owner, state, limit, offset, selector)

    async def live_jobs(self) -> list[Job]:
        return await self._read(queries.live_jobs)

    async def live_secrets(self) -> dict[str, dict[str, str] | None]:
        """job id -> its secret_env, for every job that has some (only live jobs do); None for
        secrets that cannot be opened (the key file was lost or replaced)."""
        return await self._read(queries.live_secrets, self.sealer)

    async def count_jobs_by_state(self) -> dict[str, int]:
        return await self._read(queries.count_jobs_by_state)

    async def cached_result(self, key: str, owner: str) -> tuple[str, RunResult, bool] | None:
        """The cached result ``owner`` may be served: a verified one, or one of ``owner``'s own jobs.

        Returns (source job id, result, verified)."""
        return await self._read_by_key(queries.cached_result, key, owner)

    async def is_shared(self, target: str, client: str) -> bool:
        return await self._read_by_key(queries.is_shared, target, client)

    async def reputations(self) -> dict[str, tuple[int, int, float]]:
        return await self._read(queries.reputations)

    async def executions_of(self, side: ExecutionSide, job_id: str) -> list[Execution]:
        return await self._read_by_key(queries.executions_of, side, job_id)

    async def live_executions(self, side: ExecutionSide) -> list[Execution]:
        return await self._read(queries.live_executions, side)

    async def events(self, job_id: str, *, after: int = 0, limit: int = 1000,
                     side: ExecutionSide = ExecutionSide.REQUESTER) -> list[Event]:
        """The job's event log as its requester recorded it (``side``: or the compute node's view)."""
        return await self._read(queries.events, job_id, after, limit, side)

    async def get_sweep(self, sweep_id: str) -> Sweep | None:
        return await self._read(queries.get_sweep, sweep_id)

    async def find_idempotent_sweep(self, owner: str, key: str) -> tuple[Sweep, str] | None:
        return await self._read(queries.find_idempotent_sweep, owner, key)

    async def list_sweeps(self, *, owner: str, limit: int, offset: int) -> tuple[list[Sweep], int]:
        return await self._read(queries.list_sweeps, owner, limit, offset)

    async def live_sweeps(self) -> list[Sweep]:
        return await self._read(queries.live_sweeps)

    async def index_states(self, sweep_id: str) -> list[tuple[int, JobState, str, int, str | None, int]]:
        """(index, state, reason, attempts, node, retries) of every index, in index order."""
        return await self._read(queries.index_states, sweep_id)

    async def index_ranges(self, sweep_id: str, limit: int | None = None) -> list[IndexRange]:
        """The sweep's indexes as ranges in one state (``jobs.sweep.index_ranges``), at most ``limit + 1``."""
        return await self._read(queries.index_ranges, sweep_id, limit)

    async def index_reasons(self, sweep_id: str, indexes: list[int]) -> dict[int, str]:
        """The reason of each of ``indexes`` (those the sweep has)."""
        return await self._read(queries.index_reasons, sweep_id, indexes)

    async def sweep_indexes(self, sweep_id: str, *, state: JobState | None = None, first: int = 0,
                            limit: int = 1000) -> tuple[list[IndexRecord], int]:
        """Index records from ``first`` on (in index order), and how many match ``state`` in all."""
        return await self._read(queries.sweep_indexes, sweep_id, state, first, limit)

    async def nonce_counts(self, now: float) -> list[tuple[str, int, int]]:
        """(client, whole second of expiry, how many) of the nonces still live at ``now``."""
        return await self._read(queries.nonce_counts, now)

    async def expired_results(self, before: float, limit: int = 200) -> tuple[list[Job], list[Execution]]:
        """Finished jobs (requester) and executions (compute) whose published results are older than
        ``before`` and not yet removed."""
        return await self._read(queries.expired_results, before, limit)

    async def expired_records(self, before: float, limit: int = 200) -> ExpiredRecords:
        """Finished jobs and sweeps (requester), finished executions (compute) last updated before
        ``before``, and published results recorded before it: at most ``limit`` of each kind."""
        return await self._read(queries.expired_records, before, limit)

    async def expired_published(self, before: float, limit: int = 200) -> list[str]:
        """CIDs in the published table recorded before ``before`` (results retention)."""
        return await self._read(queries.expired_published, before, limit)


def _holds_result(record: Job | Execution) -> bool:
    """Whether ``record`` names a result retention has not removed yet (the column ``holds_result``)."""
    return record.result is not None and record.result.cid is not None and record.results_removed_at is None


def _delete_published(c: sqlite3.Connection, cids: Sequence[str]) -> int:
    return c.executemany("DELETE FROM published WHERE cid=?", [(cid,) for cid in cids]).rowcount
