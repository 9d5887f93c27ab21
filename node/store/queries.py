"""The store's reads: each a plain function of the reading connection, returning the project's models.

``Store`` runs them in a worker thread, one at a time (see ``Store._read``); they never write.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from jobs import Event, Execution, ExecutionSide, ExecutionState, Job, JobState, RunResult
from jobs.sweep import IndexRange, IndexRecord, Sweep
from jobs.sweep import index_ranges as ranges_of
from node.store.sealed import Sealer, SealError

Connection = sqlite3.Connection
M = TypeVar("M", bound=BaseModel)

log = logging.getLogger("shoal.store")

_LIVE_EXECUTION_STATES = tuple(s.value for s in ExecutionState if not s.is_terminal)
_LIVE_JOB_STATES = tuple(s.value for s in JobState if not s.is_terminal)
_TERMINAL_JOB_STATES = tuple(s.value for s in JobState if s.is_terminal)
_TERMINAL_EXECUTION_STATES = tuple(s.value for s in ExecutionState if s.is_terminal)


def _marks(values: tuple[str, ...]) -> str:
    return ",".join("?" * len(values))


_refused: dict[str, set[tuple[str, ...]]] = {}  # table -> keys of the records read and refused (each logged once)
MAX_SKIPPED = 500  # refused records retention reads past by key; beyond, a pass may stop at them again


def _valid(model: type[M], table: str, record: str, **where: object) -> M | None:
    """``record``, ``table``'s row at ``where``, as ``model``; None if this release's rules refuse it.

    An upgrade sets such records aside (``schema._set_aside_refused``), but one can still come: from an older
    release run on this data dir since (one before 10b1a19 opens any store), or from rules made stricter with no
    step to set it aside. Read, one stopped the node at every start, or failed its owner's every listing and
    every retention round; skipped, the node carries on as if it were not there."""
    try:
        return model.model_validate_json(record)
    except ValidationError as e:
        found = f"SELECT * FROM {table} WHERE " + " AND ".join(f"{k}='{v}'" for k, v in where.items())
        keys = _refused.setdefault(table, set())
        if (row := tuple(map(str, where.values()))) not in keys:
            keys.add(row)
            why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
            log.warning("a record this release's rules refuse (%s) is skipped: the node reads it as if it were not"
                        " there, but it stays in the store (%s)", why, found)
        return None


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


# -- jobs ----------------------------------------------------------------------------------------

def get_job(c: Connection, job_id: str) -> Job | None:
    row = c.execute("SELECT body FROM jobs WHERE id=?", (job_id,)).fetchone()
    return _valid(Job, "jobs", row[0], id=job_id) if row else None


def find_idempotent(c: Connection, owner: str, key: str) -> tuple[Job, str] | None:
    # read as it is: skipped, its key would stay taken, and a submit with it would try again without end
    row = c.execute("SELECT body, request_digest FROM jobs WHERE owner=? AND idempotency_key=?",
                    (owner, key)).fetchone()
    return (Job.model_validate_json(row[0]), row[1]) if row else None


def list_jobs(c: Connection, owner: str | None, state: JobState | None, limit: int,
              offset: int, selector: str | None = None) -> tuple[list[Job], int]:
    """A page of jobs, newest first, and how many match; ``selector``: only jobs whose selector contains
    this text (``zone=eu``: the jobs that asked for nodes labelled so)."""
    where, args = [], []
    if owner is not None:
        where.append("owner=?")
        args.append(owner)
    if state is not None:
        where.append("state=?")
        args.append(state.value)
    if selector:
        where.append("instr(coalesce(json_extract(body, '$.spec.selector'), ''), ?) > 0")
        args.append(selector)
    clause = f"WHERE {' AND '.join(where)}" if where else ""
    total = c.execute(f"SELECT count(*) FROM jobs {clause}", args).fetchone()[0]
    rows = c.execute(f"SELECT body, id FROM jobs {clause} ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                     [*args, limit, offset]).fetchall()
    return [j for body, i in rows if (j := _valid(Job, "jobs", body, id=i))], total


def live_jobs(c: Connection) -> list[Job]:
    rows = c.execute(f"SELECT body, id FROM jobs WHERE state IN ({_marks(_LIVE_JOB_STATES)})",
                     _LIVE_JOB_STATES).fetchall()
    return [j for body, i in rows if (j := _valid(Job, "jobs", body, id=i))]


def live_secrets(c: Connection, sealer: Sealer) -> dict[str, dict[str, str] | None]:
    """job id -> its secret_env, for every job that has some (only live jobs do); None for secrets
    that cannot be opened (the key file was lost or replaced)."""
    out: dict[str, dict[str, str] | None] = {}
    for job_id, blob in c.execute("SELECT job_id, env FROM job_secrets").fetchall():
        try:
            out[job_id] = sealer.open(job_id, blob)
        except SealError:
            out[job_id] = None
    return out


def count_jobs_by_state(c: Connection) -> dict[str, int]:
    return dict(c.execute("SELECT state, count(*) FROM jobs GROUP BY state").fetchall())


def cached_result(c: Connection, key: str, owner: str) -> tuple[str, RunResult, bool] | None:
    """The cached result ``owner`` may be served: a verified one, or one of ``owner``'s own jobs.

    Returns (source job id, result, verified)."""
    row = c.execute("SELECT rc.job_id, rc.result, rc.verified FROM result_cache rc JOIN jobs j ON j.id = rc.job_id"
                    " WHERE rc.key=? AND (rc.verified=1 OR j.owner=?)", (key, owner)).fetchone()
    result = _valid(RunResult, "result_cache", row[1], key=key) if row else None
    return (row[0], result, bool(row[2])) if result else None


def is_shared(c: Connection, target: str, client: str) -> bool:
    return c.execute("SELECT 1 FROM shares WHERE target=? AND client=?", (target, client)).fetchone() is not None


def reputations(c: Connection) -> dict[str, tuple[int, int, float]]:
    """Each peer's results accepted, rejected, and when the last rejection was counted."""
    return {peer: (a, r, at)
            for peer, a, r, at in c.execute("SELECT peer, accepted, rejected, rejected_at FROM reputation")}


