"""Reads of a few rows by key run on the event loop's thread when the reader is free (a hop to a worker thread
cost ten times the query); while another read holds the reader, they wait their turn and still get their row."""

from __future__ import annotations

import time

import trio
import trio.testing

from jobs import Job, JobSpec, JobState
from node.store import Store, queries


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
    assert store._read_lock.borrowed_tokens == 0  # every read gave the reader back
