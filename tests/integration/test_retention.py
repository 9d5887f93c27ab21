"""Results retention against a real store and the real local publisher."""

from __future__ import annotations

import sqlite3
from contextlib import closing

import trio

from jobs import Event, EventKind, Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, RunResult
from jobs.sweep import IndexRecord, Sweep, SweepSpec
from node.retention import Removed, cleanup_loop, delete_expired, expire_once, remove_leftover_scratch
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
        await store.save(new_job=old, cache=(spec.cache_key(), old.id, result, True))
        await store.save(new_job=new)
        await store.save(side=ExecutionSide.COMPUTE, new_executions=[ex])
        assert await publisher.has(cid)
        assert await expire_once(store, publisher, retention=1000, now=5000) == 2  # the job and the execution
        assert not await publisher.has(cid)
        assert (await store.get_job("j-old")).results_removed_at == 5000
        assert (await store.get_job("j-new")).results_removed_at is None  # not old enough
        assert await store.cached_result(spec.cache_key(), old.owner) is None  # no cache hit on removed results
        assert await expire_once(store, publisher, retention=1000, now=5000) == 0  # done once
        nursery.cancel_scope.cancel()


# -- time to live --------------------------------------------------------------------------------------

SPEC = JobSpec(engine={"name": "noop"})
OLD, NEW, NOW, TTL = 100.0, 10_000.0, 5000.0, 1000.0  # OLD finished before NOW - TTL, NEW after


async def publish(publisher: LocalPublisher, tmp_path, text: str) -> str:
    out = tmp_path / f"out-{text}"
    out.mkdir()
    (out / "stdout").write_text(text)
    return await publisher.publish(out)


def job(job_id: str, updated_at: float, cid: str | None = None, state: JobState = JobState.COMPLETED) -> Job:
    return Job(id=job_id, owner="c", spec=SPEC, state=state, created_at=min(updated_at, 50), updated_at=updated_at,
               result=RunResult(cid=cid) if cid else None)


def execution(ex_id: str, job_id: str, updated_at: float, cid: str | None = None,
              state: ExecutionState = ExecutionState.COMPLETED) -> Execution:
    return Execution(id=ex_id, job_id=job_id, node_id="n", requester="r", state=state, created_at=0,
                     updated_at=updated_at, result=RunResult(cid=cid) if cid else None)


def event(job_id: str, ex_id: str | None = None) -> Event:
    return Event(job_id=job_id, at=0, kind=EventKind.CREATED, execution_id=ex_id)


def sweep(sweep_id: str, updated_at: float, state: JobState = JobState.COMPLETED) -> Sweep:
    spec = SweepSpec(job=SPEC, grid={"X": ["1", "2"]})
    return Sweep(id=sweep_id, owner="c", spec=spec, count=spec.count, state=state, created_at=min(updated_at, 50),
                 updated_at=updated_at)


def rows(tmp_path) -> dict[str, int]:
    with closing(sqlite3.connect(tmp_path / "db")) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("jobs", "executions", "events", "result_cache", "sweeps", "sweep_indexes", "published")}


