"""Records an earlier release stored under rules made stricter since: an upgrade sets them aside, and a read that
meets one anyway skips it, logged, instead of failing the node's start, a listing or a round of retention."""

from __future__ import annotations

import json
import shutil
import sqlite3
from pathlib import Path

from jobs import Job, JobSpec, JobState, RunResult
from jobs.sweep import Sweep, SweepSpec
from node.store import Store, queries, schema
from tests.unit.test_store_migrations import with_store

FIXTURES = Path(__file__).parent.parent / "fixtures"
T = 1_700_000_000.0  # the fixture's time
ALICE = "client-alice"


async def test_sweeps_the_previous_release_took_and_this_one_refuses_are_set_aside(tmp_path, caplog):
    """ca036c6 (schema v5) took 300 parameters and a 70,000-character value; today's rules refuse both. Its live
    sweep stopped the upgraded node at every start, its finished one failed its owner's every listing."""
    path = tmp_path / "shoal.db"
    shutil.copyfile(FIXTURES / "store-ca036c6-sweeps.db", path)  # made by make_refused_sweeps_store.py
    with sqlite3.connect(path) as conn:
        assert schema.version(conn) == 5

    async def carries_on(store: Store) -> None:
        assert [s.id for s in await store.live_sweeps()] == ["s-ok"]  # what the requester restores
        sweeps, total = await store.list_sweeps(owner=ALICE, limit=10, offset=0)
        assert [s.id for s in sweeps] == ["s-ok"] and total == 1
        assert await store.get_sweep("s-params") is None and await store.get_sweep("s-big") is None
        assert (await store.expired_records(T + 10)).sweeps == []
        assert [j.id for j in (await store.list_jobs(owner=ALICE, state=None, limit=10, offset=0))[0]] == ["j-done"]

    with caplog.at_level("WARNING", logger="shoal.store"):
        await with_store(path, carries_on)
    assert "2 records stored by an earlier Shoal break rules made stricter since" in caplog.text
    with sqlite3.connect(path) as conn:
        assert schema.version(conn) == schema.LATEST
        kept = dict(conn.execute("SELECT key, why FROM set_aside WHERE source='sweeps'").fetchall())
    assert kept.keys() == {"s-params", "s-big"}
    assert "at most 256" in kept["s-params"] and "at most 65,536" in kept["s-big"]


async def test_a_record_this_release_refuses_is_skipped_and_logged_once(tmp_path, monkeypatch, caplog):
    """A release before 10b1a19 opens a current store without a word and may store what today's rules refuse (an
    output named '.'): already at the latest version, nothing sets it aside, and each read that met it failed."""
    monkeypatch.setattr(queries, "_refused", {})
    path = tmp_path / "shoal.db"
    noop = JobSpec.model_validate({"engine": {"name": "noop"}})
    ok = Job(id="j-ok", owner=ALICE, spec=noop, state=JobState.PENDING, created_at=T, updated_at=T)
    sweep = Sweep(id="s-ok", owner=ALICE, spec=SweepSpec(job=noop, grid={"x": ["1"]}), count=1, created_at=T,
                  updated_at=T)

    async def plant(store: Store) -> None:
        await store.save(new_job=ok)
        await store.save_sweep(new_sweep=sweep)

    await with_store(path, plant)
    dot = {**ok.spec.model_dump(mode="json"), "outputs": [{"name": ".", "path": "/outputs"}]}
    result = RunResult(cid="bafy").model_dump()
    done = {**ok.model_dump(mode="json"), "spec": dot, "state": "completed", "result": result}
    many = {**sweep.model_dump(mode="json"), "state": "completed"}
    many["spec"]["grid"] = {f"p{i}": ["a"] for i in range(300)}
    with sqlite3.connect(path) as conn:  # as the old release wrote them, past today's rules
        for job_id, state, body in (("j-dot", "pending", {**ok.model_dump(mode="json"), "spec": dot}),
                                    ("j-dot-done", "completed", done)):
            conn.execute("INSERT INTO jobs (id, owner, state, created_at, revision, body) VALUES (?, ?, ?, ?, 0, ?)",
                         (job_id, ALICE, state, T, json.dumps({**body, "id": job_id})))
        conn.execute("INSERT INTO sweeps (id, owner, state, created_at, revision, body) VALUES (?, ?, ?, ?, 0, ?)",
                     ("s-many", ALICE, "completed", T, json.dumps({**many, "id": "s-many"})))

    async def carries_on(store: Store) -> None:
        for _ in range(2):
            assert [j.id for j in await store.live_jobs()] == ["j-ok"]
            jobs, _ = await store.list_jobs(owner=ALICE, state=None, limit=10, offset=0)
            assert [j.id for j in jobs] == ["j-ok"]
            assert await store.get_job("j-dot") is None
            assert await store.expired_results(T + 10) == ([], [])
            expired = await store.expired_records(T + 10)
            assert (expired.jobs, expired.sweeps) == ([], [])
            assert [s.id for s in (await store.list_sweeps(owner=ALICE, limit=10, offset=0))[0]] == ["s-ok"]
            assert await store.get_sweep("s-many") is None

    with caplog.at_level("WARNING", logger="shoal.store"):
        await with_store(path, carries_on)
    skipped = [r.getMessage() for r in caplog.records if "is skipped" in r.getMessage()]
    assert len(skipped) == 3, skipped  # each record once
    assert any("an output's name is a folder name" in m and "SELECT * FROM jobs WHERE id='j-dot'" in m
               for m in skipped), skipped
    assert any("at most 256" in m and "SELECT * FROM sweeps WHERE id='s-many'" in m for m in skipped), skipped


async def test_a_batch_of_refused_records_holds_retention_for_one_pass_only(tmp_path, monkeypatch):
    """Retention reads a batch at a time and stops at an empty one: a batch of refused records, read again at
    every pass, kept every valid expired record behind them for good (and their results pinned)."""
    from node.retention import delete_expired

    monkeypatch.setattr(queries, "_refused", {})
    path = tmp_path / "shoal.db"
    noop = JobSpec.model_validate({"engine": {"name": "noop"}})
    good = Job(id="j-good", owner=ALICE, spec=noop, state=JobState.COMPLETED, created_at=T + 1, updated_at=T + 1)
    bad = {**good.model_dump(mode="json"), "spec": {**noop.model_dump(mode="json"),
                                                    "outputs": [{"name": ".", "path": "/outputs"}]}}

    async def plant(store: Store) -> None:
        await store.save(new_job=good)

    async def nothing(store: Store) -> None:
        pass

    await with_store(path, nothing)
    with sqlite3.connect(path) as conn:
        for i in range(3):  # stored first: a batch of two holds only them
            conn.execute("INSERT INTO jobs (id, owner, state, created_at, revision, body) VALUES (?, ?, ?, ?, 0, ?)",
                         (f"j-bad{i}", ALICE, "completed", T, json.dumps({**bad, "id": f"j-bad{i}"})))
    await with_store(path, plant)

    class Publisher:
        async def remove(self, cid: str) -> None:
            pass

    async def passes(store: Store) -> None:
        for _ in range(3):
            await delete_expired(store, Publisher(), ttl=10, now=T + 100, batch=2)
        assert await store.get_job("j-good") is None  # deleted, as its time to live said

    await with_store(path, passes)
    with sqlite3.connect(path) as conn:  # the refused ones are left as they are
        assert conn.execute("SELECT count(*) FROM jobs WHERE id LIKE 'j-bad%'").fetchone()[0] == 3
