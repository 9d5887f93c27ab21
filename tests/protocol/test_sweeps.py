"""Sweeps over the in-memory network: the real requester, compute nodes, store and claims."""

from __future__ import annotations

import re
from contextlib import AsyncExitStack

import pytest
import trio

from executors import ExecutorError
from jobs import EventKind, JobState
from jobs.messages import decode
from jobs.sweep import SweepSpec, index_ranges
from requester import IdempotencyConflict
from tests.memnet import MemoryHub, memory_node

NOOP = {"name": "noop"}


def sweep(**kw) -> SweepSpec:
    job = kw.pop("job", {})
    return SweepSpec.model_validate({"job": {"engine": NOOP, **job}, **kw})


async def nodes(stack: AsyncExitStack, hub: MemoryHub, tmp_path, n: int = 3, **kw):
    out = [await stack.enter_async_context(memory_node(hub, f"n{i}", tmp_path / f"n{i}", **kw)) for i in range(n)]
    await trio.sleep(1.5)  # node info gossip
    return out


async def finished(service, sweep_id: str, timeout: float = 20.0):
    with trio.fail_after(timeout):
        while True:
            d = await service.describe(sweep_id)
            if d.sweep.state.is_terminal:
                return d
            await service.wait(sweep_id, 0.5)


def failing(ns, *values: str) -> tuple[list, dict]:
    """Every node's runs, as the ``x`` they ran (in ``runs``); those of ``values`` fail, not retryable, while
    ``broken["on"]``."""
    runs: list = []
    broken = {"on": True}

    async def before(request):
        runs.append(request.spec.env["x"])
        if broken["on"] and request.spec.env["x"] in values:
            raise ExecutorError("simulated bug", retryable=False)

    for n in ns:
        n.noop.hooks.before_run = before
    return runs, broken


def record_runs(node, runs: list):
    async def before(request):
        runs.append((node.peer_id, request.spec.env))

    node.noop.hooks.before_run = before


async def test_a_grid_sweep_runs_every_index_once_with_its_values(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        runs: list = []
        for n in ns:
            record_runs(n, runs)
        spec = sweep(grid={"x": ["1", "2", "3"], "y": ["a", "b"]}, job={"env": {"FIXED": "k"}})
        s, created = await ns[0].sweeps.submit(spec, "alice")
        assert created and s.count == 6
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
        assert d.sweep.counts == {JobState.COMPLETED: 6}
        assert [str(r) for r in d.ranges] == ["0-5 completed"]
        by_index = {int(env["SHOAL_INDEX"]): env for _, env in runs}
        assert len(runs) == 6 and sorted(by_index) == list(range(6))  # each index ran exactly once
        for i, env in by_index.items():
            assert env == {"FIXED": "k", **spec.values(i), "SHOAL_INDEX": str(i), "SHOAL_COUNT": "6"}
        assert by_index[3]["x"] == "2" and by_index[3]["y"] == "b"
        records, total = await ns[0].store.sweep_indexes(s.id)
        assert total == 6 and all(r.state is JobState.COMPLETED and r.result is not None for r in records)


async def test_zip_and_items_pair_values_instead_of_combining_them(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=1)
        runs: list = []
        record_runs(ns[0], runs)
        s, _ = await ns[0].sweeps.submit(sweep(zip={"a": ["1", "2", "3"], "b": ["x", "y", "z"]}), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED and s.count == 3
        assert sorted((e["a"], e["b"]) for _, e in runs) == [("1", "x"), ("2", "y"), ("3", "z")]
        runs.clear()
        s, _ = await ns[0].sweeps.submit(sweep(items=[{"p": "q"}, {"p": "r"}]), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED
        assert sorted(e["p"] for _, e in runs) == ["q", "r"]


async def test_ten_thousand_indexes_cost_messages_per_node_not_per_index(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        before_requests, before_gossip = hub.requests, hub.gossip
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(10_000)]}), "alice")
        d = await finished(ns[0].sweeps, s.id, timeout=120)
        assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
        assert d.sweep.counts == {JobState.COMPLETED: 10_000}
        requests = hub.requests - before_requests
        assert requests < 300, requests  # a job each would be 20,000 requests (bid + result)
        claimed = {e.node_id for e in await ns[0].store.events(s.id, limit=10_000) if e.kind is EventKind.CLAIMED}
        assert len(claimed) == 3, claimed  # every node took part
        assert hub.gossip - before_gossip < 60  # node info, and the sweep announced once or twice


