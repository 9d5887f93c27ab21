"""The compute node's decisions, driven alone: no trio, no store, no network."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import pytest

from compute import ComputeStore
from compute.capacity import CapacityTracker
from compute.machine import (
    BID_ANSWER_WINDOW,
    NONE_FIT_RECHECK,
    PENDING_BID_GRACE,
    SILENT_COOLDOWN,
    Changes,
    ComputeMachine,
)
from executors.base import disk_limit
from jobs import EventKind, Execution, ExecutionState, JobSpec, Resources, RunResult
from jobs.messages import Announce, Cancel, Decision, Reply, StatusQuery, SweepAnnounce
from jobs.spec import DEFAULT_DISK
from jobs.sweep import SweepSpec

NODE, REQ = "node", "req"


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"engine": {"name": "noop"}, **kw})


def machine(cpu: float = 1, per_job_cpu: float | None = None, **kw) -> ComputeMachine:
    total = Resources(cpu=cpu, memory="1GiB")
    capacity = CapacityTracker(total, Resources(cpu=per_job_cpu, memory="1GiB") if per_job_cpu else None)
    return ComputeMachine(node_id=NODE, capacity=capacity, engines=["noop"], **kw)


def announce(job_id: str = "j-1", cpu: float = 1, requester: str = REQ, **kw) -> Announce:
    return Announce(job_id=job_id, spec=spec(resources={"cpu": cpu}, **kw.pop("spec", {})), requester=requester,
                    **kw)


def bid_on(m: ComputeMachine, ann: Announce | None = None, now: float = 100.0) -> Execution:
    ann = ann or announce()
    bidding, changes = m.announce(ann.requester, ann, now)
    assert bidding
    ((ex, _),) = changes.bids
    return ex


def running(m: ComputeMachine, now: float = 100.0) -> Execution:
    ex = bid_on(m, now=now)
    m.accept(ex.id, {}, now)
    return ex


# -- bidding -------------------------------------------------------------------------------------------


def test_a_job_asking_for_next_to_nothing_reserves_what_any_run_takes():
    """A job of 1e-7 CPU and 1 byte reserved nothing (sums round to 6 decimals): a node ran 151 of them at
    once, its capacity showing free. A requester may still announce such a job (an older node stored it,
    or a rogue peer sent it); the node reserves at least 0.01 CPU and 6 MiB for each run."""
    m = machine(cpu=1)
    tiny = {"resources": {"cpu": 1e-7, "memory": 1}}
    bids = sum(m.announce(REQ, Announce(job_id=f"j-{i}", spec=spec(**tiny), requester=REQ), 100.0)[0]
               for i in range(150))
    assert bids == 100 and m.capacity.free.cpu == 0
    assert m.capacity.statistics().used.memory == 100 * 6 * 1024**2


def test_a_job_stating_no_disk_reserves_the_default_disk_or_the_nodes_per_job_disk_if_less():
    """Jobs stating no disk reserved none, yet each could write the node's whole per-job disk: two at once
    filled what ``--limit-total-disk`` was to keep free. Each now reserves ``DEFAULT_DISK`` (1 GiB), what
    its engine holds it to."""
    def node(total: str, per_job: str | None = None) -> ComputeMachine:
        capacity = CapacityTracker(Resources(cpu=8, memory="8GiB", disk=total),
                                   Resources(cpu=8, memory="8GiB", disk=per_job) if per_job else None)
        return ComputeMachine(node_id=NODE, capacity=capacity, engines=["noop"])

    def bids(m: ComputeMachine, n: int, **kw) -> int:
        return sum(m.announce(REQ, Announce(job_id=f"j-{i}", spec=spec(**kw), requester=REQ), 100.0)[0]
                   for i in range(n))

    m = node("2.5GiB")
    assert bids(m, 3) == 2 and m.capacity.free.disk == 512 * 1024**2  # the third waits for room
    assert bids(node("2.5GiB"), 3, resources={"disk": "512MiB"}) == 3  # what a job states, it reserves
    small = node("100GiB", per_job="32MiB")  # held to the node's per-job disk, so reserving no more
    assert bids(small, 3) == 3 and small.capacity.statistics().used.disk == 3 * 32 * 1024**2
    runner_limits = small.capacity.max_per_job
    assert disk_limit(spec(), runner_limits) == 32 * 1024**2 and disk_limit(spec(), node("9GiB").capacity.max_per_job) \
        == DEFAULT_DISK == 1024**3


def test_an_engine_whose_runs_take_a_core_each_runs_no_more_at_once_than_it_is_worth():
    """python and wasm runs take a whole core whatever CPU their job states: a node bid on as many as the
    stated CPU fitted (200 of 0.01), and 90 spinning wasm jobs took a noop job from 0.03 to 17 s. Runs of
    such an engine are held to its ``parallel``, bids and sweep slots together; the rest wait in the backlog."""
    m = machine(cpu=2, parallel=lambda engine: 3)
    small = {"resources": {"cpu": 0.01}}
    first, _ = (bid_on(m, Announce(job_id=f"j-{i}", spec=spec(**small), requester=REQ)) for i in range(2))
    m.accept(first.id, {}, 100.0)
    sweep = SweepAnnounce(sweep_id="s-1", spec=SweepSpec(job=spec(**small), grid={"x": ["1", "2", "3", "4"]}),
                          requester=REQ, pending=4)
    assert len(m.announce_sweep(REQ, sweep, 100.0).slots) == 1  # the one run left
    bidding, _ = m.announce(REQ, Announce(job_id="j-3", spec=spec(**small), requester=REQ), 100.0)
    assert not bidding and (REQ, "j-3") in m.backlog
    assert m.run_over(first.id, RunResult(exit_code=0), None, False, 101.0).released  # proposing: room again
    assert [ex.job_id for ex, _ in m.bid_from_backlog(m.backlog_fitting(101.0), 101.0).bids] == ["j-3"]


def test_a_job_that_fits_gets_a_bid_holding_its_resources_until_a_verdict_or_the_bid_deadline():
    m = machine(cpu=2)
    bidding, changes = m.announce(REQ, announce(cpu=1, bid_deadline=105.0), 100.0)  # sooner than the window
    assert bidding
    ((ex, give_up),) = changes.bids
    assert ex.state is ExecutionState.BIDDING and ex.requester == REQ and ex.node_id == NODE
    assert give_up == 105.0
    assert m.capacity.free.cpu == 1
    _, later = m.announce(REQ, announce("j-2", cpu=1), 100.0)
    assert later.bids[0][1] == 100.0 + BID_ANSWER_WINDOW  # no deadline: the node's own window


def test_a_job_is_bid_on_once_per_attempt():
    m = machine(cpu=4)
    ex = bid_on(m)
    bidding, changes = m.announce(REQ, announce(), 101.0)
    assert not bidding and not changes.bids and list(m.live) == [ex.id]
    m.end(ex.id, ExecutionState.REJECTED, "bid rejected", 102.0)
    assert not m.announce(REQ, announce(), 103.0)[0]  # the same attempt again
    assert m.announce(REQ, announce(attempt=1), 103.0)[0]  # the job's next attempt


def test_a_full_node_passes_a_job_over_and_bids_from_the_backlog_once_capacity_frees():
    m = machine(cpu=1)
    first = bid_on(m, announce("j-1"))
    bidding, changes = m.announce(REQ, announce("j-2"), 100.0)
    assert not bidding and not changes.bids and len(m.backlog) == 1
    assert m.backlog_fitting(100.5) == []  # still no room
    ended = m.end(first.id, ExecutionState.REJECTED, "bid rejected", 101.0)
    assert ended.released
    fitting = m.backlog_fitting(101.0)
    assert [a.job_id for a in fitting] == ["j-2"]
    ((ex, _),) = m.bid_from_backlog(fitting, 101.0).bids
    assert ex.job_id == "j-2" and len(m.backlog) == 0


def test_a_backlog_where_nothing_fitted_is_not_looked_over_until_something_could():
    """9,900 jobs that never fit were looked over every 0.5 s and at every run's end (16 ms each): a node's
    throughput of small jobs fell 15-fold. What cannot change the answer no longer repeats the scan."""
    m = machine(cpu=2)
    blocker = bid_on(m, announce("j-blocker", cpu=0.5))
    m.accept(blocker.id, {}, 100.0)
    for i in range(3):
        m.announce(REQ, announce(f"j-big-{i}", cpu=1.9), 100.0)
    assert m.backlog_fitting(100.1) == []
    scanned = []
    m.backlog.items = lambda: scanned.append(1) or type(m.backlog).items(m.backlog)  # type: ignore[method-assign]
    assert m.backlog_fitting(100.2) == [] and scanned == []  # nothing could fit since: not looked over
    m.announce(REQ, announce("j-big-0", cpu=1.9), 100.3)  # a re-announcement: still nothing new
    assert m.backlog_fitting(100.4) == [] and scanned == []
    m.announce(REQ, announce("j-big-3", cpu=1.9), 100.5)  # a new entry
    assert m.backlog_fitting(100.6) == [] and scanned == [1]  # looked over once more
    assert m.backlog_fitting(100.7 + NONE_FIT_RECHECK) == [] and scanned == [1, 1]  # and every few seconds
    m.run_over(blocker.id, RunResult(exit_code=0), None, False, 106.0)  # room: 2 CPU free
    assert [a.job_id for a in m.backlog_fitting(106.1)] == ["j-big-0", "j-big-1", "j-big-2", "j-big-3"]


def test_the_backlog_holds_offers_up_to_its_bytes_and_gives_them_back_as_they_leave():
    """Offers of 900 KB each, from a peer holding the node's capacity with a pending bid, grew it from 390 MB to
    2.1 GB in 18 s: the backlog counted offers (10,000), not the specs they hold."""
    from compute.backlog import MAX_BYTES, spec_bytes

    m = machine(cpu=1)
    bid_on(m, announce("j-0"))  # the node is full: the rest wait
    big = {"env": {"PAD": "x" * (900 << 10)}}
    size = spec_bytes(announce("j-1", spec=big).spec)
    fits = MAX_BYTES // size
    for i in range(fits + 50):
        m.announce(REQ, announce(f"j-{i + 1}", spec=big), 100.0)
    assert len(m.backlog) == fits and m.backlog.bytes == fits * size <= MAX_BYTES
    m.announce(REQ, announce("small"), 100.0)  # a small offer still fits in what is left
    assert (REQ, "small") in m.backlog
    m.forget_closed([announce("j-1", spec=big)], Reply(states={"j-1": "closed"}))
    assert len(m.backlog) == fits and m.backlog.bytes == (fits - 1) * size + spec_bytes(announce("small").spec)
    m.announce(REQ, announce("j-1", spec=big), 100.0)  # room again: held again
    assert (REQ, "j-1") in m.backlog


def test_a_job_that_could_never_run_here_is_passed_over_for_good():
    m = machine(cpu=4, per_job_cpu=1)
    bidding, changes = m.announce(REQ, announce(cpu=2), 100.0)
    assert not bidding and not changes.bids
    assert len(m.backlog) == 0 and not m.live


@pytest.mark.parametrize("origin, ann", [
    ("mallory", announce()),  # relayed as if from the requester
    (REQ, announce(bid_deadline=99.0)),  # too late
    (REQ, announce(candidates=["someone-else"])),  # other nodes were asked first
])
def test_announcements_the_node_must_not_bid_on_are_ignored(origin, ann):
    m = machine()
    assert m.announce(origin, ann, 100.0)[0] is False
    assert not m.live and len(m.backlog) == 0 and m.capacity.free.cpu == 1


def test_the_backlog_asks_each_requester_which_jobs_are_still_open_at_most_twice_a_second():
    m = machine()
    anns = [announce("j-1"), announce("j-2")]
    ((query, asked),) = m.open_queries(anns, 100.0)
    assert query.job_ids == ["j-1", "j-2"] and asked == anns
    assert m.open_queries(anns, 100.2) == []
    for a in anns:
        m.backlog[a.key] = (a, 100.0)
    m.forget_closed(anns, Reply(states={"j-1": "closed", "j-2": "open"}))
    assert [a.job_id for a in m.backlog_fitting(100.3)] == ["j-2"] and len(m.backlog) == 1


# -- the bid's verdict ---------------------------------------------------------------------------------


def test_a_pending_bid_expires_after_the_jobs_min_bids_wait_and_gives_its_capacity_back():
    m = machine(pending_bid_timeout=120.0)
    ex = bid_on(m, announce(spec={"deadlines": {"min_bids": 5}}))
    changes = m.bid_answered(ex.id, Reply(verdict="pending"), 100.0)
    assert changes.expire == [(ex.id, 5 + PENDING_BID_GRACE)] and not changes.writes
    expired = m.expire_pending(ex.id, 15.0, 115.0)
    (write,) = expired.writes
    assert write.execution.state is ExecutionState.REJECTED and "within 15 s" in write.execution.reason
    assert expired.released and m.capacity.free.cpu == 1 and not m.live


def test_a_pending_bid_never_holds_capacity_longer_than_the_nodes_limit():
    m = machine(pending_bid_timeout=1.0)
    ex = bid_on(m, announce(spec={"deadlines": {"min_bids": 600}}))
    assert m.bid_answered(ex.id, Reply(verdict="pending"), 100.0).expire == [(ex.id, 1.0)]


def test_a_pending_bid_decided_meanwhile_does_not_expire():
    m = machine()
    ex = bid_on(m)
    m.bid_answered(ex.id, Reply(verdict="pending"), 100.0)
    m.handle(REQ, Decision(job_id=ex.job_id, execution_id=ex.id, accepted=True), 101.0)
    assert m.expire_pending(ex.id, 10.0, 110.0).writes == []
    assert m.live[ex.id].state is ExecutionState.ACCEPTED


@pytest.mark.parametrize("late", [Reply(verdict="rejected"), Reply(verdict="accepted"), None])
def test_a_verdict_on_a_bid_decided_already_changes_nothing(late):
    """The requester's Decision came first and the job runs; the bid's own reply (or its lack, when the
    requester fell silent), or a second Decision, arrives after it. It once tried to move the running
    execution back to rejected: an error on every such message, from any requester."""
    m = machine()
    ex = bid_on(m)
    m.handle(REQ, Decision(job_id=ex.job_id, execution_id=ex.id, accepted=True), 101.0)
    assert m.bid_answered(ex.id, late, 102.0).writes == []
    if late is not None:
        again = Decision(job_id=ex.job_id, execution_id=ex.id, accepted=late.verdict == "accepted")
        assert m.handle(REQ, again, 103.0)[1].writes == []
    assert m.live[ex.id].state is ExecutionState.ACCEPTED and m.capacity.free.cpu == 0


def test_a_bid_with_no_answer_fails_and_frees_its_capacity():
    m = machine()
    ex = bid_on(m)
    changes = m.bid_answered(ex.id, None, 160.0)
    (write,) = changes.writes
    assert write.execution.state is ExecutionState.FAILED and write.kind is EventKind.ERROR
    assert changes.released and not m.live


def test_a_requester_that_left_a_bid_unanswered_gets_no_bids_for_a_while_and_requesters_take_turns():
    """A peer announcing whole-node jobs it never answered bids on held a node's room for 60 s a bid, again
    and again as it re-announced them: an honest job waited over 200 s. The window is short now, the
    silent requester's jobs wait in the backlog for SILENT_COOLDOWN, and when room frees requesters take
    turns, those whose bids we won first in each."""
    m = machine(cpu=1)
    silent = bid_on(m, announce("j-silent", requester="rogue"))
    assert m.live[silent.id].state is ExecutionState.BIDDING
    m.bid_answered(silent.id, None, 100.0 + BID_ANSWER_WINDOW)  # the node gave up: room again
    again = announce("j-again", requester="rogue")
    assert m.announce("rogue", again, 111.0) == (False, Changes()) and again.key in m.backlog
    assert m.backlog_fitting(111.0) == []  # not bid on, nor asked about, while silent
    assert [a.job_id for a in m.backlog_fitting(100.0 + BID_ANSWER_WINDOW + SILENT_COOLDOWN + 1)] == ["j-again"]

    m = machine(cpu=1)
    mine = bid_on(m)  # REQ accepts our bid: its jobs come first from now on
    m.accept(mine.id, {}, 100.0)
    for job_id, requester in (("j-stranger", "stranger"), ("j-known", REQ)):  # the stranger's came first
        assert m.announce(requester, announce(job_id, requester=requester), 101.0) == (False, Changes())
    for job_id in ("j-known-2", "j-known-3"):
        m.announce(REQ, announce(job_id), 101.0)
    m.run_over(mine.id, RunResult(exit_code=0), None, False, 102.0)
    # in turns, so a busy requester starves no other: the known one first in each turn
    assert [a.job_id for a in m.backlog_fitting(102.0)] == ["j-known", "j-stranger", "j-known-2", "j-known-3"]


def test_an_accepted_bid_is_stored_then_run_with_its_secrets_kept_in_memory_only():
    m = machine()
    ex = bid_on(m)
    changes = m.bid_answered(ex.id, Reply(verdict="accepted", secret_env={"TOKEN": "s3cret"}), 101.0)
    (write,) = changes.writes
    assert write.kind is EventKind.BID_ACCEPTED and write.execution.state is ExecutionState.ACCEPTED
    assert "s3cret" not in write.execution.model_dump_json()
    assert changes.runs == [ex.id] and m.secrets[ex.id] == {"TOKEN": "s3cret"}
    assert m.to_run(ex.id) == (m.live[ex.id], {"TOKEN": "s3cret"})
    assert m.secrets == {}  # the run took them


def test_a_rejected_bid_ends_with_the_requesters_reason():
    m = machine()
    ex = bid_on(m)
    (write,) = m.bid_answered(ex.id, Reply(verdict="rejected", reason="enough bids"), 101.0).writes
    assert write.kind is EventKind.BID_REJECTED and write.execution.reason == "enough bids"


# -- running and results -------------------------------------------------------------------------------


def test_a_finished_run_frees_capacity_and_proposes_its_result_for_delivery():
    m = machine()
    ex = running(m)
    changes = m.run_over(ex.id, RunResult(exit_code=3), None, False, 110.0)
    (write,) = changes.writes
    assert changes.released and m.capacity.free.cpu == 1
    assert write.kind is EventKind.RESULTS_PROPOSED and write.message == "exit code 3"
    assert changes.deliveries == [ex.id]
    delivery = m.to_deliver(ex.id)
    assert delivery is not None and delivery[1].digest and not delivery[1].signature


def test_an_accepted_result_completes_the_execution():
    m = machine()
    ex = running(m)
    m.run_over(ex.id, RunResult(), None, False, 110.0)
    (write,) = m.result_answered(ex.id, Reply(verdict="accepted"), 111.0).writes
    assert write.execution.state is ExecutionState.COMPLETED and write.kind is EventKind.RESULTS_ACCEPTED
    assert not m.live


def test_a_rejected_result_and_an_accepted_error_end_the_way_the_requester_sees_them():
    m = machine(cpu=2)
    ex = running(m)
    m.run_over(ex.id, RunResult(), None, False, 110.0)
    assert m.result_answered(ex.id, Reply(verdict="pending"), 111.0).writes == []  # still verifying
    (write,) = m.handle(REQ, Decision(job_id=ex.job_id, execution_id=ex.id, accepted=False,
                                      reason="outvoted"), 112.0)[1].writes
    assert write.execution.state is ExecutionState.REJECTED and write.kind is EventKind.RESULTS_REJECTED
    failed = bid_on(m, announce("j-2"))
    m.accept(failed.id, {}, 113.0)
    m.run_over(failed.id, None, "image not found", True, 114.0)
    (write,) = m.result_answered(failed.id, Reply(verdict="accepted"), 115.0).writes
    assert write.execution.state is ExecutionState.FAILED and write.execution.reason == "image not found"


def test_an_undeliverable_result_fails_the_execution():
    m = machine()
    ex = running(m)
    m.run_over(ex.id, RunResult(), None, False, 110.0)
    (write,) = m.result_answered(ex.id, None, 4000.0).writes
    assert write.execution.state is ExecutionState.FAILED and "could not deliver" in write.execution.reason


def test_a_cancel_before_the_run_starts_stops_it_and_frees_capacity():
    m = machine()
    ex = bid_on(m)
    m.accept(ex.id, {"TOKEN": "x"}, 101.0)
    reply, changes = m.handle(REQ, Cancel(job_id=ex.job_id, execution_id=ex.id), 102.0)
    assert reply.ok and changes.stop == [ex.id] and changes.released
    (write,) = changes.writes
    assert write.kind is EventKind.CANCELLED and write.execution.reason == "cancelled by the requester"
    assert m.to_run(ex.id) is None and m.secrets == {} and m.capacity.free.cpu == 1


def test_only_the_jobs_requester_may_decide_or_cancel():
    m = machine()
    ex = bid_on(m)
    reply, changes = m.handle("mallory", Decision(job_id=ex.job_id, execution_id=ex.id, accepted=True), 101.0)
    assert not reply.ok and "requester" in reply.reason and not changes.writes
    reply, changes = m.handle("mallory", Cancel(job_id=ex.job_id, execution_id=ex.id), 101.0)
    assert not reply.ok and not changes.stop
    assert m.live[ex.id].state is ExecutionState.BIDDING
    reply, _ = m.handle(REQ, Cancel(job_id=ex.job_id, execution_id="e-unknown"), 101.0)
    assert not reply.ok and "unknown" in reply.reason


def test_a_status_query_answers_the_requester_and_no_one_else():
    m = machine()
    ex = bid_on(m)
    reply, changes = m.handle(REQ, StatusQuery(execution_ids=[ex.id, "e-gone"]), 101.0)
    assert reply.states == {ex.id: "bidding", "e-gone": "unknown"} and not changes.writes
    assert m.handle("mallory", StatusQuery(execution_ids=[ex.id]), 101.0)[0].states == {ex.id: "unknown"}


def test_a_restarted_node_reports_what_it_lost_and_redelivers_what_it_had_proposed():
    m = machine()
    lost = Execution(id="e-1", job_id="j-1", node_id=NODE, requester=REQ, state=ExecutionState.ACCEPTED,
                     created_at=1.0, updated_at=1.0, spec=spec())
    proposed = Execution(id="e-2", job_id="j-2", node_id=NODE, requester=REQ, state=ExecutionState.PROPOSED,
                         created_at=1.0, updated_at=1.0, spec=spec(), result=RunResult())
    changes = m.restore([lost, proposed], 50.0)
    (write,) = changes.writes
    assert write.execution.id == "e-1" and write.execution.state is ExecutionState.PROPOSED
    assert write.execution.retryable and "restarted while running" in write.execution.error
    assert changes.deliveries == ["e-1", "e-2"]


def test_the_decision_modules_import_neither_trio_the_store_nor_the_network():
    compute = Path(__file__).parents[2] / "compute"
    for name in ("machine", "claims", "capacity"):
        tree = ast.parse((compute / f"{name}.py").read_text())
        modules = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert not {m for m in modules if m.split(".")[0] in ("trio", "node")}, name


def test_the_nodes_store_offers_everything_the_compute_role_asks_of_it():
    from node.store import Store

    for name in ("save", "live_executions", "add_published"):
        asked = inspect.signature(getattr(ComputeStore, name)).parameters
        offered = inspect.signature(getattr(Store, name)).parameters
        assert set(asked) <= set(offered), name


def test_a_node_whose_cpu_was_reserved_and_released_ten_thousand_times_still_fits_a_job_asking_for_all_of_it():
    """Floating point once left 4 free cores as 3.999999999999999: a 4-core job never fitted again."""
    import random

    total = Resources(cpu=4, memory="8GiB")
    tracker = CapacityTracker(total)
    rng, held = random.Random(0), []
    for i in range(10_000):
        if held and rng.random() < 0.5:
            tracker.release(held.pop(rng.randrange(len(held))))
        elif tracker.try_reserve(f"h-{i}", Resources(cpu=rng.choice([0.1, 0.3, 0.7]), memory="1MiB")):
            held.append(f"h-{i}")
    for holder in held:
        tracker.release(holder)
    assert tracker.free == total
    assert tracker.try_reserve("all", Resources(cpu=4, memory="8GiB"))


def test_an_engine_that_stops_answering_is_offered_a_while_and_its_jobs_wait_instead_of_failing():
    """dockerd restarting: the node stopped offering docker at once, and requesters failed every docker job
    with 'no compute node offers engine docker'. The engine is now offered for ENGINE_GRACE more, nothing of
    it is bid on or claimed meanwhile (its jobs wait in the backlog), and bids resume when it is back."""
    from compute.machine import ENGINE_GRACE
    from tests.unit.test_compute_machine_claims import sweep

    m = machine(cpu=4)
    m.engines = ["noop", "wasm"]
    assert not m.engines_answering(["wasm"], 100.0)  # noop does not answer
    assert m.engines == ["noop", "wasm"]  # still offered: requesters wait for it
    assert m.announce(REQ, announce("j-1"), 101.0) == (False, Changes())
    assert len(m.backlog) == 1  # kept to bid on later
    assert m.announce_sweep(REQ, sweep(), 101.0) is None
    assert m.engines_answering(["noop", "wasm"], 110.0)  # back: the backlog may bid
    assert [ann.job_id for ann in m.backlog_fitting(110.0)] == ["j-1"]
    assert len(m.bid_from_backlog(m.backlog_fitting(110.0), 110.0).bids) == 1
    assert len(m.retry_waiting(110.0)) == 1  # and the sweep is claimed
    assert not m.engines_answering(["wasm"], 200.0)
    assert not m.engines_answering(["wasm"], 200.0 + ENGINE_GRACE)
    assert m.engines == ["wasm"]  # gone for good: no longer offered, and requesters say so
    assert not m.engines_answering(["wasm"], 300.0) and m.engines == ["wasm"]
