"""Results retention against a real store and the real local publisher."""

from __future__ import annotations

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, RunResult
from node.retention import expire_once
from node.store import Store
from storage import LocalPublisher


async def test_old_results_are_removed_and_the_job_says_so(tmp_path):
    store = Store(tmp_path / "db")
    publisher = LocalPublisher(tmp_path / "results")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stdout").write_text("42\n")
    cid = await publisher.publish(tmp_path / "out")
    spec = JobSpec(engine={"name": "noop"})
    result = RunResult(stdout="42\n", cid=cid)
    old = Job(id="j-old", owner="c", spec=spec, state=JobState.COMPLETED, created_at=0, updated_at=100, result=result)
    new = Job(id="j-new", owner="c", spec=spec, state=JobState.COMPLETED, created_at=0, updated_at=10_000,
              result=result.model_copy(update={"cid": "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"}))
    ex = Execution(id="e-1", job_id="j-old", node_id="n", requester="r", state=ExecutionState.COMPLETED,
                   created_at=0, updated_at=100, result=result)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(new_job=old, cache=(spec.cache_key(), old.id, result))
        await store.save(new_job=new)
        await store.save(side=ExecutionSide.COMPUTE, new_executions=[ex])
        assert await publisher.has(cid)
        assert await expire_once(store, publisher, retention=1000, now=5000) == 2  # the job and the execution
        assert not await publisher.has(cid)
        assert (await store.get_job("j-old")).results_removed_at == 5000
        assert (await store.get_job("j-new")).results_removed_at is None  # not old enough
        assert await store.cached_result(spec.cache_key()) is None  # no cache hit on removed results
        assert await expire_once(store, publisher, retention=1000, now=5000) == 0  # done once
        nursery.cancel_scope.cancel()