async def test_failed_indexes_are_retried_and_only_they_run_again(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        runs, broken = failing(ns, "2", "4")
        s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(6)]}), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.FAILED
        assert d.sweep.reason == "2 of 6 indexes failed"
        assert [str(r) for r in d.ranges] == ["0-1 completed", "2 failed: simulated bug", "3 completed",
                                              "4 failed: simulated bug", "5 completed"]
        broken["on"] = False
        runs.clear()
        await ns[0].sweeps.retry(s.id)
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
        assert sorted(runs) == ["2", "4"]  # only the failed ones ran again
        kinds = [e.kind for e in await ns[0].store.events(s.id)]
        assert EventKind.RETRIED in kinds


async def test_a_cancelled_sweep_resumes_running_only_what_it_had_not_finished(tmp_path, autojump_clock):
    """A quant who cancelled a sweep midway could not take it up again: retry said "nothing to retry", and
    the only way on was a new sweep that ran every index again."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        runs: list = []
        for n in ns:
            record_runs(n, runs)
            n.noop.hooks.delay = 1.0
        s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(40)]}, job={"resources": {"cpu": 1}}),
                                         "alice")  # 4 at a time on each node: about 8 a second
        await trio.sleep(2.5)
        await ns[0].sweeps.cancel(s.id)
        d = await finished(ns[0].sweeps, s.id)
        done = d.sweep.counts.get(JobState.COMPLETED, 0)
        assert d.sweep.state is JobState.CANCELLED and 0 < done < 40
        completed_before = {r.index for r in (await ns[0].store.sweep_indexes(s.id, first=0, limit=40))[0]
                            if r.state is JobState.COMPLETED}
        await trio.sleep(1)  # the cancelled runs end on their nodes
        runs.clear()
        await ns[0].sweeps.retry(s.id)
        d = await finished(ns[0].sweeps, s.id, timeout=60)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 40}
        ran_again = {int(env["x"]) for _, env in runs}
        assert ran_again == set(range(40)) - completed_before  # only what had not finished ran again


async def test_the_same_idempotency_key_reattaches_to_the_running_sweep(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=1)
        ns[0].noop.hooks.delay = 0.2
        spec = sweep(grid={"x": [str(i) for i in range(20)]})
        first, created = await ns[0].sweeps.submit(spec, "alice", "laptop-1")
        await trio.sleep(0.5)
        again, created_again = await ns[0].sweeps.submit(spec, "alice", "laptop-1")
        assert created and not created_again and again.id == first.id
        assert (await ns[0].sweeps.describe(again.id)).sweep.counts.get(JobState.COMPLETED, 0) > 0  # its progress
        with pytest.raises(IdempotencyConflict, match=f"^idempotency key 'laptop-1' was used for another sweep "
                                                      f"\\({first.id}\\)$"):  # names it: the key is alice's own
            await ns[0].sweeps.submit(sweep(grid={"x": ["other"]}), "alice", "laptop-1")
        other, created_other = await ns[0].sweeps.submit(spec, "bob", "laptop-1")  # keys are per client
        assert created_other and other.id != first.id


async def test_the_first_success_cancels_the_rest_on_every_node(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        started: list = []
        for n in ns:
            async def before(request):
                started.append(int(request.spec.env["SHOAL_INDEX"]))
                await trio.sleep(0.3 if request.spec.env["SHOAL_INDEX"] == "7" else 30)
            n.noop.hooks.before_run = before
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(200)]}, success="any"), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.winner == 7, d.sweep.reason
        assert d.sweep.counts[JobState.COMPLETED] == 1
        assert d.sweep.counts[JobState.CANCELLED] == 199
        assert [str(r) for r in d.ranges] == ["0-6 cancelled: sweep completed", "7 completed",
                                              "8-199 cancelled: sweep completed"]
        with trio.fail_after(3):
            while any(c.running for n in ns for c in n.compute.machine.claims.values()):
                await trio.sleep(0.05)
        events = await ns[0].store.events(s.id)
        reached = {e.node_id for e in events if e.kind is EventKind.CANCELLED and "cancel reached" in e.message}
        assert reached == {"n0", "n1", "n2"}, [e.message for e in events]
        stopped = sum(int(re.search(r"(\d+) running indexes stopped", e.message).group(1))
                      for e in events if "cancel reached" in e.message)
        assert stopped == len(started) - 1  # every index that had started, but the winner, was stopped
        assert len(started) < 200  # the queued indexes never started


async def test_a_silent_nodes_indexes_are_granted_to_the_others(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        for n in ns:
            n.noop.hooks.delay = 0.2
        spec = sweep(grid={"i": [str(i) for i in range(120)]},  # 4 slots a node: 2 s of work for three
                     job={"deadlines": {"silence": 1.0}, "resources": {"cpu": 1}})
        s, _ = await ns[0].sweeps.submit(spec, "alice")
        await trio.sleep(0.5)
        ns[2].transport.down = True  # it keeps running, but nobody hears from it again
        d = await finished(ns[0].sweeps, s.id, timeout=30)
        assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
        assert d.sweep.counts == {JobState.COMPLETED: 120}
        records, _ = await ns[0].store.sweep_indexes(s.id)
        assert any(r.attempts > 1 for r in records)  # some were re-granted after the lease ran out


@pytest.mark.parametrize("confidence", [0, 2])
async def test_a_restarted_requester_carries_on_with_its_sweep(tmp_path, autojump_clock, confidence):
    """With confidence, what nodes proposed before the restart is forgotten: those indexes run again."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        workers = [await stack.enter_async_context(memory_node(hub, f"w{i}", tmp_path / f"w{i}", requester=False))
                   for i in range(2)]
        for w in workers:
            w.noop.hooks.delay = 0.1
        spec = sweep(grid={"i": [str(i) for i in range(100)]}, confidence=confidence)
        async with memory_node(hub, "r", tmp_path / "r", compute=False) as r:
            await trio.sleep(1.5)
            s, _ = await r.sweeps.submit(spec, "alice", "k")
            await trio.sleep(1.0)
        # crashed; back with the same data dir
        async with memory_node(hub, "r", tmp_path / "r", compute=False) as r:
            d = await finished(r.sweeps, s.id, timeout=60)
            assert d.sweep.state is JobState.COMPLETED, d.sweep.reason
            assert d.sweep.counts == {JobState.COMPLETED: 100}
            if confidence:
                records, _ = await r.store.sweep_indexes(s.id)
                assert all(x.reason == "completed, verified by 2 of 2 nodes" for x in records)
            again, created = await r.sweeps.submit(spec, "alice", "k")
            assert again.id == s.id and not created


