"""Retention, the ttl and a job listing by state read through indexes, never every row of the store: at 15,000
jobs the cleanup loop's reads took 160-300 ms once a minute, every other read of the node waiting behind them."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, RunResult
from jobs.sweep import Sweep, SweepSpec
from node.store import Store, queries, schema

FIXTURES = Path(__file__).parent.parent / "fixtures"
T = 1_700_000_000.0
ALICE = "client-alice"
NOOP = JobSpec.model_validate({"engine": {"name": "noop"}})


class Planned:
    """A connection that keeps the query plan of every statement run through it."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        self.plans: list[str] = []

    def execute(self, sql: str, args: Sequence[object] = ()) -> sqlite3.Cursor:
        self.plans += [row[3] for row in self.conn.execute(f"EXPLAIN QUERY PLAN {sql}", args)]
        return self.conn.execute(sql, args)


def planned(path: Path, fn: Callable[..., Any], *args: object) -> tuple[Any, list[str]]:
    """``fn(connection, *args)`` on the store at ``path``, and the plans of its statements."""
    conn = schema.connect(path)
    try:
        c = Planned(conn)
        return fn(c, *args), c.plans
    finally:
        conn.close()


def job(job_id: str, state: JobState, updated_at: float, **changes: object) -> Job:
    return Job(id=job_id, owner=ALICE, spec=NOOP, state=state, created_at=T, updated_at=updated_at, **changes)


def execution(ex_id: str, state: ExecutionState, updated_at: float, **changes: object) -> Execution:
    return Execution(id=ex_id, job_id="j-remote", node_id="n", requester="r", state=state, created_at=T,
                     updated_at=updated_at, **changes)


async def test_retention_and_the_ttl_read_only_what_expired(tmp_path: Path) -> None:
    path = tmp_path / "shoal.db"
    held = RunResult(cid="bafyheld")
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for new in (job("j-old", JobState.COMPLETED, T, result=held), job("j-failed", JobState.FAILED, T),
                    job("j-new", JobState.COMPLETED, T + 1000, result=held), job("j-live", JobState.RUNNING, T),
                    job("j-removed", JobState.COMPLETED, T, result=held)):
            await store.save(new_job=new)
        removed = await store.get_job("j-removed")  # an update moves the columns with the body
        await store.save(job=removed.model_copy(update={"results_removed_at": T + 1, "revision": 1}))
        running = execution("x-old", ExecutionState.ACCEPTED, T - 5)
        await store.save(side=ExecutionSide.COMPUTE, new_executions=[
            running, execution("x-new", ExecutionState.COMPLETED, T + 1000, result=held)])
        await store.save(side=ExecutionSide.COMPUTE, executions=[running.model_copy(
            update={"state": ExecutionState.COMPLETED, "updated_at": T, "result": held, "revision": 1})])
        await store.save_sweep(new_sweep=Sweep(id="s-old", owner=ALICE, spec=SweepSpec(job=NOOP, grid={"x": ["1"]}),
                                               count=1, state=JobState.COMPLETED, created_at=T, updated_at=T))
        nursery.cancel_scope.cancel()
    with sqlite3.connect(path) as conn:  # as a release before the columns writes it: read to be sure
        body = job("j-older-release", JobState.COMPLETED, T, result=held).model_dump_json()
        conn.execute("INSERT INTO jobs (id, owner, state, created_at, revision, body) VALUES (?, ?, ?, ?, 0, ?)",
                     ("j-older-release", ALICE, "completed", T, body))
    conn.close()

    (jobs, executions), plans = planned(path, queries.expired_results, T + 10, 200)
    assert sorted(j.id for j in jobs) == ["j-old", "j-older-release"] and [x.id for x in executions] == ["x-old"]
    assert plans == ["SEARCH jobs USING INDEX jobs_results (state=? AND updated_at<?)",
                     "SEARCH executions USING INDEX executions_results (side=? AND state=? AND updated_at<?)"]

    expired, plans = planned(path, queries.expired_records, T + 10, 200)
    assert sorted(j.id for j in expired.jobs) == ["j-failed", "j-old", "j-older-release", "j-removed"]
    assert ([s.id for s in expired.sweeps], [x.id for x in expired.executions]) == (["s-old"], ["x-old"])
    assert [p for p in plans if "SCAN" in p] == [], plans
    assert {"SEARCH jobs USING INDEX jobs_updated (state=? AND updated_at<?)",
            "SEARCH sweeps USING INDEX sweeps_updated (state=? AND updated_at<?)",
            "SEARCH executions USING INDEX executions_updated (side=? AND state=? AND updated_at<?)"} <= set(plans)

    (listed, total), plans = planned(path, queries.list_jobs, ALICE, JobState.COMPLETED, 10, 0)
    assert total == 4 and sorted(j.id for j in listed) == ["j-new", "j-old", "j-older-release", "j-removed"]
    assert [p for p in plans if "SCAN" in p] == [] and all("jobs_owner_state (owner=? AND state=?)" in p
                                                          for p in plans if p.startswith("SEARCH")), plans


async def test_an_upgraded_store_finds_its_expired_records_through_the_indexes(tmp_path: Path) -> None:
    """The previous release's store gets the columns from its records' bodies."""
    path = tmp_path / "shoal.db"
    shutil.copyfile(FIXTURES / "store-e32c746.db", path)
    schema.migrate(conn := schema.connect(path), path)
    conn.close()

    (jobs, executions), plans = planned(path, queries.expired_results, T + 100, 200)
    assert ([j.id for j in jobs], [x.id for x in executions]) == (["j-done"], ["x-compute"])
    assert [p for p in plans if "SCAN" in p] == [], plans
    (jobs, executions), _ = planned(path, queries.expired_results, T + 5, 200)
    assert (jobs, [x.id for x in executions]) == ([], ["x-compute"])  # the job was updated at T + 5

    expired, plans = planned(path, queries.expired_records, T + 100, 200)
    assert sorted(j.id for j in expired.jobs) == ["j-done", "j-failed"]  # the sweep is still running
    assert ([s.id for s in expired.sweeps], [x.id for x in expired.executions]) == ([], ["x-compute"])
    assert expired.published == ["bafypublished"]
    assert [p for p in plans if "SCAN" in p] == [], plans