async def test_finished_records_are_deleted_after_the_ttl_with_their_results(tmp_path):
    store = Store(tmp_path / "db")
    publisher = LocalPublisher(tmp_path / "results")
    cid = {name: await publish(publisher, tmp_path, name)
           for name in ("job-old", "job-new", "idx-old", "idx-new", "ex-old", "ex-new", "pub-old", "pub-new")}
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        # requester side: an old and a new job, each with an execution, events and a cache entry
        for name, at in (("old", OLD), ("new", NEW)):
            j = job(f"j-{name}", at, cid[f"job-{name}"])
            await store.save(new_job=j, new_executions=[execution(f"rx-{name}", j.id, at, cid[f"job-{name}"])],
                             events=[event(j.id), event(j.id, f"rx-{name}")],
                             cache=(f"key-{name}", j.id, j.result, True))
        await store.save(new_job=job("j-live", OLD, state=JobState.RUNNING))  # old, but not finished
        # sweeps: an old finished one, a new finished one and an old one still running, two indexes each
        for name, at, state in (("old", OLD, JobState.COMPLETED), ("new", NEW, JobState.COMPLETED),
                                ("live", OLD, JobState.RUNNING)):
            s = sweep(f"s-{name}", at, state)
            await store.save_sweep(new_sweep=s, events=[event(s.id)])
            result = RunResult(cid=cid[f"idx-{name}"]) if name != "live" else None
            await store.save_sweep(sweep=s.model_copy(update={"revision": 1}), indexes=[
                IndexRecord(index=i, state=state, node_id="n", result=result, updated_at=at) for i in range(2)])
        # compute side: old and new finished executions, an old one still running, and published results
        for name, at, state in (("old", OLD, ExecutionState.COMPLETED), ("new", NEW, ExecutionState.COMPLETED),
                                ("live", OLD, ExecutionState.ACCEPTED)):
            ex = execution(f"cx-{name}", f"j-{name}", at, cid.get(f"ex-{name}"), state)
            await store.save(side=ExecutionSide.COMPUTE, new_executions=[ex], events=[event(ex.job_id, ex.id)])
        await store.add_published([cid["pub-old"]], at=OLD)
        await store.add_published([cid["pub-new"]], at=NEW)
        before = rows(tmp_path)

        removed = await delete_expired(store, publisher, TTL, NOW)

        assert removed == Removed(jobs=1, sweeps=1, executions=1, published=1, released=4)
        for name in ("job-old", "idx-old", "ex-old", "pub-old"):
            assert not await publisher.has(cid[name]), name
        for name in ("job-new", "idx-new", "ex-new", "pub-new"):
            assert await publisher.has(cid[name]), name
        assert await store.get_job("j-old") is None
        assert await store.executions_of(ExecutionSide.REQUESTER, "j-old") == []
        assert await store.events("j-old") == []
        assert await store.cached_result("key-old", "someone") is None
        assert await store.get_sweep("s-old") is None
        assert (await store.sweep_indexes("s-old"))[1] == 0
        assert await store.events("s-old") == []
        assert await store.executions_of(ExecutionSide.COMPUTE, "j-old") == []
        assert await store.events("j-old", side=ExecutionSide.COMPUTE) == []
        # what is newer than the ttl, or not finished, is all still there
        assert (await store.get_job("j-new")).result.cid == cid["job-new"]
        assert await store.get_job("j-live") is not None
        assert len(await store.events("j-new")) == 2
        assert await store.cached_result("key-new", "someone") is not None
        assert await store.get_sweep("s-new") is not None and await store.get_sweep("s-live") is not None
        assert (await store.sweep_indexes("s-live"))[1] == 2
        assert len(await store.executions_of(ExecutionSide.COMPUTE, "j-new")) == 1
        assert len(await store.executions_of(ExecutionSide.COMPUTE, "j-live")) == 1
        assert await store.expired_published(before=NEW + 1) == [cid["pub-new"]]
        after = rows(tmp_path)
        assert {t: before[t] - after[t] for t in before} == {
            "jobs": 1, "executions": 2, "events": 4, "result_cache": 1, "sweeps": 1, "sweep_indexes": 2,
            "published": 1}  # events: the job's two, the sweep's one, the compute execution's one

        assert await delete_expired(store, publisher, TTL, NOW) == Removed()  # done once
        later = await delete_expired(store, publisher, TTL, NEW + TTL + 1)  # now everything finished goes
        assert (later.jobs, later.sweeps, later.executions, later.published) == (1, 1, 1, 1)
        assert rows(tmp_path) == {"jobs": 1, "executions": 1, "events": 2, "result_cache": 0, "sweeps": 1,
                                  "sweep_indexes": 2, "published": 0}  # the running job, sweep and execution
        nursery.cancel_scope.cancel()


