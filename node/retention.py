"""Results retention: published results are unpinned once they are older than the node's retention.

The requester marks the job (``results_removed_at``) and drops its cache entry, so describe says
what happened; a compute node unpins what it published. Both run here because the node owns the
store and the publisher that both roles share.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio

from jobs import ExecutionSide

if TYPE_CHECKING:
    from node.store import Store
    from storage import Publisher

log = logging.getLogger("shoal.retention")


async def expire_once(store: Store, publisher: Publisher, retention: float, now: float) -> int:
    """Remove what expired by ``now``; returns how many records were marked."""
    from storage import StorageError

    jobs, executions = await store.expired_results(now - retention)
    for record in [*jobs, *executions]:
        cid = record.result.cid if record.result else None
        if cid:
            try:
                await publisher.remove(cid)
            except StorageError as e:  # already gone, or Kubo down: mark it anyway, retrying is pointless
                log.info("could not remove %s: %s", cid, e)
    for job in jobs:
        await store.forget_cached(job.id)
        marked = job.model_copy(update={"results_removed_at": now, "revision": job.revision + 1})
        await store.save(job=marked)
    for ex in executions:
        marked = ex.model_copy(update={"results_removed_at": now, "revision": ex.revision + 1})
        await store.save(side=ExecutionSide.COMPUTE, executions=[marked])
    return len(jobs) + len(executions)


async def retention_loop(store: Store, publisher: Publisher, retention: float,
                         clock: Callable[[], float] = time.time) -> None:
    interval = min(60.0, max(0.5, retention / 4))
    while True:
        await trio.sleep(interval)
        try:
            removed = await expire_once(store, publisher, retention, clock())
            if removed:
                log.info("removed the results of %d finished jobs/executions (retention %g s)", removed, retention)
        except Exception:
            log.exception("results retention")
