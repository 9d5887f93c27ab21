"""Listing jobs: newest first, by owner and state, and by the label a job's selector asks for."""

from __future__ import annotations

from pathlib import Path

import trio

from jobs import Job, JobSpec, JobState
from node.store import Store


def job(n: int, selector: str = "", state: JobState = JobState.PENDING, owner: str = "alice") -> Job:
    spec = JobSpec.model_validate({"engine": {"name": "noop"}, "selector": selector})
    return Job(id=f"j-{n}", owner=owner, spec=spec, state=state, created_at=n, updated_at=n)


async def test_jobs_are_filtered_by_the_text_of_their_selector(tmp_path: Path) -> None:
    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for j in (job(1, "zone=eu"), job(2, "zone=eu,!spot", JobState.FAILED), job(3, "zone=us"), job(4),
                  job(5, "zone=eu", owner="bob")):
            await store.save(new_job=j, events=())
        jobs, total = await store.list_jobs(owner="alice", state=None, limit=10, offset=0, selector="zone=eu")
        assert ([j.id for j in jobs], total) == (["j-2", "j-1"], 2)  # newest first; bob's never
        jobs, total = await store.list_jobs(owner="alice", state=JobState.FAILED, limit=10, offset=0,
                                            selector="zone=eu")
        assert [j.id for j in jobs] == ["j-2"]
        jobs, total = await store.list_jobs(owner="alice", state=None, limit=1, offset=1, selector="zone")
        assert ([j.id for j in jobs], total) == (["j-2"], 3)  # paged over the matching ones
        jobs, total = await store.list_jobs(owner="alice", state=None, limit=10, offset=0, selector="'; --")
        assert (jobs, total) == ([], 0)  # text, never SQL
        nursery.cancel_scope.cancel()
