"""The store's file: how it is opened, its tables, and the numbered steps that build them.

SQLite keeps a number in the file's header, ``PRAGMA user_version``; here it counts the steps of
``MIGRATIONS`` the store has been through. Opening a store runs, in order and in one transaction,
the steps it has not had: a data dir from any earlier release upgrades, or, interrupted, stays as
it was. A new store is an old one with no tables and goes through the same steps, so there is one
path to today's schema. A store whose number is above ``LATEST`` was written by a newer release:
it is refused rather than guessed at.

Version 0 is every store written before the number was kept, from the first release to the last
one without it, so steps 1 to 3 tolerate finding their change already made. A step added from now
on runs on exactly the version before it. To change the schema, append a step; never edit one
that has shipped (a store that had it would never get the edit).
"""

from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import BaseModel, ValidationError

from jobs import Execution, Job, RunResult, ShoalError
from jobs.sweep import Sweep

log = logging.getLogger("shoal.store")

_FIRST_RELEASE = """
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
"""

_ACCESS_AND_SECRETS = """
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


def _statements(script: str) -> Iterator[str]:
    """The script's statements one by one (``executescript`` would commit the migration's transaction)."""
    statement = ""
    for line in script.splitlines(keepends=True):
        statement += line
        if sqlite3.complete_statement(statement):
            yield statement
            statement = ""


def _first_release(conn: sqlite3.Connection) -> None:
    """1: the tables of the first release: jobs, executions, events, result cache, sweeps, reputation."""
    for statement in _statements(_FIRST_RELEASE):
        conn.execute(statement)


def _cache_verified(conn: sqlite3.Connection) -> None:
    """2: a cache entry says whether its result was verified (agreed by two nodes, or run here): only a
    verified one may serve other clients. Entries from before are kept as unverified, serving only their
    own client's identical jobs."""
    if "verified" not in {row[1] for row in conn.execute("PRAGMA table_info(result_cache)")}:
        conn.execute("ALTER TABLE result_cache ADD COLUMN verified INTEGER NOT NULL DEFAULT 0")


def _access_and_secrets(conn: sqlite3.Connection) -> None:
    """3: shares of jobs and sweeps with other clients, nonces of signed API requests, sealed job secrets."""
    for statement in _statements(_ACCESS_AND_SECRETS):
        conn.execute(statement)


def _index_retries(conn: sqlite3.Connection) -> None:
    """4: how many times each sweep index was run again after it failed (the template's ``retries``)."""
    if "retries" not in {row[1] for row in conn.execute("PRAGMA table_info(sweep_indexes)")}:
        conn.execute("ALTER TABLE sweep_indexes ADD COLUMN retries INTEGER NOT NULL DEFAULT 0")


_SET_ASIDE = """
CREATE TABLE IF NOT EXISTS set_aside (  -- records stored under rules since made stricter: kept, never read by the node
    source TEXT NOT NULL,  -- the table the record was in, and its key there
    key TEXT NOT NULL,
    record TEXT NOT NULL,  -- its JSON, as stored
    why TEXT NOT NULL,
    at REAL NOT NULL
);
"""
# (table, its key's columns, the column holding a record, the model that reads it, the record's fate): a job,
# execution or sweep whose record is refused leaves its table; a result is taken out of its cache entry or index
_RECORDS: tuple[tuple[str, tuple[str, ...], str, type[BaseModel], str], ...] = (
    ("jobs", ("id",), "body", Job, "delete"), ("executions", ("side", "id"), "body", Execution, "delete"),
    ("sweeps", ("id",), "body", Sweep, "delete"), ("result_cache", ("key",), "result", RunResult, "delete"),
    ("sweep_indexes", ("sweep_id", "idx"), "result", RunResult, "clear"))


def _set_aside_refused(conn: sqlite3.Connection, tables: set[str] | None = None, only: str = "") -> None:
    """5: records this release's rules refuse, stored by an earlier one (an output named '.', which a later fix
    refused; any client could store one before an upgrade), are set aside: one of them stopped a node at every
    start, or failed every listing of its owner's jobs and every round of retention. They move, whole, to
    ``set_aside``; the node starts and the rest carries on. A release that makes a stored record's rules
    stricter appends a step that calls this again; ``only``, an SQL condition on the record's column, keeps it
    from reading every row of a large store when the rule's breaches are easy to find."""
    conn.execute(_SET_ASIDE)
    set_aside = 0
    for table, keys, column, model, fate in _RECORDS:
        if tables is not None and table not in tables:
            continue
        where = " AND ".join(f"{k}=?" for k in keys)
        condition = f"{column} IS NOT NULL" + (f" AND ({only.format(column=column)})" if only else "")
        rows = conn.execute(f"SELECT {column}, {', '.join(keys)} FROM {table} WHERE {condition}").fetchall()
        for record, *key in rows:
            try:
                model.model_validate_json(record)
            except ValidationError as e:
                why = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
                conn.execute("INSERT INTO set_aside VALUES (?, ?, ?, ?, ?)",
                             (table, ":".join(map(str, key)), record, why, time.time()))
                if fate == "delete":
                    conn.execute(f"DELETE FROM {table} WHERE {where}", key)
                else:
                    conn.execute(f"UPDATE {table} SET {column}=NULL WHERE {where}", key)
                set_aside += 1
    if set_aside:
        log.warning(
            "%d records stored by an earlier Shoal break rules made stricter since: set aside, kept in the store's "
            "table set_aside (SELECT source, key, why FROM set_aside)", set_aside)