async def test_a_batch_the_requester_wrote_and_died_before_answering_counts_not_against_its_node(
        tmp_path, autojump_clock):
    """Killed after it wrote a claim's results and before its reply left, the requester came back to the node
    re-sending the batch, as it must, and counted it as results for indexes never granted: three such
    restarts quarantined an honest node, and a sweep with no other node never finished."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        worker = await stack.enter_async_context(memory_node(hub, "w", tmp_path / "w", requester=False))
        worker.noop.hooks.delay = 0.1
        spec = sweep(grid={"i": [str(i) for i in range(40)]})
        for crash in range(3):
            died = trio.Event()
            async with memory_node(hub, "r", tmp_path / "r", compute=False) as r:
                await trio.sleep(1.5)
                answer = r.transport.dispatcher.on_request

                async def on_request(peer, data, answer=answer, died=died):
                    reply = await answer(peer, data)  # the claim's results and grants are written here
                    if decode(data).kind == "claim" and decode(data).results and not died.is_set():
                        died.set()
                        await trio.sleep_forever()  # the reply never leaves: kill -9
                    return reply

                r.transport.dispatcher.on_request = on_request
                if crash == 0:
                    s, _ = await r.sweeps.submit(spec, "alice")
                await died.wait()
            await trio.sleep(3)
        async with memory_node(hub, "r", tmp_path / "r", compute=False) as r:
            d = await finished(r.sweeps, s.id, timeout=120)
            assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 40}
            assert r.requester.reputation.get("w", (0, 0))[1] == 0 and not r.requester.quarantined("w")
            assert r.sweeps.counters["penalties"] == 0


async def test_results_too_large_for_one_message_arrive_in_several(tmp_path, autojump_clock):
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=1)
        ns[0].noop.hooks.stdout = "é" * 60_000  # 40 of these would be far over the 1 MiB message limit
        s, _ = await ns[0].sweeps.submit(sweep(grid={"i": [str(i) for i in range(40)]}), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.counts == {JobState.COMPLETED: 40}, d.sweep.reason
        records, _ = await ns[0].store.sweep_indexes(s.id)
        assert all(r.result.stdout == "é" * 60_000 for r in records)


async def test_a_describe_while_the_last_report_is_being_written_never_shows_a_finished_sweep_with_running_indexes(
        tmp_path, autojump_clock):
    """The machine decides before its writes commit; a describe in between once saw 'completed' with index 3
    still 'running' in the store (the CLI printed it: a slow disk under load widens the gap)."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        [node] = await nodes(stack, hub, tmp_path, n=1)
        real_save, seen = node.store.save_sweep, []

        async def slow_save(**kw):
            await trio.sleep(1.0)  # a slow commit
            await real_save(**kw)

        node.store.save_sweep = slow_save
        s, _ = await node.sweeps.submit(sweep(grid={"n": ["1", "2", "3", "4"]}), "alice")
        with trio.fail_after(30):
            while not seen or not seen[-1].sweep.state.is_terminal:
                seen.append(await node.sweeps.describe(s.id))
                await trio.sleep(0.05)
        for d in seen:
            assert not (d.sweep.state is JobState.COMPLETED and [str(r) for r in d.ranges] != ["0-3 completed"]), d


