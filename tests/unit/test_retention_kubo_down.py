"""Results retention while the publisher (Kubo) is away: the pass leaves the results it could not unpin
unmarked, and a later pass unpins them. They were once marked removed anyway; the ttl, which unpins only
unmarked results, then deleted the records and left the results pinned for good."""

from __future__ import annotations

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, RunResult
from node.retention import delete_expired, expire_once
from node.store import Store
from storage import LocalPublisher, Unavailable


class AwayPublisher(LocalPublisher):
    """A LocalPublisher whose daemon is away while ``down``; counts the removes tried."""

    down = False
    tries = 0

    async def remove(self, cid: str) -> None:
        self.tries += 1
        if self.down:
            raise Unavailable("cannot reach Kubo RPC at http://127.0.0.1:5001: connection refused")
        await super().remove(cid)


async def publish(publisher: LocalPublisher, tmp_path, text: str) -> str:
    out = tmp_path / f"out-{text}"
    out.mkdir()
    (out / "stdout").write_text(text)
    return await publisher.publish(out)


async def test_results_retention_could_not_unpin_are_unpinned_by_a_later_pass(tmp_path):
    store = Store(tmp_path / "db")
    publisher = AwayPublisher(tmp_path / "results")
    spec = JobSpec(engine={"name": "noop"})
    cids = [await publish(publisher, tmp_path, f"r{i}") for i in range(3)]
    jobs = [Job(id=f"j-{i}", owner="c", spec=spec, state=JobState.COMPLETED, created_at=0, updated_at=100,
                result=RunResult(cid=cid)) for i, cid in enumerate(cids[:2])]
    ex = Execution(id="e-1", job_id="j-x", node_id="n", requester="r", state=ExecutionState.COMPLETED,
                   created_at=0, updated_at=100, result=RunResult(cid=cids[2]))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for job in jobs:
            await store.save(new_job=job)
        await store.save(side=ExecutionSide.COMPUTE, new_executions=[ex])

        publisher.down = True
        assert await expire_once(store, publisher, retention=1000, now=5000) == 0
        assert publisher.tries == 1  # the pass stopped at the first result it could not unpin
        assert [(await store.get_job(j.id)).results_removed_at for j in jobs] == [None, None]
        assert (await store.executions_of(ExecutionSide.COMPUTE, "j-x"))[0].results_removed_at is None

        publisher.down = False
        assert await expire_once(store, publisher, retention=1000, now=5001) == 3
        assert [await publisher.has(cid) for cid in cids] == [False, False, False]
        assert [(await store.get_job(j.id)).results_removed_at for j in jobs] == [5001, 5001]
        assert (await store.executions_of(ExecutionSide.COMPUTE, "j-x"))[0].results_removed_at == 5001
        removed = await delete_expired(store, publisher, ttl=1000, now=5002)
        assert (removed.jobs, removed.executions) == (2, 1)
        nursery.cancel_scope.cancel()
