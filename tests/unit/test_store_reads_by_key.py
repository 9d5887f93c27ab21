"""Reads of a few rows by key run on the event loop's thread when the reader is free (a hop to a worker thread
cost ten times the query); while another read holds the reader, they wait their turn and still get their row."""

from __future__ import annotations

import time

import pytest
import trio
import trio.testing

from jobs import Job, JobSpec, JobState
from node.store import Store, StoreClosed, queries


async def test_a_read_by_key_while_a_long_read_holds_the_reader_waits_and_gets_its_row(tmp_path):
    gate, listing = trio.Event(), trio.Event()

    async def run_blocking(fn, *args, limiter=None):  # the writer's commits inline; a listing held at the gate
        if limiter is None:
            return fn(*args)
        async with limiter:
            if fn is queries.list_jobs:
                listing.set()
                await gate.wait()
            return fn(*args)

    store = Store(tmp_path / "shoal.db", run_blocking=run_blocking)
    job = Job(id="j-1", owner="alice", spec=JobSpec.model_validate({"engine": {"name": "noop"}}),
              state=JobState.PENDING, created_at=time.time(), updated_at=time.time())
    got: list[Job | None] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(new_job=job)
        nursery.start_soon(lambda: store.list_jobs(owner="alice", state=None, limit=10, offset=0))
        await listing.wait()

        async def read() -> None:
            got.append(await store.get_job("j-1"))

        nursery.start_soon(read)
        await trio.testing.wait_all_tasks_blocked()
        assert got == []  # the reader is the listing's: this read waits its turn
        gate.set()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert got == [job]


async def test_a_store_stopping_lets_the_read_in_its_thread_finish_and_refuses_the_next(tmp_path):
    """A read in a worker thread cannot be cancelled: the store closed its reader under it, and the read failed
    with "closed database" (a logged 500 to a client submitting while its node stopped)."""
    gate, listing = trio.Event(), trio.Event()

    async def run_blocking(fn, *args, limiter=None):
        if limiter is None:
            return fn(*args)
        async with limiter:
            if fn is queries.list_jobs:
                listing.set()
                await gate.wait()  # the thread is busy with it when the node stops
            return fn(*args)

    store = Store(tmp_path / "shoal.db", run_blocking=run_blocking)
    job = Job(id="j-1", owner="alice", spec=JobSpec.model_validate({"engine": {"name": "noop"}}),
              state=JobState.PENDING, created_at=time.time(), updated_at=time.time())
    listed: list[tuple[list[Job], int]] = []
    stop = trio.CancelScope()

    async def serve(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        with stop:
            await store.run(task_status=task_status)

    async def list_them() -> None:
        listed.append(await store.list_jobs(owner="alice", state=None, limit=10, offset=0))

    async with trio.open_nursery() as nursery:
        await nursery.start(serve)
        await store.save(new_job=job)
        nursery.start_soon(list_them)
        await listing.wait()
        stop.cancel()  # the node stops while the listing's thread is busy
        await trio.testing.wait_all_tasks_blocked()
        gate.set()
    assert listed == [([job], 1)]
    with pytest.raises(StoreClosed):
        await store.get_job("j-1")
