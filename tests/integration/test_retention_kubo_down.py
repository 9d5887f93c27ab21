"""Results retention against a real Kubo that is down during one pass: the result stays unmarked, and the
pass after Kubo is back unpins it. It was once marked removed anyway, and stayed pinned for good."""

from __future__ import annotations

import pytest
import trio

from devstack.kubo import KuboCluster, ipfs_binary
from jobs import Job, JobSpec, JobState, RunResult
from node.retention import delete_expired, expire_once
from node.store import Store
from storage import KuboPublisher

pytestmark = pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed: run scripts/install-kubo")


async def test_a_result_whose_retention_came_while_kubo_was_down_is_unpinned_once_it_is_back(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stdout").write_text("42\n")
    store = Store(tmp_path / "db")
    async with KuboCluster(1, tmp_path / "stack") as stack, trio.open_nursery() as nursery:
        await nursery.start(store.run)
        async with stack.daemons[0].client() as client:
            publisher = KuboPublisher(client)
            cid = await publisher.publish(tmp_path / "out")
            await store.save(new_job=Job(id="j-1", owner="c", spec=JobSpec(engine={"name": "noop"}),
                                         state=JobState.COMPLETED, created_at=0, updated_at=100,
                                         result=RunResult(cid=cid)))
            await stack.stop_daemon(0)
            assert await expire_once(store, publisher, retention=1000, now=5000) == 0
            assert (await store.get_job("j-1")).results_removed_at is None
            await stack.restart(0)
            assert await client.is_pinned(cid)
            assert await expire_once(store, publisher, retention=1000, now=5001) == 1
            assert not await client.is_pinned(cid)
            assert (await store.get_job("j-1")).results_removed_at == 5001
            assert (await delete_expired(store, publisher, ttl=1000, now=5002)).jobs == 1
        nursery.cancel_scope.cancel()
