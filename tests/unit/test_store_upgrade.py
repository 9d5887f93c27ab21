"""A data dir written by the previous release opens, and its cache entries keep to what they can prove."""

from __future__ import annotations

import sqlite3

import pytest
import trio

from jobs import DuplicateKey, Job, JobSpec, JobState, RunResult
from node.store import Store

OLD_CACHE = """CREATE TABLE result_cache (key TEXT PRIMARY KEY, job_id TEXT NOT NULL, result TEXT NOT NULL,
created_at REAL NOT NULL)"""


async def test_an_old_cache_entry_is_kept_but_serves_only_its_own_client(tmp_path):
    path = tmp_path / "shoal.db"
    with sqlite3.connect(path) as conn:  # the previous release's table, with an entry whose origin is unknown
        conn.execute(OLD_CACHE)
        conn.execute("INSERT INTO result_cache VALUES ('k', 'j-1', ?, 0)", (RunResult(stdout="x").model_dump_json(),))
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        spec = JobSpec.model_validate({"engine": {"name": "noop"}})
        await store.save(new_job=Job(id="j-1", owner="alice", spec=spec, state=JobState.COMPLETED, created_at=0,
                                     updated_at=0))
        assert await store.cached_result("k", "bob") is None
        source, result, verified = await store.cached_result("k", "alice")
        assert (source, result.stdout, verified) == ("j-1", "x", False)
        # a verified entry replaces it; an unverified one never replaces a verified one
        await store.save(cache=("k", "j-1", RunResult(stdout="y"), True))
        await store.save(cache=("k", "j-1", RunResult(stdout="z"), False))
        assert (await store.cached_result("k", "bob"))[1].stdout == "y"
        nursery.cancel_scope.cancel()


async def test_a_second_job_with_a_taken_idempotency_key_is_a_duplicate_key(tmp_path):
    """The requester tells a racing duplicate submit by this exception, not by sqlite's message."""
    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        spec = JobSpec.model_validate({"engine": {"name": "noop"}})
        for i in (1, 2):
            job = Job(id=f"j-{i}", owner="alice", spec=spec, state=JobState.PENDING, created_at=0, updated_at=0)
            if i == 1:
                await store.save(new_job=job, idempotency_key="k")
            else:
                with pytest.raises(DuplicateKey):
                    await store.save(new_job=job, idempotency_key="k")
        assert (await store.get_job("j-1")).id == "j-1"
        nursery.cancel_scope.cancel()