def _set_aside_bounded_sweeps(conn: sqlite3.Connection) -> None:
    """6: sweeps the previous release took and this one refuses are set aside (as step 5 does): one with more
    than 256 variables in an index's environment (6330ce6), or with over 64 KiB of parameters (d912227). A live
    one stopped the upgraded node at every start, a finished one failed its owner's every listing. Only sweeps:
    nothing else was made stricter, and a store may hold millions of other rows."""
    _set_aside_refused(conn, tables={"sweeps"})


def _set_aside_unpassable_env(conn: sqlite3.Connection) -> None:
    """7: jobs, executions and sweeps the previous release took and this one refuses (896381a) are set aside (as
    step 5 does): a NUL in an environment variable's value or a sweep's parameter (no OS passes one: the run
    failed on its node), or a variable's name ending in a newline. A live one would be skipped at every read and
    never end. Only rows whose JSON holds an escaped NUL or a name ending in an escaped newline are read."""
    _set_aside_refused(conn, tables={"jobs", "executions", "sweeps"},
                       only=r"""instr({column}, '\u0000') > 0 OR instr({column}, '\n":') > 0""")


_EXPIRY = """
-- written with the body; a row an older release writes keeps the defaults, and retention reads its body to be sure
ALTER TABLE jobs ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN holds_result INTEGER NOT NULL DEFAULT 1;  -- 0: the body names no result left to unpin
ALTER TABLE executions ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
ALTER TABLE executions ADD COLUMN holds_result INTEGER NOT NULL DEFAULT 1;
ALTER TABLE sweeps ADD COLUMN updated_at REAL NOT NULL DEFAULT 0;
UPDATE jobs SET updated_at = coalesce(json_extract(body, '$.updated_at'), 0), holds_result =
    json_extract(body, '$.result.cid') IS NOT NULL AND json_extract(body, '$.results_removed_at') IS NULL;
UPDATE executions SET updated_at = coalesce(json_extract(body, '$.updated_at'), 0), holds_result =
    json_extract(body, '$.result.cid') IS NOT NULL AND json_extract(body, '$.results_removed_at') IS NULL;
UPDATE sweeps SET updated_at = coalesce(json_extract(body, '$.updated_at'), 0);
CREATE INDEX jobs_updated ON jobs(state, updated_at);
CREATE INDEX jobs_results ON jobs(state, updated_at) WHERE holds_result = 1;
CREATE INDEX jobs_owner_state ON jobs(owner, state, created_at);
CREATE INDEX executions_updated ON executions(side, state, updated_at);
CREATE INDEX executions_results ON executions(side, state, updated_at) WHERE holds_result = 1;
CREATE INDEX sweeps_updated ON sweeps(state, updated_at);
CREATE INDEX published_at ON published(at);
DROP INDEX jobs_state;
DROP INDEX executions_live;
"""


def _expiry_columns(conn: sqlite3.Connection) -> None:
    """8: jobs, executions and sweeps keep their body's ``updated_at`` in a column, jobs and executions whether
    they hold a result retention has yet to remove, each indexed: retention and the ttl read every row of the
    store once a minute (246 and 162 ms at 15,000 jobs, every other read waiting), now only the expired ones. A
    job listing by owner and state reads only those. The partial indexes of live jobs and executions go: no
    query could use them (their states are bound parameters), and the new ones serve those reads. Published
    results are found by time too."""
    for statement in _statements(_EXPIRY):
        conn.execute(statement)


def _set_aside_odd_ids(conn: sqlite3.Connection) -> None:
    """9: jobs, executions and sweeps the previous release took and this one refuses (``jobs.model.Identifier``)
    are set aside (as step 5 does): an id, owner, requester or node that is not letters, digits, '.', '_' and '-'.
    Nodes make none, but a peer's bid or announcement could name one, and the CLI wrote ids into paths and
    terminals. Only rows with such a field are read."""
    odd = " OR ".join(f"json_extract({{column}}, '$.{field}') GLOB '*[^A-Za-z0-9._-]*'"
                      f" OR json_extract({{column}}, '$.{field}') GLOB '[._-]*'"
                      f" OR length(json_extract({{column}}, '$.{field}')) > 128"
                      for field in ("id", "job_id", "owner", "requester", "node_id"))
    _set_aside_refused(conn, tables={"jobs", "executions", "sweeps"}, only=odd)