# -- executions and events -----------------------------------------------------------------------

def executions_of(c: Connection, side: ExecutionSide, job_id: str) -> list[Execution]:
    rows = c.execute("SELECT body, id FROM executions WHERE side=? AND job_id=? ORDER BY rowid",
                     (side.value, job_id)).fetchall()
    return [x for body, i in rows if (x := _valid(Execution, "executions", body, side=side.value, id=i))]


def live_executions(c: Connection, side: ExecutionSide) -> list[Execution]:
    rows = c.execute(f"SELECT body, id FROM executions WHERE side=? AND state IN ({_marks(_LIVE_EXECUTION_STATES)})",
                     (side.value, *_LIVE_EXECUTION_STATES)).fetchall()
    return [x for body, i in rows if (x := _valid(Execution, "executions", body, side=side.value, id=i))]


def events(c: Connection, job_id: str, after: int, limit: int, side: ExecutionSide) -> list[Event]:
    rows = c.execute("SELECT seq, job_id, at, kind, execution_id, node_id, message FROM events"
                     " WHERE job_id=? AND side=? AND seq>? ORDER BY seq LIMIT ?",
                     (job_id, side.value, after, limit)).fetchall()
    return [Event(seq=r[0], job_id=r[1], at=r[2], kind=r[3], execution_id=r[4], node_id=r[5], message=r[6])
            for r in rows]


# -- sweeps --------------------------------------------------------------------------------------

def get_sweep(c: Connection, sweep_id: str) -> Sweep | None:
    row = c.execute("SELECT body FROM sweeps WHERE id=?", (sweep_id,)).fetchone()
    return _valid(Sweep, "sweeps", row[0], id=sweep_id) if row else None


def find_idempotent_sweep(c: Connection, owner: str, key: str) -> tuple[Sweep, str] | None:
    # read as it is, as find_idempotent reads a job
    row = c.execute("SELECT body, request_digest FROM sweeps WHERE owner=? AND idempotency_key=?",
                    (owner, key)).fetchone()
    return (Sweep.model_validate_json(row[0]), row[1]) if row else None


def list_sweeps(c: Connection, owner: str, limit: int, offset: int) -> tuple[list[Sweep], int]:
    total = c.execute("SELECT count(*) FROM sweeps WHERE owner=?", (owner,)).fetchone()[0]
    rows = c.execute("SELECT body, id FROM sweeps WHERE owner=? ORDER BY created_at DESC, id LIMIT ? OFFSET ?",
                     (owner, limit, offset)).fetchall()
    return [s for body, i in rows if (s := _valid(Sweep, "sweeps", body, id=i))], total


