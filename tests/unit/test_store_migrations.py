"""Stores written by earlier releases open, upgrade step by step and read back; a newer one is refused.

The fixtures are real stores written by those releases' own code (tests/fixtures/make_old_store.py
says how, and what is in them): e32c746 is the previous release, 421d8fe the last state of the code
before the store kept a schema version (it had the trust work's tables already).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio

from jobs import EventKind, ExecutionSide, ExecutionState, Job, JobSpec, JobState, ShoalError
from node.store import Store, StoreTooNew, schema
from node.store.writer import StoreUnavailable

FIXTURES = Path(__file__).parent.parent / "fixtures"
T = 1_700_000_000.0  # the fixtures' time
NODE = "12D3KooWOldReleaseComputeNode"
ALICE = "client-alice"


def copy_of(name: str, tmp_path: Path) -> Path:
    """A copy of fixture ``name`` (and its secrets key, if it has one): the test never touches the original."""
    path = tmp_path / "shoal.db"
    shutil.copyfile(FIXTURES / f"{name}.db", path)
    if (key := FIXTURES / f"{name}.secrets.key").exists():
        shutil.copyfile(key, path.with_suffix(".secrets.key"))
    return path


def user_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return schema.version(conn)
    finally:
        conn.close()


def layout(path: Path) -> dict[str, object]:
    """Every table's columns and every index's columns and uniqueness: what the code relies on."""
    conn = sqlite3.connect(path)
    try:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        out: dict[str, object] = {}
        for table in tables:
            out[table] = [r[1:] for r in conn.execute(f"PRAGMA table_info({table})")]
            for index in conn.execute(f"PRAGMA index_list({table})").fetchall():
                out[f"{table}.{index[1]}"] = (index[2], [r[2] for r in conn.execute(f"PRAGMA index_info({index[1]})")])
        return out
    finally:
        conn.close()


async def with_store(path: Path, body) -> None:
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await body(store)
        nursery.cancel_scope.cancel()


@pytest.mark.parametrize(("release", "verified", "trust_tables_filled"), [
    ("store-e32c746", False, False),  # the previous release: its cache entries had no verified flag
    ("store-421d8fe", True, True),  # before versioning, after the trust work
])
async def test_an_older_store_upgrades_and_reads_back(tmp_path, release, verified, trust_tables_filled):
    path = copy_of(release, tmp_path)
    assert user_version(path) == 0  # written before the store kept its version

    async def read_back(store: Store) -> None:
        done = await store.get_job("j-done")
        assert (done.state, done.result.cid, done.result.stdout) == (JobState.COMPLETED, "bafyjobresult", "hello\n")
        assert [(x.id, x.state) for x in await store.executions_of(ExecutionSide.REQUESTER, "j-done")] == [
            ("x-done-1", ExecutionState.COMPLETED), ("x-done-2", ExecutionState.REJECTED)]
        events = await store.events("j-done")
        assert [e.kind for e in events] == [EventKind.CREATED, EventKind.BID, EventKind.BID_ACCEPTED,
                                            EventKind.COMPLETED]
        assert events[1].execution_id == "x-done-1" and events[1].node_id == NODE and events[-1].at == T + 5
        assert {j.id for j in await store.live_jobs()} == {"j-running", "j-pending"}
        assert [x.id for x in await store.live_executions(ExecutionSide.REQUESTER)] == ["x-running"]
        job, digest = await store.find_idempotent(ALICE, "idem-running")
        assert (job.id, job.attempt, digest) == ("j-running", 1, "digest-running")
        assert (await store.get_job("j-failed")).reason == "no node can run it"
        assert await store.count_jobs_by_state() == {"completed": 1, "running": 1, "pending": 1, "failed": 1}
        assert (await store.list_jobs(owner=ALICE, state=None, limit=10, offset=0))[1] == 4
        [compute] = await store.executions_of(ExecutionSide.COMPUTE, "j-remote")
        assert compute.id == "x-compute" and compute.result.cid == "bafyjobresult"
        assert [e.kind for e in await store.events("j-remote", side=ExecutionSide.COMPUTE)] == [
            EventKind.RESULTS_PUBLISHED]
        [(accepted, rejected, rejected_at)] = (await store.reputations()).values()
        assert (accepted, rejected) == (3, 1) and rejected_at > time.time() - 600  # a quarantine from before lasts

        # the cache: an entry the previous release wrote is unverified and serves only its own client
        source, result, flag = await store.cached_result("cache-key-done", ALICE)
        assert (source, result.cid, flag) == ("j-done", "bafyjobresult", verified)
        assert (await store.cached_result("cache-key-done", "client-bob") is not None) == verified

        sweep = await store.get_sweep("s-old")
        assert (sweep.state, sweep.count, sweep.revision) == (JobState.RUNNING, 4, 1)
        assert [s.id for s in await store.live_sweeps()] == ["s-old"]
        assert (await store.find_idempotent_sweep(ALICE, "idem-sweep"))[1] == "digest-sweep"
        assert await store.index_states("s-old") == [
            (0, JobState.COMPLETED, "", 1, NODE, 0), (1, JobState.FAILED, "exit code 1", 2, NODE, 0),
            (2, JobState.RUNNING, "", 1, NODE, 0), (3, JobState.PENDING, "", 0, None, 0)]  # no retries before
        [record], total = await store.sweep_indexes("s-old", state=JobState.COMPLETED)
        assert (total, record.result.cid, record.updated_at) == (1, "bafyindex0", T + 4)
        assert [e.kind for e in await store.events("s-old")] == [EventKind.CREATED, EventKind.CLAIMED]
        assert await store.expired_published(T + 5) == ["bafypublished"]

        # the trust work's tables: kept where the store had them, empty and working where it did not
        assert await store.is_shared("j-done", "client-bob") == trust_tables_filled
        assert await store.nonce_counts(T) == ([(ALICE, int(T + 600), 1)] if trust_tables_filled else [])
        assert await store.live_secrets() == ({"j-running": {"TOKEN": "s3cret"}} if trust_tables_filled else {})
        assert await store.record_nonce(ALICE, b"nonce-2", T + 600)
        assert await store.share("j-failed", "client-bob", limit=10)

        # and new records are written beside the old ones
        spec = JobSpec.model_validate({"engine": {"name": "noop"}})
        await store.save(new_job=Job(id="j-new", owner=ALICE, spec=spec, created_at=T + 10, updated_at=T + 10),
                         events=[events[0].model_copy(update={"job_id": "j-new", "seq": 0})],
                         idempotency_key="idem-new", secrets={"KEY": "v"})
        assert (await store.get_job("j-new")).state == JobState.PENDING
        [created] = await store.events("j-new")
        assert created.seq > events[-1].seq
        assert (await store.live_secrets())["j-new"] == {"KEY": "v"}

    await with_store(path, read_back)
    assert user_version(path) == schema.LATEST
    assert not Path(f"{path}-wal").exists()

    # opening it again changes nothing
    before = path.read_bytes()
    conn = schema.connect(path)
    assert schema.migrate(conn, path) == schema.LATEST  # the version it found: no step ran
    conn.close()

    async def still_there(store: Store) -> None:
        assert (await store.get_job("j-new")).id == "j-new"

    await with_store(path, still_there)
    assert path.read_bytes() == before


async def test_records_an_earlier_release_took_and_this_one_refuses_are_set_aside(tmp_path, caplog):
    """The previous release took an output named '.' (a later fix refused '.' and '..'): one such live job stopped
    the upgraded node at every start (a ValidationError), and a finished one failed its owner's every listing
    and every round of retention. Any client could store one before an upgrade."""
    import json

    path = copy_of("store-e32c746", tmp_path)
    conn = sqlite3.connect(path)
    with conn:
        (body,) = conn.execute("SELECT body FROM jobs WHERE id='j-running'").fetchone()
        planted = json.loads(body)
        planted.update(id="j-planted", spec={**planted["spec"], "outputs": [{"name": ".", "path": "/outputs"}]})
        conn.execute("INSERT INTO jobs SELECT 'j-planted', owner, state, created_at + 1, revision, NULL, NULL, ? "
                     "FROM jobs WHERE id='j-running'", (json.dumps(planted),))
        (execution,) = conn.execute("SELECT body FROM executions WHERE id='x-compute'").fetchone()
        runs = json.loads(execution)
        runs.update(id="x-planted", state="accepted", spec=planted["spec"])
        conn.execute("INSERT INTO executions SELECT side, 'x-planted', job_id, 'accepted', revision, ? "
                     "FROM executions WHERE id='x-compute'", (json.dumps(runs),))
    conn.close()

    async def carries_on(store: Store) -> None:
        assert {j.id for j in await store.live_jobs()} == {"j-running", "j-pending"}
        assert [x.id for x in await store.live_executions(ExecutionSide.COMPUTE)] == []
        jobs, total = await store.list_jobs(owner=ALICE, state=None, limit=10, offset=0)
        assert total == 4 and {j.id for j in jobs} == {"j-done", "j-failed", "j-pending", "j-running"}
        assert await store.get_job("j-planted") is None

    with caplog.at_level("WARNING", logger="shoal.store"):
        await with_store(path, carries_on)
    assert "2 records stored by an earlier Shoal break rules made stricter since" in caplog.text
    conn = sqlite3.connect(path)
    kept = conn.execute("SELECT source, key, why, record FROM set_aside ORDER BY source").fetchall()
    conn.close()
    assert [(source, key) for source, key, _, _ in kept] == [("executions", "compute:x-planted"), ("jobs", "j-planted")]
    assert all("an output's name is a folder name" in why for _, _, why, _ in kept)
    assert json.loads(kept[1][3]) == planted  # kept whole


async def test_jobs_with_an_environment_no_os_passes_are_set_aside(tmp_path, caplog):
    """The previous release took a NUL in an environment value (it failed on the node that ran it) and a variable
    name ending in a newline; this one refuses both. A live such job would be skipped at every read, never to end."""
    import json

    path = copy_of("store-e32c746", tmp_path)
    conn = sqlite3.connect(path)
    with conn:
        (body,) = conn.execute("SELECT body FROM jobs WHERE id='j-running'").fetchone()
        for job_id, env in (("j-nul", {"A": "x\u0000y"}), ("j-newline", {"A\n": "x"}), ("j-fine", {"A": "x\\u0000"})):
            planted = json.loads(body)
            planted.update(id=job_id, spec={**planted["spec"], "env": env})
            conn.execute("INSERT INTO jobs SELECT ?, owner, state, created_at + 1, revision, NULL, NULL, ? "
                         "FROM jobs WHERE id='j-running'", (job_id, json.dumps(planted)))
    conn.close()

    async def carries_on(store: Store) -> None:
        assert {j.id for j in await store.live_jobs()} == {"j-running", "j-pending", "j-fine"}
        assert await store.get_job("j-nul") is None and await store.get_job("j-newline") is None

    with caplog.at_level("WARNING", logger="shoal.store"):
        await with_store(path, carries_on)
    conn = sqlite3.connect(path)
    kept = conn.execute("SELECT source, key FROM set_aside ORDER BY key").fetchall()
    conn.close()
    assert kept == [("jobs", "j-newline"), ("jobs", "j-nul")]


async def test_jobs_with_ids_no_node_makes_are_set_aside(tmp_path, caplog):
    """The previous release stored whatever id a peer's message named; this one refuses one that is not letters,
    digits, '.', '_' and '-' (the CLI wrote them into paths and terminals). Such a job would be skipped at every
    read."""
    import json

    path = copy_of("store-e32c746", tmp_path)
    with pytest.MonkeyPatch.context() as release:  # upgraded by the previous release (step 8), whose rules took them
        release.setattr(schema, "MIGRATIONS", schema.MIGRATIONS[:8])
        release.setattr(schema, "LATEST", 8)
        schema.migrate(conn := schema.connect(path), path)
        conn.close()
    conn = sqlite3.connect(path)
    with conn:
        (body,) = conn.execute("SELECT body FROM jobs WHERE id='j-running'").fetchone()
        for job_id, field, value in (("j-slash", "id", "j/../../x"), ("j-escape", "owner", "c\u001b]0;x"),
                                     ("j-space", "requester", "12D3 KooW"), ("j-fine", "owner", "c-0.a_b")):
            planted = json.loads(body)
            planted.update({"id": job_id, field: value})
            conn.execute("INSERT INTO jobs SELECT ?, owner, state, created_at + 1, revision, NULL, NULL, ?, updated_at,"
                         " holds_result FROM jobs WHERE id='j-running'", (job_id, json.dumps(planted)))
    conn.close()

    async def carries_on(store: Store) -> None:
        assert {j.id for j in await store.live_jobs()} == {"j-running", "j-pending", "j-fine"}

    with caplog.at_level("WARNING", logger="shoal.store"):
        await with_store(path, carries_on)
    conn = sqlite3.connect(path)
    kept = conn.execute("SELECT source, key FROM set_aside ORDER BY key").fetchall()
    conn.close()
    assert kept == [("jobs", "j-escape"), ("jobs", "j-slash"), ("jobs", "j-space")]


@pytest.mark.parametrize("release", ["store-e32c746", "store-421d8fe"])
def test_an_upgraded_store_has_the_tables_and_indexes_of_a_new_one(tmp_path, release):
    old, new = copy_of(release, tmp_path), tmp_path / "new.db"
    for path in (old, new):
        schema.migrate(conn := schema.connect(path), path)
        conn.close()
    assert layout(old) == layout(new)
    assert user_version(old) == user_version(new) == schema.LATEST


def test_a_store_from_a_newer_release_is_refused_untouched(tmp_path):
    path = tmp_path / "shoal.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE jobs_v9 (id TEXT)")
    conn.execute(f"PRAGMA user_version = {schema.LATEST + 1}")
    conn.close()
    before = layout(path)
    with pytest.raises(StoreTooNew, match=rf"schema version {schema.LATEST + 1}, newer than this release's") as e:
        Store(path)
    assert isinstance(e.value, ShoalError) and not e.value.retryable
    assert user_version(path) == schema.LATEST + 1 and layout(path) == before


def test_a_failed_step_leaves_the_store_as_it_was(tmp_path, monkeypatch):
    def broken(conn: sqlite3.Connection) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    monkeypatch.setattr(schema, "MIGRATIONS", (*schema.MIGRATIONS, broken))
    monkeypatch.setattr(schema, "LATEST", schema.LATEST + 1)
    path = tmp_path / "shoal.db"
    with pytest.raises(StoreUnavailable, match=f"cannot open the store {path}: disk I/O error"):
        Store(path)
    assert user_version(path) == 0 and layout(path) == {}  # not even the first steps' tables


def test_serve_on_a_data_dir_from_a_newer_release_says_so_in_one_line(tmp_path: Path) -> None:
    """The operator sees why the node will not start, not a traceback or an "unexpected" error."""
    import subprocess
    import sys

    data = tmp_path / "node"
    data.mkdir()
    with sqlite3.connect(data / "shoal.db") as conn:
        conn.execute("PRAGMA user_version = 99")
    done = subprocess.run([sys.executable, "-m", "cli.main", "serve", "--data-dir", str(data), "--no-compute",
                           "--listen", "/ip4/127.0.0.1/tcp/0", "--api-port", "0"], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "SHOAL_HOME": str(tmp_path / "home")})
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "newer than this release" in errors[0], done.stderr
    assert "unexpected" not in errors[0] and "Traceback" not in done.stderr
    assert user_version(data / "shoal.db") == 99  # left as it was


def test_a_store_another_process_holds_is_not_called_damaged(tmp_path):
    """Only SQLite's "corrupt" and "not a database" are damage: a lock held elsewhere (an operator's shell) was
    reported as a damaged store, with advice to move it away."""
    path = tmp_path / "shoal.db"
    with closing(sqlite3.connect(path)) as conn:
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
    with closing(sqlite3.connect(path, isolation_level=None)) as holder, \
            closing(sqlite3.connect(path, timeout=0.1)) as conn:
        holder.execute("BEGIN EXCLUSIVE")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            schema.damage(conn, path)
    path.write_bytes(b"x" * 4096)  # a file that is no database at all is damage
    with closing(sqlite3.connect(path)) as conn, pytest.raises(schema.StoreDamaged, match="is damaged"):
        schema.damage(conn, path)


async def test_a_read_of_pages_damaged_while_the_store_is_open_names_the_damage(tmp_path):
    """A read meeting a damaged page raised sqlite's bare DatabaseError: a 500 naming nothing, per request."""
    import os

    import trio

    from jobs import Event, EventKind
    from node.store import Store

    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(events=[Event(job_id=f"j{i}", at=1.0, kind=EventKind.ANNOUNCED, message="m" * 500)
                                 for i in range(400)])
        with closing(sqlite3.connect(tmp_path / "shoal.db")) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        with open(tmp_path / "shoal.db", "r+b") as f:
            for page in range(2, os.path.getsize(tmp_path / "shoal.db") // 4096):
                f.seek(page * 4096)
                f.write(os.urandom(4096))
        with pytest.raises(schema.StoreDamaged, match=r"is damaged .*restore it from a backup"):
            for i in range(400):
                await store.events(f"j{i}")
        nursery.cancel_scope.cancel()