async def test_a_live_sweep_is_described_as_its_store_holds_it_reasons_of_failed_ranges_included(
        tmp_path, autojump_clock):
    """A live sweep is described from its index states in memory: reading every index from the store took
    600 ms at 100,000 indexes, holding the lock its claims wait for, at every poll of a waiting client."""
    hub = MemoryHub()
    gate = trio.Event()
    async with AsyncExitStack() as stack:
        [node] = await nodes(stack, hub, tmp_path, n=1)  # the only able node: its error fails an index at once

        async def before(request):
            x = int(request.spec.env["x"])
            if x % 7 == 3:
                raise ExecutorError(f"bad value {x}", retryable=False)
            await gate.wait()

        node.noop.hooks.before_run = before
        s, _ = await node.sweeps.submit(sweep(grid={"x": [str(i) for i in range(40)]}), "alice")

        async def described_and_stored() -> tuple[list[str], list[str]]:
            d = await node.sweeps.describe(s.id)
            rows = await node.store.index_states(s.id)
            for state in (None, *JobState):  # a page of indexes says how many there are in all, as stored
                total = (await node.store.sweep_indexes(s.id, state=state, limit=1))[1]
                assert total == sum(1 for r in rows if state in (None, r[1])), (state, total)
            return [str(r) for r in d.ranges], [str(r) for r in index_ranges((r[0], r[1], r[2]) for r in rows)]

        await trio.sleep(5)  # the runs it could start wait at the gate; nothing changes meanwhile
        assert not (await node.sweeps.get(s.id)).state.is_terminal
        live, stored = await described_and_stored()
        assert live == stored
        assert "3 failed: bad value 3" in live and any(r.endswith("running") for r in live), live
        gate.set()
        d = await finished(node.sweeps, s.id)
        assert d.sweep.state is JobState.FAILED
        ended, stored = await described_and_stored()
        assert ended == stored and "10 failed: bad value 10" in ended