def live_sweeps(c: Connection) -> list[Sweep]:
    rows = c.execute(f"SELECT body, id FROM sweeps WHERE state IN ({_marks(_LIVE_JOB_STATES)})",
                     _LIVE_JOB_STATES).fetchall()
    return [s for body, i in rows if (s := _valid(Sweep, "sweeps", body, id=i))]


def index_states(c: Connection, sweep_id: str) -> list[tuple[int, JobState, str, int, str | None, int]]:
    """(index, state, reason, attempts, node, retries) of every index, in index order."""
    rows = c.execute("SELECT idx, state, reason, attempts, node_id, retries FROM sweep_indexes WHERE sweep_id=?"
                     " ORDER BY idx", (sweep_id,)).fetchall()
    return [(i, JobState(s), r, a, n, t) for i, s, r, a, n, t in rows]


def index_ranges(c: Connection, sweep_id: str, limit: int | None) -> list[IndexRange]:
    """``jobs.sweep.index_ranges`` of the sweep's indexes, read here (off the event loop): 100,000 took 0.5 s."""
    states = {s.value: s for s in JobState}
    rows = c.execute("SELECT idx, state, reason FROM sweep_indexes WHERE sweep_id=? ORDER BY idx", (sweep_id,))
    return ranges_of(((i, states[s], r) for i, s, r in rows), limit)


def index_reasons(c: Connection, sweep_id: str, indexes: list[int]) -> dict[int, str]:
    """The reason of each of ``indexes`` (those the sweep has)."""
    out: dict[int, str] = {}
    for at in range(0, len(indexes), 500):
        chunk = indexes[at:at + 500]
        out.update(c.execute(f"SELECT idx, reason FROM sweep_indexes WHERE sweep_id=? AND idx IN ({_marks(chunk)})",
                             (sweep_id, *chunk)).fetchall())
    return out


def sweep_indexes(c: Connection, sweep_id: str, state: JobState | None, first: int,
                  limit: int) -> tuple[list[IndexRecord], int]:
    """Index records from ``first`` on (in index order), and how many match ``state`` in all."""
    where, args = "sweep_id=?", [sweep_id]
    if state is not None:
        where += " AND state=?"
        args.append(state.value)
    # the sweep's own counts, written with its indexes: counting them took 75-140 ms at 100,000 indexes, on
    # every page a waiting Client.map asks for
    path = "$.count" if state is None else f"$.counts.{state.value}"
    row = c.execute("SELECT json_extract(body, ?) FROM sweeps WHERE id=?", (path, sweep_id)).fetchone()
    if row is not None and state is not None and row[0] is None:
        total = 0  # no index in that state
    elif row is not None and isinstance(row[0], int):
        total = row[0]
    else:
        total = c.execute(f"SELECT count(*) FROM sweep_indexes WHERE {where}", args).fetchone()[0]
    rows = c.execute(f"SELECT idx, state, node_id, reason, attempts, retries, result, updated_at FROM sweep_indexes"
                     f" WHERE {where} AND idx>=? ORDER BY idx LIMIT ?", [*args, first, limit]).fetchall()
    return [IndexRecord(index=i, state=s, node_id=n, reason=r, attempts=a, retries=t, updated_at=u,
                        result=_valid(RunResult, "sweep_indexes", res, sweep_id=sweep_id, idx=i) if res else None)
            for i, s, n, r, a, t, res, u in rows], total


# -- nonces of signed API requests ---------------------------------------------------------------

def nonce_counts(c: Connection, now: float) -> list[tuple[str, int, int]]:
    """(client, whole second of expiry, how many) of the nonces still live at ``now``."""
    return c.execute("SELECT client, CAST(expires AS INTEGER), COUNT(*) FROM nonces WHERE expires >= ? GROUP BY 1, 2",
                     (now,)).fetchall()


# -- time to live ----------------------------------------------------------------------------------

def _not_refused(table: str) -> tuple[str, tuple[str, ...]]:
    """A clause leaving out the rows of ``table`` read and refused before, and its arguments: retention reads a
    batch at a time and stops at an empty one, so a batch of them read again and again held every pass."""
    refused = tuple(key[-1] for key in itertools.islice(_refused.get(table, ()), MAX_SKIPPED)
                    if table != "executions" or key[0] == "compute")  # retention reads the compute side's
    return (f" AND id NOT IN ({_marks(refused)})", refused) if refused else ("", ())