def _quarantines_lapse(conn: sqlite3.Connection) -> None:
    """10: when each node's last rejected result was counted: a quarantine lapses a day after it
    (``requester.trust.quarantined``). A node an earlier release quarantined serves its day from the upgrade."""
    conn.execute("ALTER TABLE reputation ADD COLUMN rejected_at REAL NOT NULL DEFAULT 0")
    conn.execute("UPDATE reputation SET rejected_at = ? WHERE rejected > 0", (time.time(),))


MIGRATIONS: tuple[Callable[[sqlite3.Connection], None], ...] = (
    _first_release, _cache_verified, _access_and_secrets, _index_retries, _set_aside_refused,
    _set_aside_bounded_sweeps, _set_aside_unpassable_env, _expiry_columns, _set_aside_odd_ids, _quarantines_lapse)
LATEST = len(MIGRATIONS)


class StoreTooNew(ShoalError):
    """The store was written by a newer release (its schema version is above ``LATEST``): opening it
    here could misread or damage it."""


SQLITE_CORRUPT, SQLITE_NOTADB = 11, 26  # result codes of a damaged file


class StoreDamaged(ShoalError):
    """SQLite found the store's pages damaged: no decision the node would take on it could be trusted."""


def _owner_only(path: Path) -> None:
    """Make the store at ``path`` readable by its owner only: it holds job specs, results, event logs and sealed
    secrets. SQLite gives the -wal and -shm files the main file's mode; a store made under a umask of 022 (0644,
    before this was done) is tightened. A file that cannot be made or changed is left to SQLite to report."""
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        with contextlib.suppress(OSError):  # absent, or not ours to change
            if (mode := file.stat().st_mode) & 0o077:
                file.chmod(mode & 0o700)


def connect(path: Path) -> sqlite3.Connection:
    _owner_only(path)
    # another process holding the database (an operator's sqlite3 shell) makes a write wait this long, then
    # try again (``node.store.writer``): an API request is answered 503 before its client gives up
    conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=5)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")  # durable against process crashes; WAL keeps it consistent
    conn.execute("PRAGMA foreign_keys=ON")
    conn.execute("PRAGMA secure_delete=FAST")  # deleted rows (job secrets) zeroed where it costs no extra I/O
    return conn


def damaged(path: Path, found: object) -> StoreDamaged:
    return StoreDamaged(f"the store {path} is damaged ({found}): restore it from a backup, or move it away and the "
                        "node starts with an empty one")


def is_damage(e: BaseException) -> bool:
    """Whether SQLite raised ``e`` on a damaged file (not a lock, a full disk or an I/O error)."""
    code = getattr(e, "sqlite_errorcode", None) if isinstance(e, sqlite3.DatabaseError) else None
    return code is not None and code & 0xFF in (SQLITE_CORRUPT, SQLITE_NOTADB)  # extended ones too: CORRUPT_INDEX


def damage(conn: sqlite3.Connection, path: Path) -> None:
    """Raise ``StoreDamaged`` if SQLite finds the store's pages damaged (a disk fault, a copy cut short): a node
    on one said it was ready, then answered every request for a job with an error naming nothing. The check
    reads every page once: 0.15 s for 216 MB."""
    try:
        found = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
    except sqlite3.DatabaseError as e:
        if not is_damage(e):
            raise  # a lock or an I/O error passes: the store is unavailable now, not damaged
        found = str(e)
    if found != "ok":
        raise damaged(path, "; ".join(line for line in found.splitlines() if line and not line.startswith("***")))


def version(conn: sqlite3.Connection) -> int:
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, path: Path) -> int:
    """Run the steps the store at ``path`` has not had; returns the version it was at (``LATEST``: nothing
    to do, and nothing written). Raises ``StoreTooNew`` for a store from a newer release."""
    found = version(conn)
    if found == LATEST:
        return found
    conn.execute("BEGIN IMMEDIATE")  # and look again: another process may have just upgraded it
    try:
        found = version(conn)
        if found > LATEST:
            raise StoreTooNew(f"{path} has schema version {found}, newer than this release's {LATEST}: it was"
                              " written by a newer Shoal; run that release (or a later one) on this data dir")
        for step in MIGRATIONS[found:]:
            step(conn)
        conn.execute(f"PRAGMA user_version = {LATEST}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    return found