async def test_two_retries_of_an_ended_sweep_at_once_both_answer_and_run_its_failed_indexes_once(
        tmp_path, autojump_clock):
    """Each retry made the ended sweep live from the store; the second's writes were then refused as stale
    (StaleState, an error to its client; red team, helper-56)."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path, n=2)
        runs, broken = failing(ns, "1", "3")
        s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(5)]}), "alice")
        assert (await finished(ns[0].sweeps, s.id)).sweep.state is JobState.FAILED
        broken["on"] = False
        runs.clear()
        answers = []

        async def retry() -> None:
            answers.append(await ns[0].sweeps.retry(s.id))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(retry)
            nursery.start_soon(retry)
        assert len(answers) == 2
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 5}
        assert sorted(runs) == ["1", "3"]  # each failed index ran again once


async def test_a_retry_that_arrives_while_the_sweep_ends_runs_its_failed_indexes_again(tmp_path, autojump_clock):
    """The retry took the live sweep, then waited for its lock while the decision that ended it wrote it. It then
    retried that ended copy, which nothing drove any more: the sweep stayed 'running' with its index pending,
    and retry and cancel did nothing, until the node restarted (red team, helper-56)."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        [node] = await nodes(stack, hub, tmp_path, n=1)
        real_save = node.store.save_sweep

        async def slow_final_write(**kw):
            if kw.get("sweep") is not None and kw["sweep"].state.is_terminal:
                await trio.sleep(1.0)  # a slow commit of the write that ends it
            await real_save(**kw)

        node.store.save_sweep = slow_final_write
        broken = {"on": True}

        async def before(request):
            if broken["on"] and request.spec.env["x"] == "3":
                raise ExecutorError("bad value 3", retryable=False)

        node.noop.hooks.before_run = before
        s, _ = await node.sweeps.submit(sweep(grid={"x": [str(i) for i in range(6)]}), "alice")
        with trio.fail_after(30):
            while not (await node.sweeps.get(s.id)).state.is_terminal:  # decided; its write not committed yet
                await trio.sleep(0.01)
        broken["on"] = False
        await node.sweeps.retry(s.id)
        with trio.fail_after(60):  # a stranded copy answered every wait at once: poll on the clock
            while not (d := await node.sweeps.describe(s.id)).sweep.state.is_terminal:
                await trio.sleep(0.5)
        assert d.sweep.state is JobState.COMPLETED and d.sweep.counts == {JobState.COMPLETED: 6}
        assert (await node.store.get_sweep(s.id)).state is JobState.COMPLETED


async def test_max_failures_stops_a_failing_sweep_and_cancels_what_has_not_run(tmp_path, autojump_clock):
    """A syntax error in main.py ran all 2,000 indexes of a sweep, over 49 s of every node, before it failed."""
    hub = MemoryHub()
    async with AsyncExitStack() as stack:
        ns = await nodes(stack, hub, tmp_path)
        runs: list = []
        for n in ns:
            n.noop.hooks.exit_code, n.noop.hooks.delay = 1, 0.5
            record_runs(n, runs)
        s, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(200)]}, max_failures=2), "alice")
        d = await finished(ns[0].sweeps, s.id)
        assert d.sweep.state is JobState.FAILED
        failed = d.sweep.counts[JobState.FAILED]
        assert failed >= 3 and d.sweep.reason.startswith(f"stopped once {failed} indexes had failed (max_failures 2)")
        assert d.sweep.counts[JobState.CANCELLED] == 200 - failed  # none completed: every run exits 1
        assert len(runs) < 40  # what was claimed when it stopped, not 200
        await trio.sleep(5)
        ran = len(runs)
        await trio.sleep(5)
        assert len(runs) == ran  # and nothing more runs
        assert all(n.compute.capacity.free == n.compute.capacity.total for n in ns)

        plain, _ = await ns[0].sweeps.submit(sweep(grid={"x": [str(i) for i in range(20)]}), "alice")
        d = await finished(ns[0].sweeps, plain.id, timeout=60)  # without it, every index runs, as before
        assert d.sweep.counts == {JobState.FAILED: 20} and d.sweep.reason == "20 of 20 indexes failed"