def expired_results(c: Connection, before: float, limit: int) -> tuple[list[Job], list[Execution]]:
    """Finished jobs (requester) and executions (compute) whose published results are older than
    ``before`` and not yet removed."""
    (skip_jobs, refused_jobs), (skip_executions, refused_executions) = _not_refused("jobs"), _not_refused("executions")
    # the columns find the candidates (indexes jobs_results, executions_results), the body decides: a row an
    # older release wrote has the columns' defaults, updated_at 0 and holds_result 1
    held = ("holds_result=1 AND updated_at < ? AND json_extract(body, '$.updated_at') < ?"
            " AND json_extract(body, '$.result.cid') IS NOT NULL"
            " AND json_extract(body, '$.results_removed_at') IS NULL")
    jobs = c.execute(
        f"SELECT body, id FROM jobs WHERE state IN ({_marks(_TERMINAL_JOB_STATES)}) AND {held}{skip_jobs} LIMIT ?",
        (*_TERMINAL_JOB_STATES, before, before, *refused_jobs, limit),
    ).fetchall()
    executions = c.execute(
        f"SELECT body, id FROM executions WHERE side='compute' AND state IN ({_marks(_TERMINAL_EXECUTION_STATES)})"
        f" AND {held}{skip_executions} LIMIT ?",
        (*_TERMINAL_EXECUTION_STATES, before, before, *refused_executions, limit),
    ).fetchall()
    return ([j for body, i in jobs if (j := _valid(Job, "jobs", body, id=i))],
            [x for body, i in executions if (x := _valid(Execution, "executions", body, side="compute", id=i))])


def expired_records(c: Connection, before: float, limit: int) -> ExpiredRecords:
    """Finished jobs and sweeps (requester), finished executions (compute) last updated before
    ``before``, and published results recorded before it: at most ``limit`` of each kind."""
    jmarks = _marks(_TERMINAL_JOB_STATES)
    (skip_jobs, refused_jobs), (skip_sweeps, refused_sweeps) = _not_refused("jobs"), _not_refused("sweeps")
    skip_executions, refused_executions = _not_refused("executions")
    # the column finds the candidates (indexes *_updated), the body decides (as in expired_results)
    updated = "updated_at < ? AND json_extract(body, '$.updated_at') < ?"
    jobs = c.execute(f"SELECT body, id FROM jobs WHERE state IN ({jmarks}) AND {updated}{skip_jobs} LIMIT ?",
                     (*_TERMINAL_JOB_STATES, before, before, *refused_jobs, limit)).fetchall()
    sweeps = [s for body, i in c.execute(
        f"SELECT body, id FROM sweeps WHERE state IN ({jmarks}) AND {updated}{skip_sweeps} LIMIT ?",
        (*_TERMINAL_JOB_STATES, before, before, *refused_sweeps, limit)).fetchall()
        if (s := _valid(Sweep, "sweeps", body, id=i))]
    sweep_cids = [r[0] for s in sweeps for r in c.execute(
        "SELECT json_extract(result, '$.cid') FROM sweep_indexes WHERE sweep_id=? AND result IS NOT NULL"
        " AND json_extract(result, '$.cid') IS NOT NULL", (s.id,)).fetchall()]
    executions = c.execute(f"SELECT body, id FROM executions WHERE side='compute'"
                           f" AND state IN ({_marks(_TERMINAL_EXECUTION_STATES)})"
                           f" AND {updated}{skip_executions} LIMIT ?",
                           (*_TERMINAL_EXECUTION_STATES, before, before, *refused_executions, limit)).fetchall()
    return ExpiredRecords(
        jobs=[j for body, i in jobs if (j := _valid(Job, "jobs", body, id=i))], sweeps=sweeps, sweep_cids=sweep_cids,
        executions=[x for body, i in executions if (x := _valid(Execution, "executions", body, side="compute", id=i))],
        published=expired_published(c, before, limit))


def expired_published(c: Connection, before: float, limit: int) -> list[str]:
    """CIDs in the published table recorded before ``before`` (results retention)."""
    return [r[0] for r in c.execute("SELECT cid FROM published WHERE at < ? LIMIT ?", (before, limit)).fetchall()]
