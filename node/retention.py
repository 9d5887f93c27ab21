"""Results retention and time to live: what a node keeps of finished work, and for how long.

Retention: published results are unpinned once they are older than the node's retention. The
requester marks the job (``results_removed_at``) and drops its cache entry, so describe says what
happened (the API answers 410 for its results); a compute node unpins what it published. A sweep's
indexes are not marked: ``index_results_removed_at`` tells from an index's record (410 too).

Time to live: records of finished jobs and sweeps (requester), of finished executions (compute)
and of published results are deleted once older than the node's ttl, after unpinning whatever
results they still hold; a deleted job is unknown to the API (404). Then Kubo's ``repo gc`` gives
the disk space back, at most every ``GC_EVERY`` seconds. Scratch directories a crashed run left in
the work dir are removed when the node starts. Together they keep a long-running node's disk use
bounded by what finishes within one ttl.

Both run here because the node owns the store and the publisher that both roles share.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job
from jobs.sweep import IndexRecord
from node.store import StoreClosed
from storage.trees import remove_tree

if TYPE_CHECKING:
    from node.store import Store
    from storage import Publisher

log = logging.getLogger("shoal.retention")

BATCH = 200  # records of each kind deleted per transaction: bounds how long one delete holds the writer
MAX_BATCHES = 50  # per pass; the next pass goes on where this one stopped
GC_EVERY = 300.0  # seconds between two repo gc at most: Kubo holds adds back while it collects


async def expire_once(store: Store, publisher: Publisher, retention: float, now: float) -> int:
    """Remove the results that expired by ``now``; returns how many records were marked or, for
    the published table, deleted.

    When the publisher is unreachable (Kubo down) the pass stops there and what it did not unpin stays
    unmarked for the next pass: the ttl unpins only unmarked results, so a marked one would stay pinned.
    """
    jobs, executions = await store.expired_results(now - retention)
    released: list[Job | Execution] = []
    for record in [*jobs, *executions]:
        cid = record.result.cid if record.result else None
        if cid and not await _release(publisher, [cid]):
            break
        released.append(record)
    for record in released:
        marked = record.model_copy(update={"results_removed_at": now, "revision": record.revision + 1})
        if isinstance(marked, Job):
            await store.forget_cached(marked.id)
            await store.save(job=marked)
        else:
            await store.save(side=ExecutionSide.COMPUTE, executions=[marked])
    published = await store.expired_published(now - retention)
    if published and await _release(publisher, published):
        await store.delete_published(published)
    else:
        published = []
    return len(released) + len(published)


def index_results_removed_at(record: IndexRecord, retention: float, now: float) -> float | None:
    """When retention removed the results of a sweep's index, or None while they are kept (or it has none).

    The compute node that ran it recorded them in its ``published`` table before it reported them, so
    they are unpinned (at its next pass) once the index's ``updated_at`` is older than the retention.
    """
    if record.result is None or record.result.cid is None:
        return None
    removed = record.updated_at + retention
    return removed if removed <= now else None


@dataclass(frozen=True)
class Removed:
    """What one time-to-live pass deleted, by kind, and how many results it unpinned."""

    jobs: int = 0
    sweeps: int = 0
    executions: int = 0
    published: int = 0
    released: int = 0

    def __bool__(self) -> bool:
        return bool(self.jobs or self.sweeps or self.executions or self.published)

    def __str__(self) -> str:
        return (f"{self.jobs} jobs, {self.sweeps} sweeps, {self.executions} executions, {self.published} published"
                f" results ({self.released} results unpinned)")


async def delete_expired(store: Store, publisher: Publisher, ttl: float, now: float, *,
                         batch: int = BATCH, max_batches: int = MAX_BATCHES) -> Removed:
    """Delete the records that finished before ``now - ttl``, unpinning their results first.

    Each batch is one transaction. When the publisher is unreachable (Kubo down) the batch stays
    for the next pass: deleting a record that still holds a pin would leak the pin for good.
    """
    counts = dict.fromkeys(("jobs", "sweeps", "executions", "published", "released"), 0)
    for _ in range(max_batches):
        expired = await store.expired_records(now - ttl, batch)
        if not expired:
            break
        cids = expired.cids()
        if not await _release(publisher, cids):
            break
        if not await store.delete_records(expired):
            break  # every record changed since it was read; the next pass sees them anew
        for kind in ("jobs", "sweeps", "executions", "published"):
            counts[kind] += len(getattr(expired, kind))
        counts["released"] += len(cids)
        if max(len(expired.jobs), len(expired.sweeps), len(expired.executions), len(expired.published)) < batch:
            break
    return Removed(**counts)


async def _release(publisher: Publisher, cids: Sequence[str]) -> bool:
    """Unpin ``cids``; False (and the rest kept) when the publisher cannot be reached."""
    from storage import StorageError, Unavailable

    for cid in cids:
        try:
            await publisher.remove(cid)
        except Unavailable as e:
            log.warning("cannot unpin %s now, trying again later: %s", cid, e)
            return False
        except StorageError as e:  # something else is wrong with this one: retrying will not help
            log.info("could not remove %s: %s", cid, e)
    return True


async def remove_leftover_scratch(store: Store, work_dir: Path) -> int:
    """Remove what a crashed run left in the work dir: entries of no execution now running.

    Called once the compute role has restored its executions (none runs after a restart). The
    directory is listed before the store is read, so an execution that starts in between is
    either in the listing and running, or not in the listing at all.
    """
    entries = await trio.to_thread.run_sync(lambda: list(work_dir.iterdir()) if work_dir.is_dir() else [])
    running = {ex.id for ex in await store.live_executions(ExecutionSide.COMPUTE)
               if ex.state is ExecutionState.ACCEPTED}
    leftovers = [e for e in entries if e.name not in running]
    for entry in leftovers:
        await trio.to_thread.run_sync(_remove_path, entry)
    if leftovers:
        log.info("removed %d leftover scratch entries from %s", len(leftovers), work_dir)
    return len(leftovers)


def _remove_path(path: Path) -> None:
    remove_tree(path)


async def cleanup_loop(store: Store, publisher: Publisher, retention: float, ttl: float,
                       work_dir: Path | None = None, clock: Callable[[], float] = time.time) -> None:
    """The node's cleanup task: leftover scratch once, then retention and ttl passes for ever.

    A pass that unpinned something is followed by a garbage collection of the publisher, at most
    every ``GC_EVERY`` seconds (sooner with a shorter retention or ttl, as in tests).
    """
    if work_dir is not None:
        try:
            await remove_leftover_scratch(store, work_dir)
        except StoreClosed:
            return  # the node is stopping
        except Exception:
            log.exception("removing leftover scratch space")
    shortest = min(retention, ttl)
    interval = min(60.0, max(0.5, shortest / 4))
    gc_every = min(GC_EVERY, max(interval, shortest))
    last_gc, unpinned = -math.inf, 0
    while True:
        await trio.sleep(interval)
        try:
            now = clock()
            marked = await expire_once(store, publisher, retention, now)
            if marked:
                log.info("removed the results of %d finished jobs, executions or sweep indexes (retention %g s)",
                         marked, retention)
            removed = await delete_expired(store, publisher, ttl, now)
            if removed:
                log.info("deleted %s, finished more than %g s ago (ttl)", removed, ttl)
            unpinned += marked + removed.released
            if unpinned and trio.current_time() - last_gc >= gc_every:
                last_gc = trio.current_time()
                await publisher.collect_garbage()
                log.info("collected garbage after releasing %d results", unpinned)
                unpinned = 0
        except StoreClosed:
            return  # the node is stopping
        except Exception:
            log.exception("results retention and ttl")