async def test_ttl_deletes_in_batches_and_skips_results_retention_already_removed(tmp_path):
    store = Store(tmp_path / "db")
    publisher = LocalPublisher(tmp_path / "results")
    kept = await publish(publisher, tmp_path, "kept")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        for i in range(7):
            j = job(f"j-{i}", OLD, kept).model_copy(update={"results_removed_at": OLD + 1})
            await store.save(new_job=j)
        removed = await delete_expired(store, publisher, TTL, NOW, batch=2)
        assert (removed.jobs, removed.released) == (7, 0)  # four transactions; nothing left to unpin
        assert await publisher.has(kept)  # retention already removed the results: this CID is another's now
        assert rows(tmp_path)["jobs"] == 0
        nursery.cancel_scope.cancel()


async def test_retention_unpins_and_forgets_published_results(tmp_path):
    store = Store(tmp_path / "db")
    publisher = LocalPublisher(tmp_path / "results")
    old, new = await publish(publisher, tmp_path, "old"), await publish(publisher, tmp_path, "new")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.add_published([old], at=OLD)
        await store.add_published([new], at=NEW)
        assert await expire_once(store, publisher, retention=1000, now=NOW) == 1
        assert not await publisher.has(old) and await publisher.has(new)
        assert await store.expired_published(before=NEW + 1) == [new]
        nursery.cancel_scope.cancel()


async def test_leftover_scratch_is_removed_but_a_running_execution_keeps_its_own(tmp_path):
    store = Store(tmp_path / "db")
    work = tmp_path / "work"
    for name in ("cx-crashed", "cx-running", "cx-proposed"):
        (work / name / "results").mkdir(parents=True)
        (work / name / "results" / "stdout").write_text("x")
    (work / "stray-file").write_text("x")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(side=ExecutionSide.COMPUTE, new_executions=[
            execution("cx-running", "j", OLD, state=ExecutionState.ACCEPTED),
            execution("cx-proposed", "j", OLD, state=ExecutionState.PROPOSED)])  # its run is over
        assert await remove_leftover_scratch(store, work) == 3
        assert [p.name for p in work.iterdir()] == ["cx-running"]
        assert await remove_leftover_scratch(store, tmp_path / "absent") == 0
        nursery.cancel_scope.cancel()


async def eventually(check, seconds: float = 10) -> None:
    with trio.fail_after(seconds):
        while not await check():
            await trio.sleep(0.05)


class CountingPublisher(LocalPublisher):
    collections = 0

    async def collect_garbage(self) -> None:
        self.collections += 1


async def test_cleanup_loop_deletes_then_collects_garbage(tmp_path):
    # Real time (the loop runs every 0.5 s here): the store's worker threads would let a virtual
    # clock jump past the loop's passes. The records' own time is ``wall``, moved by the test.
    store = Store(tmp_path / "db")
    publisher = CountingPublisher(tmp_path / "results")
    cid = await publish(publisher, tmp_path, "done")
    (tmp_path / "work" / "cx-crashed").mkdir(parents=True)
    wall = [NOW]
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(new_job=job("j", NOW - 1, cid))
        nursery.start_soon(cleanup_loop, store, publisher, 2.0, 4.0, tmp_path / "work", lambda: wall[0])
        async def scratch_gone() -> bool:
            return not (tmp_path / "work" / "cx-crashed").exists()

        await eventually(scratch_gone)  # at start
        await trio.sleep(1.2)
        assert await store.get_job("j") is not None and publisher.collections == 0  # nothing expired yet
        wall[0] = NOW + 2.5  # past the retention: results removed, the record kept

        async def collected() -> bool:
            return publisher.collections > 0

        await eventually(collected)
        assert (await store.get_job("j")).results_removed_at == NOW + 2.5
        assert not await publisher.has(cid) and publisher.collections == 1
        wall[0] = NOW + 5  # past the ttl

        async def deleted() -> bool:
            return await store.get_job("j") is None

        await eventually(deleted)
        await trio.sleep(1.2)
        assert publisher.collections == 1  # nothing left to unpin: no second collection
        nursery.cancel_scope.cancel()
