"""The requester's job and sweep machines, driven alone: no trio, no store, no network.

Each test feeds a machine one input at a given time and checks the reply and the changes it
asks for (what to write, whom to tell what), which is all the service does with them.
"""

from __future__ import annotations

import ast
import inspect
import random
from dataclasses import replace
from pathlib import Path

import pytest
import trio

import requester
from jobs import (
    Deadlines,
    Deal,
    EventKind,
    Execution,
    ExecutionState,
    Job,
    JobSpec,
    JobState,
    NoopEngine,
    Resources,
    RunResult,
)
from jobs.messages import (
    BACKLOG_STALE,
    REPEAT_AT_LEAST_EVERY,
    Bid,
    Cancel,
    Claim,
    Decision,
    IndexResult,
    NodeInfo,
    Result,
    outcome_digest,
)
from jobs.spec import (
    INPUT_DEADLINE,
    PREPARE_DEADLINE,
    SEEN_WHILE_RUNNING,
    DockerEngine,
    InputSpec,
    PythonEngine,
    WasmEngine,
)
from jobs.sweep import Sweep, SweepSpec
from requester.machine import (
    ANNOUNCE_BACKOFF_MAX,
    MAX_REOFFERS,
    REPEATS_PER_SECOND,
    TICK,
    Changes,
    JobMachine,
    Known,
    Tracked,
)
from requester.ports import NodeJudge, RequesterStore
from requester.selection import waiting_reason
from requester.sweep_machine import SweepMachine
from requester.trust import QUARANTINE_SECONDS, Standing

REQ = "req"
NODES = ("n-a", "n-b", "n-c")


def node(peer: str) -> NodeInfo:
    big = Resources(cpu=4, memory="4GiB")
    return NodeInfo(peer_id=peer, engines=["noop"], max_per_job=big, total=big, free=big)


KNOWN = Known(nodes=[node(n) for n in NODES])


def spec(*, concurrency: int = 1, confidence: int = 0, min_bids: int = 0, cache: bool = True,
         selector: str = "") -> JobSpec:
    return JobSpec(engine=NoopEngine(), timeout=10, cache=cache, deadlines=Deadlines(bid=60, min_bids=5),
                   deal=Deal(concurrency=concurrency, confidence=confidence, min_bids=min_bids), selector=selector)


def tracked(job_spec: JobSpec, *executions: Execution, secrets: dict[str, str] | None = None) -> Tracked:
    job = Job(id="j-1", owner="alice", spec=job_spec, requester=REQ, created_at=0, updated_at=0)
    state = Tracked(job=job, secrets=secrets or {}, waiting_since=0)
    return state.with_executions(*executions)


def machine(**kw: object) -> JobMachine:
    return JobMachine(REQ, rng=random.Random(7), **kw)  # type: ignore[arg-type]


def result(eid: str, *, stdout: str = "42", exit_code: int = 0, error: str | None = None,
           retryable: bool = False) -> Result:
    run = None if error else RunResult(exit_code=exit_code, stdout=stdout)
    return Result(job_id="j-1", execution_id=eid, result=run, error=error, retryable=retryable,
                  digest=outcome_digest(run, error))


def running(state: Tracked, *nodes: str, now: float = 1.0) -> Tracked:
    """``state`` with a bid accepted from each of ``nodes``."""
    for n in nodes:
        reply, changes = machine().on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{n}"), now, KNOWN)
        assert reply.verdict == "accepted"
        state = changes.state
    return state


def kinds(changes: Changes) -> list[EventKind]:
    return [e.kind for write, _ in changes.writes for e in write.events]


def sent(changes: Changes, kind: type) -> dict[str, object]:
    return {s.peer: s.message for s in changes.sends if isinstance(s.message, kind)}


# -- bids ----------------------------------------------------------------------------------------


def test_a_bid_for_a_free_slot_is_accepted_in_its_reply_with_the_jobs_secrets():
    reply, changes = machine().on_bid(tracked(spec(), secrets={"TOKEN": "s3cret"}), "n-a",
                                      Bid(job_id="j-1", execution_id="x-a"), 1.0, KNOWN)
    assert reply.verdict == "accepted" and reply.secret_env == {"TOKEN": "s3cret"}
    (write, _), = changes.writes
    assert [x.state for x in write.new_executions] == [ExecutionState.ACCEPTED]
    assert write.job is not None and write.job.state is JobState.RUNNING and write.job.reason == "running"
    assert kinds(changes) == [EventKind.BID, EventKind.BID_ACCEPTED]
    assert changes.state.executions["x-a"].node_id == "n-a" and not changes.sends


def test_a_bid_beyond_the_jobs_concurrency_is_refused_and_writes_nothing():
    state = running(tracked(spec()), "n-a")
    reply, changes = machine().on_bid(state, "n-b", Bid(job_id="j-1", execution_id="x-b"), 2.0, KNOWN)
    assert reply.verdict == "rejected" and reply.reason == "enough nodes already"
    assert changes.writes == [] and "bids_rejected" in changes.counts and changes.state is state


def test_a_bid_for_an_earlier_attempt_or_from_a_quarantined_node_is_refused():
    state = tracked(spec())
    stale, _ = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x", attempt=3), 1.0, KNOWN)
    assert stale.verdict == "rejected" and "no longer needs" in stale.reason
    liar = Known(nodes=KNOWN.nodes, reputation={"n-a": Standing(0, 3, rejected_at=0.5)})
    quarantined, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x"), 1.0, liar)
    assert quarantined.verdict == "rejected" and quarantined.reason.startswith("quarantined: 3 results rejected")
    assert changes.writes == []
    # a day after its last rejected result, it is on probation: its bid on a job other nodes verify is taken,
    # not on one whose result would be its word alone
    later = 0.5 + QUARANTINE_SECONDS
    alone, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x"), later, liar)
    assert alone.verdict == "rejected" and alone.reason.endswith(
        "on probation, it takes jobs verified by other nodes only (confidence 2 or more)") and changes.writes == []
    verified = tracked(spec(concurrency=2, confidence=2))
    probation, changes = machine().on_bid(verified, "n-a", Bid(job_id="j-1", execution_id="x"), later, liar,
                                          room=1)
    assert probation.verdict in ("accepted", "pending") and changes.writes
    # while it holds verified work here till its verdict, it takes no more
    busy, changes = machine().on_bid(verified, "n-a", Bid(job_id="j-1", execution_id="x"), later, liar, room=0)
    assert busy.verdict == "rejected" and busy.reason.startswith("on probation") and changes.writes == []


def test_a_bid_waiting_for_min_bids_is_not_chosen_once_its_node_is_quarantined():
    """A bid waiting for the others was chosen when the set completed, though its node had been quarantined
    meanwhile (its earlier lie judged)."""
    state = tracked(spec(concurrency=2, confidence=2, min_bids=2))
    reply, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-a"), 1.0, KNOWN)
    assert reply.verdict == "pending"
    liar = Known(nodes=KNOWN.nodes, reputation={"n-a": Standing(0, 3, rejected_at=1.5)})
    reply, changes = machine().on_bid(changes.state, "n-b", Bid(job_id="j-1", execution_id="x-b"), 2.0, liar)
    assert reply.verdict == "accepted"
    x = changes.state.executions["x-a"]
    assert x.state is ExecutionState.REJECTED and x.reason == "quarantined since it bid"
    assert [(s.peer, s.message.accepted) for s in changes.sends] == [("n-a", False)]


def test_a_retried_bid_gets_the_verdict_it_had_and_another_nodes_execution_is_not_its_own():
    state = running(tracked(spec(), secrets={"K": "v"}), "n-a")
    again, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-n-a"), 2.0, KNOWN)
    assert again.verdict == "accepted" and again.secret_env == {"K": "v"} and changes.writes == []
    other, _ = machine().on_bid(state, "n-b", Bid(job_id="j-1", execution_id="x-n-a"), 2.0, KNOWN)
    assert not other.ok and other.reason == "not your execution"


def test_with_min_bids_the_last_bid_of_the_set_chooses_and_the_others_hear_by_decision():
    state = tracked(spec(concurrency=1, min_bids=3), secrets={"K": "v"})
    m = machine()
    for n in ("n-a", "n-b"):
        reply, changes = m.on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{n}"), 1.0, KNOWN)
        assert reply.verdict == "pending" and reply.reason == "waiting for 3 bids"
        state = changes.state
    reply, changes = m.on_bid(state, "n-c", Bid(job_id="j-1", execution_id="x-n-c"), 2.0, KNOWN)
    verdicts = {x.node_id: x.state for x in changes.state.executions.values()}
    assert sorted(verdicts.values()) == sorted([ExecutionState.ACCEPTED, ExecutionState.REJECTED,
                                                ExecutionState.REJECTED])
    decisions = sent(changes, Decision)
    assert set(decisions) == {"n-a", "n-b"}  # n-c hears its verdict in the reply
    for peer, decision in decisions.items():
        assert decision.accepted == (verdicts[peer] is ExecutionState.ACCEPTED)
        assert decision.secret_env == ({"K": "v"} if decision.accepted else {})
    assert reply.verdict == ("accepted" if verdicts["n-c"] is ExecutionState.ACCEPTED else "rejected")


def test_a_tick_after_the_min_bids_wait_chooses_among_the_bids_there_are():
    state = tracked(spec(concurrency=1, min_bids=3))
    _, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-a"), 1.0, KNOWN)
    assert machine().tick(changes.state, 3.0, KNOWN).writes == []  # still within deadlines.min_bids
    later = machine().tick(changes.state, 7.0, KNOWN)
    assert later.state.executions["x-a"].state is ExecutionState.ACCEPTED
    assert sent(later, Decision)["n-a"].accepted


def test_a_reoffered_job_waits_for_min_bids_again_before_choosing():
    """The wait for min_bids counts from each attempt's first bid: after a re-offer the fastest bidder
    used to win at the next tick, with no choice among bids."""
    state = tracked(spec(concurrency=1, min_bids=2))
    m = machine()
    for n in ("n-a", "n-b"):
        _, changes = m.on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{n}"), 1.0, KNOWN)
        state = changes.state
    (chosen,) = [x for x in state.executions.values() if x.state is ExecutionState.ACCEPTED]
    _, failed = m.on_result(state, chosen.node_id, result(chosen.id, error="disk full", retryable=True), 100.0,
                            KNOWN, signed=True)
    assert failed.state.job.attempt == 1 and "re-offering" in failed.state.job.reason
    _, bid = m.on_bid(failed.state, "n-c", Bid(job_id="j-1", execution_id="x-c", attempt=1), 101.0, KNOWN)
    soon = m.tick(bid.state, 101.3, KNOWN)  # the first attempt's wait (from t=1) ran out long ago; its own has not
    assert soon.state.executions["x-c"].state is ExecutionState.BIDDING and not sent(soon, Decision)
    later = m.tick(bid.state, 106.5, KNOWN)
    assert later.state.executions["x-c"].state is ExecutionState.ACCEPTED


def test_a_job_no_known_node_matches_fails_unless_the_node_table_is_crowded():
    """A flood of fresh identities keeps the table full: what it holds proves no job impossible (every job
    was failed at once, a node joining later never known)."""
    state = tracked(spec(selector="zone=late"))
    failed = machine().tick(state, 1.0, KNOWN)
    assert failed.state.job.state is JobState.FAILED and "no known node matches selector" in failed.state.job.reason
    crowded = Known(nodes=KNOWN.nodes, complete=False)
    assert machine().tick(state, 1.0, crowded).state.job.state is JobState.PENDING  # it waits for the node
    job, _ = machine().admit(state.job, [], None)  # what the service passes to admit while crowded
    assert job.state is JobState.PENDING


# -- results -------------------------------------------------------------------------------------


def test_the_last_result_a_job_needs_completes_it_and_caches_a_deterministic_result():
    state = running(tracked(spec()), "n-a")
    reply, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    assert reply.verdict == "accepted" and changes.finished
    (write, _), = changes.writes
    assert write.job.state is JobState.COMPLETED and write.job.result.stdout == "42"
    assert kinds(changes) == [EventKind.RESULTS_PROPOSED, EventKind.RESULTS_ACCEPTED, EventKind.COMPLETED]
    _, job_id, cached, verified = write.cache
    assert job_id == "j-1" and cached.stdout == "42" and not verified  # one node's word


def test_a_job_with_secrets_is_never_cached_and_its_secrets_are_dropped_when_it_ends():
    state = running(tracked(spec(), secrets={"K": "v"}), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    assert changes.writes[0][0].cache is None and changes.state.secrets == {}


def test_a_nonzero_exit_code_fails_the_job_with_the_result():
    state = running(tracked(spec()), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", exit_code=3), 5.0, KNOWN, signed=True)
    assert changes.state.job.state is JobState.FAILED and changes.state.job.reason.startswith("exit code 3")
    assert changes.writes[0][0].cache is None


def test_a_result_with_a_bad_signature_is_refused_held_against_its_node_and_the_slot_reoffered():
    state = running(tracked(spec()), "n-a")
    reply, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=False)
    assert not reply.ok and reply.verdict == "rejected" and "signature" in reply.reason
    assert [peer for peer, _ in changes.penalties] == ["n-a"]
    assert isinstance(sent(changes, Cancel)["n-a"], Cancel)  # its run is over
    job = changes.state.job
    assert job.state is JobState.PENDING and job.attempt == 1 and job.reason.startswith("re-offering")
    assert changes.state.next_announce == 5.0 and not changes.finished


def test_a_result_whose_fields_do_not_match_its_digest_is_refused():
    state = running(tracked(spec()), "n-a")
    forged = result("x-n-a").model_copy(update={"result": RunResult(stdout="43")})
    reply, _ = machine().on_result(state, "n-a", forged, 5.0, KNOWN, signed=True)
    assert reply.reason == "the result's fields do not match its signed digest"


def test_a_result_for_someone_elses_execution_is_refused_without_a_write():
    state = running(tracked(spec()), "n-a")
    reply, changes = machine().on_result(state, "n-b", result("x-n-a"), 5.0, KNOWN, signed=True)
    assert not reply.ok and changes.writes == [] and changes.penalties == []


def test_verified_results_complete_the_job_when_enough_agree_and_the_dissenter_is_rejected():
    state = running(tracked(spec(concurrency=3, confidence=2)), "n-a", "n-b", "n-c")
    m = machine()
    reply, changes = m.on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    assert reply.verdict == "pending"
    reply, changes = m.on_result(changes.state, "n-b", result("x-n-b", stdout="wrong"), 5.0, KNOWN, signed=True)
    assert reply.verdict == "pending"
    reply, changes = m.on_result(changes.state, "n-c", result("x-n-c"), 6.0, KNOWN, signed=True)
    assert reply.verdict == "accepted" and changes.finished
    assert changes.state.job.state is JobState.COMPLETED
    assert sent(changes, Decision)["n-b"].accepted is False and sent(changes, Decision)["n-a"].accepted
    final = changes.writes[-1][0]
    assert final.reputation == {"n-a": (1, 0), "n-b": (0, 1), "n-c": (1, 0)}
    assert final.cache[3]  # two nodes agreed: other clients may be served it


def test_a_verdict_writes_what_it_adds_to_each_nodes_counts_never_counts_read_before_it():
    """Two jobs judged at once each wrote counts read before the other's write, and one verdict was lost:
    28 outvoted results of a liar counted as 3, and quarantine never came."""
    state = running(tracked(spec(concurrency=2, confidence=2)), "n-a", "n-b")
    known = Known(nodes=KNOWN.nodes, reputation={"n-a": Standing(40, 1), "n-b": Standing(7, 2)})
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, known, signed=True)
    _, changes = machine().on_result(changes.state, "n-b", result("x-n-b"), 6.0, known, signed=True)
    assert changes.writes[-1][0].reputation == {"n-a": (1, 0), "n-b": (1, 0)}


async def test_the_store_adds_reputation_so_writes_at_the_same_time_all_count(tmp_path):
    from node.store import Store

    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await store.save(reputation={"n-a": (3, 1)}, judged_at=10.0)
        async with trio.open_nursery() as writers:
            changes = ((12.0, {"n-a": (0, 1)}), (11.0, {"n-a": (0, 1)}), (13.0, {"n-a": (2, 0), "n-b": (0, 1)}))
            for at, change in changes:
                writers.start_soon(lambda change=change, at=at: store.save(reputation=change, judged_at=at))
        # each rejection's time is kept when it is the latest (a credit moves it not)
        assert await store.reputations() == {"n-a": (5, 3, 12.0), "n-b": (0, 1, 13.0)}
        nursery.cancel_scope.cancel()


def test_only_agreement_among_nodes_the_requester_chose_counts_for_them_or_against_the_outvoted():
    """Credit is what keeps a node that is sometimes outvoted out of quarantine: two liars farmed 300 credits
    each on indexes their owner pinned to them, then were outvoted again and again. Nodes a client pinned may
    be its own, so their agreement costs the node they outvote nothing either: two such nodes, wearing an
    honest node's labels, got it quarantined in three jobs."""
    for kind, job_spec, nodes, credited, outvoted in (
            ("chosen", spec(concurrency=3, confidence=2), ("n-a", "n-b", "n-c"), (1, 0), (0, 1)),
            ("pinned", spec(concurrency=3, confidence=2, selector="owner=me"), ("n-a", "n-b", "n-c"), None, None),
            ("its own word", spec(concurrency=1, confidence=1), ("n-a",), None, None),
            # a container's output may differ on honest nodes (a coin flip): a client got the requester's own
            # node quarantined with one in seven jobs
            ("not exactly repeatable", spec(concurrency=3, confidence=2).model_copy(
                update={"engine": DockerEngine(image="busybox")}), ("n-a", "n-b", "n-c"), None, None),
            # python in Pyodide repeats exactly for honest code, but job code reaches Node.js and what differs
            # between nodes there: a client printing a node's paths got it quarantined in three jobs
            ("python in Pyodide", spec(concurrency=3, confidence=2).model_copy(
                update={"engine": PythonEngine(code="print(1)")}), ("n-a", "n-b", "n-c"), None, None),
            ("wasm", spec(concurrency=3, confidence=2).model_copy(
                update={"engine": WasmEngine(module="/m.wasm")}), ("n-a", "n-b", "n-c"), (1, 0), (0, 1))):
        state, changes = running(tracked(job_spec), *nodes), None
        for n in nodes:
            _, changes = machine().on_result(changes.state if changes else state, n,
                                             result(f"x-{n}", stdout="lie" if n == "n-c" else "42"), 5.0, KNOWN,
                                             signed=True)
        written = changes.writes[-1][0].reputation or {}
        assert changes.state.job.state is JobState.COMPLETED, kind
        assert written.get("n-a") == credited, kind
        assert written.get("n-c") == outvoted, kind
        if "n-c" in nodes:
            assert changes.state.executions["x-n-c"].state is ExecutionState.REJECTED, kind  # its result is not used


def test_a_pinned_sweeps_verified_indexes_earn_its_nodes_nothing():
    m = sweep_machine(1, confidence=2, selector="owner=me")
    report(m, "n-a", ok(0), 1.0)
    _, changes = report(m, "n-b", ok(0), 4.0)
    assert m.sweep.state is JobState.COMPLETED and changes.credits == []


def test_nodes_agreeing_on_a_job_that_does_not_repeat_exactly_earn_by_it_when_no_one_was_outvoted():
    """Nodes that mostly run containers earned nothing at all, so never counted as known for long (a flood of
    identities could push them out of the node table) and had no credit against a rejection."""
    docker = spec(concurrency=3, confidence=2).model_copy(update={"engine": DockerEngine(image="busybox")})
    changes = None
    for n in ("n-a", "n-b", "n-c"):
        _, changes = machine().on_result(changes.state if changes else running(tracked(docker), "n-a", "n-b", "n-c"),
                                         n, result(f"x-{n}"), 5.0, KNOWN, signed=True)
    assert changes.state.job.state is JobState.COMPLETED
    assert changes.writes[-1][0].reputation == {"n-a": (1, 0), "n-b": (1, 0), "n-c": (1, 0)}


def test_a_sweep_that_does_not_repeat_exactly_judges_no_node_by_its_verdicts():
    """A docker sweep printing a coin flip with --confidence 2: each index honest nodes disagreed on counted
    against one of them."""
    m = sweep_machine(1, confidence=2)
    m.sweep = m.sweep.model_copy(update={"spec": m.sweep.spec.model_copy(update={"job": m.sweep.spec.job.model_copy(
        update={"engine": DockerEngine(image="busybox")})})})
    report(m, "n-a", ok(0), 1.0)
    report(m, "n-b", IndexResult(index=0, result=RunResult(stdout="tails")), 4.0)
    _, changes = report(m, "n-c", ok(0), 7.0)
    assert m.sweep.state is JobState.COMPLETED and m.states == [JobState.COMPLETED]
    assert changes.credits == [] and changes.penalties == []


def test_results_that_tie_with_no_other_node_able_fail_the_job_and_blame_nobody():
    two = Known(nodes=[node("n-a"), node("n-b")])
    state = running(tracked(spec(concurrency=2, confidence=2)), "n-a", "n-b")
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, two, signed=True)
    reply, changes = machine().on_result(changes.state, "n-b", result("x-n-b", stdout="other"), 5.0, two,
                                         signed=True)
    assert reply.verdict == "rejected" and changes.state.job.state is JobState.FAILED
    assert changes.writes[-1][0].reputation is None


def test_results_that_tie_ask_one_more_node_whose_agreement_decides_and_counts_against_the_liar():
    """concurrency = confidence = 2 and one liar: the job failed "could not verify" whenever the liar was
    one of the two, and nothing counted against it."""
    state = running(tracked(spec(concurrency=2, confidence=2)), "n-a", "liar")
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    reply, changes = machine().on_result(changes.state, "liar", result("x-liar", stdout="lie"), 6.0, KNOWN,
                                         signed=True)
    tie = changes.state
    assert reply.verdict == "pending" and tie.job.state is JobState.RUNNING and tie.job.attempt == 1
    assert "one more node runs it" in tie.job.reason and tie.needed() == 1 and tie.next_announce == 6.0
    reply, _ = machine().on_bid(tie, "n-a", Bid(job_id="j-1", execution_id="x-again", attempt=1), 6.5, KNOWN)
    assert reply.verdict == "rejected"  # a node whose result is in does not run it twice
    reply, changes = machine().on_bid(tie, "n-c", Bid(job_id="j-1", execution_id="x-n-c", attempt=1), 6.5, KNOWN)
    assert reply.verdict == "accepted"
    assert changes.state.needed() == 0
    reply, changes = machine().on_result(changes.state, "n-c", result("x-n-c"), 7.0, KNOWN, signed=True)
    assert reply.verdict == "accepted" and changes.state.job.state is JobState.COMPLETED
    assert changes.state.job.result.stdout == "42"
    assert {s.peer: s.message.accepted for s in changes.sends} == {"n-a": True, "liar": False}
    assert changes.writes[-1][0].reputation == {"n-a": (1, 0), "n-c": (1, 0), "liar": (0, 1)}


# -- errors and re-offers ------------------------------------------------------------------------


def test_one_nodes_error_is_not_believed_while_another_node_could_run_the_job():
    state = running(tracked(spec()), "n-a")
    reply, changes = machine().on_result(state, "n-a", result("x-n-a", error="boom"), 5.0, KNOWN, signed=True)
    assert reply.verdict == "accepted" and not changes.finished
    assert changes.state.job.attempt == 1 and kinds(changes) == [EventKind.ERROR, EventKind.REOFFERED]
    assert "reoffers" in changes.counts


def test_an_error_confirmed_by_a_second_node_fails_the_job():
    state = running(tracked(spec()), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", error="boom"), 5.0, KNOWN, signed=True)
    _, changes = machine().on_bid(changes.state, "n-b", Bid(job_id="j-1", execution_id="x-n-b", attempt=1), 6.0,
                                  KNOWN)
    _, changes = machine().on_result(changes.state, "n-b", result("x-n-b", error="boom"), 7.0, KNOWN, signed=True)
    assert changes.finished and changes.state.job.state is JobState.FAILED
    assert changes.state.job.reason == "node n-b: boom (reported by 2 nodes)"


def test_a_timeout_the_requesters_clock_bears_out_fails_the_job_on_one_nodes_word():
    """A job too slow for its timeout ran out the clock on a second node before it failed (two hours for a
    one-hour timeout). A timeout reported no sooner than the timeout after the node took the job is
    believed; one reported sooner is not."""
    state = running(tracked(spec()), "n-a", now=1.0)  # accepted at 1; the timeout is 10 s
    timed_out = result("x-n-a", error="timed out after 10 s")
    _, too_soon = machine().on_result(state, "n-a", timed_out, 5.0, KNOWN, signed=True)
    assert not too_soon.finished and kinds(too_soon) == [EventKind.ERROR, EventKind.REOFFERED]
    _, borne_out = machine().on_result(state, "n-a", timed_out, 11.5, KNOWN, signed=True)
    assert borne_out.finished and borne_out.state.job.state is JobState.FAILED
    assert borne_out.state.job.reason == "node n-a: timed out after 10 s"
    _, other_error = machine().on_result(state, "n-a", result("x-n-a", error="boom"), 11.5, KNOWN, signed=True)
    assert not other_error.finished  # only the timeout is the requester's to witness


def test_a_node_saying_its_disk_watch_stopped_the_run_fails_no_job_on_its_word():
    """An error ending "(seen while it ran)" counts against no node (``JobSpec.speaks_of_the_node``); a liar ending
    any error so gets no job failed by it: unlike a timeout, the requester's clock bears nothing out, another node
    runs the job, and the liar is done with it."""
    seen = f"disk limit exceeded: wrote more than 1048576 bytes (resources.disk){SEEN_WHILE_RUNNING}"
    state = running(tracked(spec()), "n-a", now=1.0)
    _, changes = machine().on_result(state, "n-a", result("x-n-a", error=seen), 11.5, KNOWN, signed=True)
    assert not changes.finished and kinds(changes) == [EventKind.ERROR, EventKind.REOFFERED]
    attempt = changes.state.job.attempt
    liar_again, _ = machine().on_bid(changes.state, "n-a", Bid(job_id="j-1", execution_id="x-2", attempt=attempt),
                                     12.0, KNOWN)
    assert liar_again.verdict == "rejected"  # done with the job
    honest, changes = machine().on_bid(changes.state, "n-b", Bid(job_id="j-1", execution_id="x-3", attempt=attempt),
                                       12.0, KNOWN)
    assert honest.verdict == "accepted"
    _, changes = machine().on_result(changes.state, "n-b", result("x-3"), 13.0, KNOWN, signed=True)
    assert changes.state.job.state is JobState.COMPLETED


def test_with_confidence_a_timeout_is_one_nodes_word_like_any_error():
    """A liar reporting "timed out" once the timeout had passed failed --confidence 2 jobs whose two honest nodes
    had proposed agreeing results: the submitter asked for more than one node's word."""
    state = running(tracked(spec(concurrency=3, confidence=2)), "n-a", "n-b", "n-c", now=1.0)
    _, changes = machine().on_result(state, "n-b", result("x-n-b"), 2.0, KNOWN, signed=True)
    _, changes = machine().on_result(changes.state, "n-c", result("x-n-c"), 2.5, KNOWN, signed=True)
    _, lie = machine().on_result(changes.state, "n-a", result("x-n-a", error="timed out after 10 s"), 11.5, KNOWN,
                                 signed=True)
    assert lie.state.job.state is not JobState.FAILED and kinds(lie)[:2] == [EventKind.ERROR, EventKind.REOFFERED]


@pytest.mark.parametrize("completer, blamed", [(REQ, {"n-a": (0, 1)}), ("n-b", None)])
def test_an_error_the_job_later_completes_despite_counts_against_its_reporter_on_more_than_one_nodes_word(
        completer, blamed):
    """A result from this requester's own node shows the error wrong; another node's alone is its word against
    the reporter's: one liar "completing" jobs honest nodes could not run got them quarantined."""
    state = running(tracked(spec()), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", error="boom"), 5.0, KNOWN, signed=True)
    _, changes = machine().on_bid(changes.state, completer, Bid(job_id="j-1", execution_id="x-2", attempt=1), 6.0,
                                  KNOWN)
    _, changes = machine().on_result(changes.state, completer, result("x-2"), 7.0, KNOWN, signed=True)
    assert changes.state.job.state is JobState.COMPLETED
    assert changes.writes[-1][0].reputation == blamed


@pytest.mark.parametrize("why, job_spec, error", [
    ("an input URL may answer nodes differently",
     spec().model_copy(update={"inputs": [InputSpec(source="https://example.com/frame1", path="/data")]}), "HTTP 403"),
    ("a node's speed is its own", spec(), "timed out after 10 s"),
    ("so is when its disk watch looked (a passing overshoot)", spec(),
     f"disk limit exceeded: wrote more than 1048576 bytes (resources.disk){SEEN_WHILE_RUNNING}"),
])
def test_an_error_a_node_may_honestly_meet_counts_not_against_it_when_another_completes(why, job_spec, error):
    """Any client could get honest nodes quarantined with a URL answering 403 once, then 200. The requester's
    own compute role completes the job: a result that shows any other error wrong."""
    state = running(tracked(job_spec), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", error=error), 5.0, KNOWN, signed=True)
    _, changes = machine().on_bid(changes.state, REQ, Bid(job_id="j-1", execution_id="x-2", attempt=1), 6.0, KNOWN)
    _, changes = machine().on_result(changes.state, REQ, result("x-2"), 7.0, KNOWN, signed=True)
    assert changes.state.job.state is JobState.COMPLETED
    assert changes.writes[-1][0].reputation is None, why


def test_a_quarantined_node_is_not_one_the_job_waits_for():
    """A job whose other node was quarantined waited out its bid limit (24 h) for bids it would refuse."""
    two = Known(nodes=[node("n-a"), node("n-b")], reputation={"n-b": Standing(0, 3)})
    state = running(tracked(spec()), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", error="boom"), 5.0, two, signed=True)
    assert changes.finished and changes.state.job.state is JobState.FAILED  # every node it would take said so
    assert changes.state.job.reason == "node n-a: boom"


def test_a_job_every_node_gave_up_on_while_the_node_table_filled_fails_once_it_is_full():
    """While a restarted requester's node table fills, no job fails for want of a node: a job whose nodes all
    gave up on it then waited, pending, for bids it would refuse, until its bid limit (a day by default)."""
    full = Known(nodes=[node("n-a"), node("n-b")])
    filling = Known(nodes=full.nodes, complete=False)
    state = tracked(spec())
    for attempt, n in enumerate(["n-a", "n-a", "n-b", "n-b"]):  # each node fails it twice, retryably
        _, changes = machine().on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{attempt}", attempt=attempt),
                                      attempt, filling)
        _, changes = machine().on_result(changes.state, n, result(f"x-{attempt}", error="image not pulled here",
                                                                  retryable=True), attempt + 0.5, filling, signed=True)
        state = changes.state
    assert not changes.finished and state.job.state is JobState.PENDING
    assert not machine().tick(state, 7.0, filling).finished  # still filling
    ended = machine().tick(state, 8.0, full)
    assert ended.finished and ended.state.job.state is JobState.FAILED
    assert ended.state.job.reason.startswith("no known node may take the job any more; last error on node n-b")


def test_the_job_fails_once_its_reoffers_run_out():
    state = running(tracked(spec()), "n-a")
    _, changes = machine(max_reoffers=0).on_result(state, "n-a", result("x-n-a", error="lost", retryable=True), 5.0,
                                                   KNOWN, signed=True)
    assert changes.finished and changes.state.job.reason.startswith("gave up after 0 re-offers")


def test_an_execution_without_a_result_past_its_timeout_is_cancelled_and_its_slot_reoffered():
    state = running(tracked(spec()), "n-a")
    assert machine().tick(state, 60.0, KNOWN).writes == []  # within timeout + result grace (10 + 60)
    changes = machine().tick(state, 72.0, KNOWN)
    assert changes.state.executions["x-n-a"].state is ExecutionState.FAILED
    assert isinstance(sent(changes, Cancel)["n-a"], Cancel)
    assert changes.state.job.attempt == 1 and changes.announce


def test_a_node_that_sits_on_the_job_past_its_deadline_twice_may_not_take_it_again():
    """A node winning the bid and never delivering held a job six result deadlines (an hour for a python job's
    defaults), then the job failed for want of re-offers: it bid again on every attempt. Alone able to run it,
    it may try twice (once may be its bad luck)."""
    alone = Known(nodes=[node("n-a")])
    state = machine().tick(running(tracked(spec()), "n-a"), 72.0, alone).state  # past timeout + grace (10 + 60)
    assert state.job.attempt == 1
    reply, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-1", attempt=1), 72.0, alone)
    assert reply.verdict == "accepted"
    state = machine().tick(changes.state, 143.0, alone).state  # twice: it is done with the job, and no node is left
    assert state.job.state is JobState.FAILED
    assert state.job.reason.startswith("no known node may take the job any more; last error on node n-a: no result")


def test_a_node_that_failed_the_job_twice_retryably_may_not_take_it_again():
    state = tracked(spec())
    for attempt in (0, 1):
        _, changes = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id=f"x-{attempt}", attempt=attempt),
                                      attempt, KNOWN)
        lost = result(f"x-{attempt}", error="disk full", retryable=True)
        _, changes = machine().on_result(changes.state, "n-a", lost, attempt + 0.5, KNOWN, signed=True)
        state = changes.state
    reply, _ = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-2", attempt=2), 3.0, KNOWN)
    assert reply.verdict == "rejected" and reply.reason == "this node failed the job 2 times"
    other, _ = machine().on_bid(state, "n-b", Bid(job_id="j-1", execution_id="x-n-b", attempt=2), 3.0, KNOWN)
    assert other.verdict == "accepted"


def test_a_node_that_sat_on_the_job_past_its_deadline_once_leaves_it_to_another_able_node():
    """A peer bidding first on every job, saying "running" and never delivering held each job it won two
    result deadlines: it won the job back after the first."""
    state = machine().tick(running(tracked(spec()), "n-a"), 72.0, KNOWN).state
    assert state.executions["x-n-a"].reason.startswith("no result within")
    again, _ = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-2", attempt=1), 72.0, KNOWN)
    assert again.verdict == "rejected"
    assert again.reason == "this node held the job past its result deadline: another node takes it"
    other, _ = machine().on_bid(state, "n-b", Bid(job_id="j-1", execution_id="x-n-b", attempt=1), 72.0, KNOWN)
    assert other.verdict == "accepted"


def test_two_nodes_that_both_sat_on_the_job_may_take_it_again():
    """Each refused the other's way ("another node takes it"), and the job, which either could run, waited out
    its queue timeout."""
    two = Known(nodes=[node("n-a"), node("n-b")])
    state = machine().tick(running(tracked(spec()), "n-a"), 72.0, two).state
    reply, changes = machine().on_bid(state, "n-b", Bid(job_id="j-1", execution_id="x-b", attempt=1), 72.0, two)
    assert reply.verdict == "accepted"
    state = machine().tick(changes.state, 144.0, two).state  # n-b sat on it too
    again, _ = machine().on_bid(state, "n-a", Bid(job_id="j-1", execution_id="x-a2", attempt=2), 145.0, two)
    assert again.verdict == "accepted"


@pytest.mark.parametrize(("update", "preparing"), [
    ({"engine": DockerEngine(image="busybox")}, PREPARE_DEADLINE),  # pulling the image
    ({"inputs": [InputSpec(source="https://example.org/data.csv", path="/data.csv")]}, INPUT_DEADLINE),
])
def test_a_node_gets_its_time_to_stage_inputs_and_pull_the_image_before_its_timeout_counts(update, preparing):
    state = running(tracked(spec().model_copy(update=update)), "n-a")
    assert machine().tick(state, 72.0, KNOWN).writes == []  # past timeout + grace: the node may still be preparing
    assert machine().tick(state, 69.0 + preparing, KNOWN).writes == []
    changes = machine().tick(state, 72.0 + preparing, KNOWN)
    assert changes.state.executions["x-n-a"].state is ExecutionState.FAILED
    assert changes.state.executions["x-n-a"].reason.startswith(f"no result within {70 + preparing:g} s")


def test_an_execution_whose_node_went_silent_is_lost_and_its_slot_reoffered():
    state = running(tracked(spec()), "n-a")
    changes = machine().lose(state, "x-n-a", "node n-a silent for 12 s", 20.0, KNOWN)
    assert changes.state.executions["x-n-a"].state is ExecutionState.FAILED
    assert changes.state.job.reason == "re-offering: node n-a failed: node n-a silent for 12 s"
    assert machine().lose(changes.state, "x-n-a", "again", 21.0, KNOWN).writes == []  # lost once only


def test_a_job_no_node_takes_within_its_bid_deadline_fails():
    changes = machine().tick(tracked(spec()), 61.0, KNOWN)
    assert changes.finished and changes.state.job.reason.startswith("no node took the job within 60 s")


def test_a_waiting_job_is_announced_when_due_with_a_growing_backoff():
    m = machine()
    state = tracked(spec())
    plan, state = m.announce(state, 0.0, KNOWN, own=None)
    assert plan.ask and not plan.here  # the first announcement names a few nodes
    assert not m.tick(state, 0.5, KNOWN).announce and m.tick(state, 1.0, KNOWN).announce
    for _ in range(10):
        plan, state = m.announce(state, 1.0, KNOWN, own=None)
    assert plan.ask == [] and state.announce_backoff == ANNOUNCE_BACKOFF_MAX  # repeats are gossiped


def test_with_thousands_of_jobs_waiting_their_repeats_together_keep_to_the_rate():
    """5,000 waiting jobs each repeated every 30 s took 44 % of a requester's CPU: with many waiting, each waits
    longer between repeats, so that all of them come to REPEATS_PER_SECOND; never so long, though, that
    compute nodes drop it from the offers they keep (BACKLOG_STALE) and it loses its place there."""
    m = machine()
    for waiting, gap in ((100, ANNOUNCE_BACKOFF_MAX), (4_000, 4_000 / REPEATS_PER_SECOND),
                         (30_000, REPEAT_AT_LEAST_EVERY)):
        known, state, now = replace(KNOWN, waiting=waiting), tracked(spec()), 0.0
        for _ in range(12):
            _, state = m.announce(state, now, known, own=None)
            now = state.next_announce
        _, state = m.announce(state, now, known, own=None)
        assert state.next_announce - now == pytest.approx(gap)
    assert REPEAT_AT_LEAST_EVERY < BACKLOG_STALE


def _quiet(changes: Changes) -> bool:
    return not (changes.writes or changes.sends or changes.announce or changes.finished)


def test_a_job_is_left_unticked_until_it_is_due_and_its_tick_then_acts():
    """The requester ticks a job only when ``Tracked.due`` says (and every job on a slower pass): a tick any
    earlier would change nothing, and one at its due time does something."""
    m = machine()
    announced = m.announce(tracked(spec()), 0.0, KNOWN, own=None)[1]  # next announcement due at 1 s
    silent = replace(announced, next_announce=1e9)  # the bid limit (60 s) comes first
    one_running = running(tracked(spec(concurrency=1)), "n-a", now=2.0)  # its result deadline
    reply, bidding = m.on_bid(tracked(spec(min_bids=3)), "n-a", Bid(job_id="j-1", execution_id="x-a"), 3.0, KNOWN)
    assert reply.verdict == "pending"
    choosing = replace(bidding.state, next_announce=1e9)  # its wait for min_bids ends first
    for state in (announced, silent, one_running, choosing):
        due = state.due()
        assert 0 < due < 1e9
        assert all(_quiet(m.tick(state, due - lag, KNOWN)) for lag in (TICK, 1.0, 10.0) if due - lag >= 0)
        assert not _quiet(m.tick(state, due + TICK, KNOWN)), state
    proposed = [x.transition(ExecutionState.PROPOSED, "results proposed", 5.0, result=RunResult(stdout="42"))
                for x in running(tracked(spec(concurrency=2, confidence=2)), "n-a", "n-b").executions.values()]
    assert tracked(spec(concurrency=2, confidence=2), *proposed).due() == 0.0  # judged at once
    ended = m.finish(one_running, JobState.CANCELLED, "cancelled", 4.0, KNOWN).state
    assert ended.due() == float("inf")


def test_the_nodes_asked_first_are_not_always_the_same():
    """With few nodes all are asked; the first bids win, so the order of the offers is drawn anew each time
    (a node listed last must still get its share, or a liar listed last would never be caught)."""
    known = Known(nodes=[node(n) for n in ("n-a", "n-b", "n-c", "n-d")])
    m = machine()
    firsts = {m.announce(tracked(spec(concurrency=3)), 0.0, known, own=None)[0].ask[0] for _ in range(40)}
    assert firsts == {"n-a", "n-b", "n-c", "n-d"}
    assert sorted(m.announce(tracked(spec(concurrency=3)), 0.0, known, own=None)[0].ask) == ["n-a", "n-b", "n-c", "n-d"]


def test_a_one_node_job_is_offered_to_the_requesters_own_compute_role_first():
    plan, _ = machine().announce(tracked(spec()), 0.0, KNOWN, own=node(REQ))
    assert plan.here and REQ not in plan.ask
    plan, _ = machine().announce(tracked(spec(concurrency=2)), 0.0, KNOWN, own=node(REQ))
    assert not plan.here


def test_cancelling_a_job_cancels_what_runs_on_its_nodes():
    state = running(tracked(spec(concurrency=2)), "n-a", "n-b")
    changes = machine().finish(state, JobState.CANCELLED, "cancelled by its owner", 3.0, KNOWN)
    assert changes.finished and changes.state.job.state is JobState.CANCELLED
    assert set(sent(changes, Cancel)) == {"n-a", "n-b"} and kinds(changes) == [EventKind.CANCELLED]


def test_a_new_job_no_known_node_could_run_fails_at_once():
    job = tracked(spec()).job.model_copy(update={"spec": spec().model_copy(update={"engine": NoopEngine()})})
    tiny = NodeInfo(peer_id="n-x", engines=["docker"], max_per_job=Resources(), total=Resources(), free=Resources())
    admitted, events = machine().admit(job, [tiny], None)
    assert admitted.state is JobState.FAILED and [e.kind for e in events] == [EventKind.CREATED, EventKind.FAILED]


# -- sweeps --------------------------------------------------------------------------------------


def sweep_machine(count: int = 10, success: str = "all", confidence: int = 0, selector: str = "") -> SweepMachine:
    sweep_spec = SweepSpec(job=spec(selector=selector), items=[{"X": str(i)} for i in range(count)], success=success,
                           confidence=confidence)
    sweep = Sweep(id="s-1", owner="alice", spec=sweep_spec, count=count, requester=REQ,
                  counts={JobState.PENDING: count}, created_at=0, updated_at=0)
    return SweepMachine.new(sweep, REQ)


def claim(claim_id: str, *results: IndexResult, want: int = 0) -> Claim:
    return Claim(sweep_id="s-1", claim_id=claim_id, want=want, results=list(results))


def ok(i: int) -> IndexResult:
    return IndexResult(index=i, result=RunResult(stdout=str(i)))


def test_a_claim_is_granted_its_share_of_the_lowest_pending_indexes():
    m = sweep_machine(10)
    reply, changes = m.claim("n-a", claim("c-a", want=100), 1.0, able={"n-a", "n-b"}, quarantined=False)
    assert reply.verdict == "accepted" and reply.ranges == [(0, 5)]  # half: two nodes could run them
    assert m.sweep.state is JobState.RUNNING and m.sweep.counts == {JobState.PENDING: 5, JobState.RUNNING: 5}
    assert [e.kind for w in changes.writes for e in w.events] == [EventKind.CLAIMED]


def test_results_of_every_index_complete_the_sweep():
    m = sweep_machine(2)
    m.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a"}, quarantined=False)
    reply, changes = m.claim("n-a", claim("c-a", ok(0), ok(1)), 2.0, able={"n-a"}, quarantined=False)
    assert reply.verdict == "rejected" and changes.finished
    assert m.sweep.state is JobState.COMPLETED and m.sweep.reason == "all 2 indexes completed"


def test_a_report_for_another_nodes_claim_is_refused_and_held_against_its_sender():
    m = sweep_machine(4)
    m.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a", "n-b"}, quarantined=False)
    reply, changes = m.claim("rogue", claim("c-a", ok(0)), 2.0, able={"n-a", "n-b"}, quarantined=False)
    assert not reply.ok and reply.verdict == "rejected" and "belongs to another node" in reply.reason
    assert [peer for peer, _ in changes.penalties] == ["rogue"] and m.states[0] is JobState.RUNNING


def test_a_silent_claim_loses_its_indexes_to_the_next_claim():
    m = sweep_machine(2)
    m.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a"}, quarantined=False)
    assert m.tick(5.0).writes == []  # within the lease (deadlines.silence, 10 s)
    changes = m.tick(12.0)
    assert m.states == [JobState.PENDING, JobState.PENDING] and "c-a" in m.expired
    assert changes.writes[0].indexes[0].reason.startswith("node n-a silent for 11 s")
    reply, _ = m.claim("n-b", claim("c-b", want=2), 13.0, able={"n-b"}, quarantined=False)
    assert reply.ranges == [(0, 2)]


def test_a_claim_that_keeps_its_lease_but_reports_nothing_loses_its_indexes():
    """A node sending empty claims to keep its lease alive held four indexes of a noop sweep for ten minutes."""
    m = sweep_machine(4)
    deadline = m.sweep.spec.job.result_deadline()  # 10 s timeout + 60 s grace
    m.claim("n-a", claim("c-a", want=4), 1.0, able={"n-a"}, quarantined=False)  # all four: the only node known
    m.claim("n-a", claim("c-a", ok(0)), 2.0, able={"n-a", "n-b"}, quarantined=False)
    for t in range(5, int(deadline), 5):  # heard every 5 s, within its lease
        m.claim("n-a", claim("c-a"), float(t), able={"n-a", "n-b"}, quarantined=False)
        assert m.tick(t + 0.5).writes == []
    m.claim("n-a", claim("c-a"), deadline + 1.5, able={"n-a", "n-b"}, quarantined=False)
    changes = m.tick(deadline + 2.5)
    assert m.states == [JobState.COMPLETED, JobState.PENDING, JobState.PENDING, JobState.PENDING]
    stalled = f"node n-a reported none of its 3 indexes within {deadline:g} s"
    assert changes.writes[0].indexes[0].reason.startswith(stalled)
    reply, _ = m.claim("n-b", claim("c-b", want=3), deadline + 3, able={"n-b"}, quarantined=False)
    assert reply.ranges == [(1, 4)]  # another node runs them


def test_a_claim_a_restarted_requester_kept_for_its_node_stalls_too():
    """What a node was running when the requester restarted stays with it for one lease; its heartbeats alone
    do not keep it for good."""
    m = sweep_machine(2)
    rows = [(0, JobState.RUNNING, "", 1, "n-a", 0), (1, JobState.PENDING, "", 0, None, 0)]
    m = SweepMachine.restored(m.sweep, REQ, rows, 1.0)
    deadline = m.sweep.spec.job.result_deadline()
    for t in range(5, int(deadline) + 15, 5):  # heard every 5 s, reporting nothing
        m.claim("n-a", claim("c-a"), float(t), able={"n-a", "n-b"}, quarantined=False)
        m.tick(t + 0.5)
    assert m.states[0] is JobState.PENDING  # taken back: another node runs it


def test_a_node_gets_its_share_over_all_its_claims():
    """One node opening claim after claim got each its share: 116 of 120 indexes, while two honest nodes idled."""
    m = sweep_machine(120)
    able = {"n-a", "n-b", "n-c"}
    first, _ = m.claim("n-a", claim("c-1", want=1000), 1.0, able=able, quarantined=False)
    assert first.ranges == [(0, 40)]  # a third of what is left
    more = [m.claim("n-a", claim(f"c-{i}", want=1000), 1.0, able=able, quarantined=False)[0].ranges
            for i in range(2, 8)]
    assert more == [[]] * 6  # it holds its share already
    honest, _ = m.claim("n-b", claim("c-b", want=1000), 1.0, able=able, quarantined=False)
    assert honest.ranges == [(40, 67)]  # a third of the 80 left


def test_an_index_timeout_the_requesters_clock_bears_out_fails_it_on_one_nodes_word():
    """With --timeout 1s --retries 1, each index ran four times: twice per attempt, to confirm the timeout."""
    m = sweep_machine(2)
    able = {"n-a", "n-b", "n-c"}
    m.claim("n-a", claim("c-a", want=2), 1.0, able=able, quarantined=False)  # the template's timeout: 10 s
    m.claim("n-a", claim("c-a", IndexResult(index=1, error="timed out after 10 s")), 5.0, able=able,
            quarantined=False)
    assert m.states[1] is JobState.PENDING  # too soon to be a timeout: run again elsewhere
    m.claim("n-a", claim("c-a", IndexResult(index=0, error="timed out after 10 s")), 11.5, able=able,
            quarantined=False)
    assert m.states[0] is JobState.FAILED  # borne out by the clock: one node's word


def test_with_confidence_an_index_timeout_is_one_nodes_word_like_any_error():
    m = sweep_machine(1, confidence=2)
    able = {"n-a", "n-b", "n-c"}
    m.claim("n-a", claim("c-a", want=1), 1.0, able=able, quarantined=False)
    m.claim("n-a", claim("c-a", IndexResult(index=0, error="timed out after 10 s")), 11.5, able=able,
            quarantined=False)
    assert m.states[0] is JobState.PENDING  # another node runs it: one node's word fails nothing


def test_an_index_waits_for_another_node_after_each_of_its_nodes_errors_not_only_the_first():
    """Patience counted from an index's first error: a minute later, one node's "retry elsewhere" errors took
    its five attempts in seconds, each claim taking it back at once, while other nodes were busy."""
    m = sweep_machine(1)
    able = {"n-a", "n-b"}  # n-b is busy: it does not claim
    retry_elsewhere = IndexResult(index=0, error="node trouble, try elsewhere", retryable=True)
    m.claim("n-a", claim("c-a", want=1), 1.0, able=able, quarantined=False)
    m.claim("n-a", claim("c-a", retry_elsewhere), 2.0, able=able, quarantined=False)
    assert m.claim("n-a", claim("c-a", want=1), 3.0, able=able, quarantined=False)[0].ranges == []
    assert m.claim("n-a", claim("c-a", want=1), 62.0, able=able, quarantined=False)[0].ranges == [(0, 1)]
    m.claim("n-a", claim("c-a", retry_elsewhere), 63.0, able=able, quarantined=False)
    assert m.claim("n-a", claim("c-a", want=1), 64.0, able=able, quarantined=False)[0].ranges == []  # waits again
    assert m.attempts[0] == 2 and m.states[0] is JobState.PENDING
    assert m.claim("n-b", claim("c-b", want=1), 65.0, able=able, quarantined=False)[0].ranges == [(0, 1)]


def test_indexes_given_back_spend_none_of_their_attempts_and_go_to_another_node_first():
    """One node gave back and claimed the same indexes six times, none run, then reported a "retry elsewhere"
    error for each: they failed for good ("gave up after 7 attempts"), though the sweep asked two nodes to agree."""
    m = sweep_machine(4, confidence=2)
    able = {"rogue", "n-b"}
    assert m.claim("rogue", claim("c-r", want=2), 1.0, able=able, quarantined=False)[0].ranges == [(0, 2)]
    again = Claim(sweep_id="s-1", claim_id="c-r", want=2, released=[0, 1])
    assert m.claim("rogue", again, 2.0, able=able, quarantined=False)[0].ranges == [(2, 4)]  # not 0 and 1 again
    assert m.states[:2] == [JobState.PENDING, JobState.PENDING] and m.attempts[:2] == [0, 0]
    assert m.claim("n-b", claim("c-b", want=4), 3.0, able=able, quarantined=False)[0].ranges == [(0, 1)]  # its share
    alone = sweep_machine(2)  # the only node able to run them: it may take them back
    alone.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a"}, quarantined=False)
    back = Claim(sweep_id="s-1", claim_id="c-a", want=2, released=[0, 1])
    assert alone.claim("n-a", back, 2.0, able={"n-a"}, quarantined=False)[0].ranges == [(0, 2)]
    assert alone.attempts == [1, 1]


def test_a_node_whose_claim_lapsed_gets_its_indexes_again_only_if_no_other_node_takes_them():
    """One node claiming and falling silent, again and again, failed an index alone after five lapses (50 s):
    each time the lowest pending indexes went straight back to it."""
    m = sweep_machine(1)
    able = {"n-a", "n-b"}  # n-b is busy at first
    m.claim("n-a", claim("c-1", want=1), 1.0, able=able, quarantined=False)
    m.tick(12.0)  # silent past deadlines.silence
    assert m.states[0] is JobState.PENDING and m.attempts[0] == 1
    assert m.claim("n-a", claim("c-2", want=1), 13.0, able=able, quarantined=False)[0].ranges == []
    assert m.claim("n-b", claim("c-b", want=1), 14.0, able=able, quarantined=False)[0].ranges == [(0, 1)]


def test_an_index_error_runs_it_again_elsewhere_and_a_second_nodes_error_fails_it():
    m = sweep_machine(1)
    able = {"n-a", "n-b", "n-c"}
    m.claim("n-a", claim("c-a", want=1), 1.0, able=able, quarantined=False)
    boom = IndexResult(index=0, error="boom")
    m.claim("n-a", claim("c-a", boom), 2.0, able=able, quarantined=False)
    assert m.states[0] is JobState.PENDING
    again, _ = m.claim("n-a", claim("c-a2", want=1), 3.0, able=able, quarantined=False)
    assert again.ranges == []  # not to the node that reported the error
    assert m.claim("n-b", claim("c-b", want=1), 3.0, able=able, quarantined=False)[0].ranges == [(0, 1)]
    _, changes = m.claim("n-b", claim("c-b", boom), 4.0, able=able, quarantined=False)
    assert changes.finished and m.sweep.state is JobState.FAILED


def test_the_first_success_of_an_any_sweep_ends_it_and_stops_the_other_claims():
    m = sweep_machine(4, success="any")
    m.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a", "n-b"}, quarantined=False)
    m.claim("n-b", claim("c-b", want=2), 1.0, able={"n-a", "n-b"}, quarantined=False)
    reply, changes = m.claim("n-a", claim("c-a", ok(0)), 2.0, able={"n-a", "n-b"}, quarantined=False)
    assert reply.reason == "the sweep is completed" and m.sweep.winner == 0
    assert {(s.message.execution_id, s.peer) for s in changes.sends} == {("c-a", "n-a"), ("c-b", "n-b")}
    assert changes.writes[-1].end_unfinished == (JobState.CANCELLED, "sweep completed")


def test_a_quarantined_node_gets_nothing_and_its_claim_is_taken_back():
    m = sweep_machine(2)
    m.claim("n-a", claim("c-a", want=2), 1.0, able={"n-a"}, quarantined=False)
    reply, _ = m.claim("n-a", claim("c-a", want=2), 2.0, able={"n-a"}, quarantined=True)
    assert reply.verdict == "rejected" and reply.reason.startswith("quarantined")
    assert m.states == [JobState.PENDING, JobState.PENDING] and "c-a" not in m.claims


def test_retrying_a_failed_sweep_puts_its_failed_indexes_back_to_run():
    m = sweep_machine(1)
    able = {"n-a", "n-b"}
    for peer in ("n-a", "n-b"):
        m.claim(peer, claim(f"c-{peer}", want=1), 1.0, able=able, quarantined=False)
        m.claim(peer, claim(f"c-{peer}", IndexResult(index=0, error="boom")), 2.0, able=able, quarantined=False)
    assert m.sweep.state is JobState.FAILED
    changes = m.retry(3.0)
    assert m.sweep.state is JobState.RUNNING and m.states == [JobState.PENDING] and m.attempts == [0]
    assert [e.kind for w in changes.writes for e in w.events] == [EventKind.RETRIED]


def report(m: SweepMachine, peer: str, result: IndexResult, now: float, able=("n-a", "n-b", "n-c")):
    """``peer`` claims one index, is granted it and reports ``result`` for it: the reply to the report."""
    granted, _ = m.claim(peer, claim(f"c-{peer}-{now}", want=1), now, able=set(able), quarantined=False)
    assert granted.ranges == [(result.index, result.index + 1)], granted
    return m.claim(peer, claim(f"c-{peer}-{now}", result), now + 1, able=set(able), quarantined=False)


def test_a_verified_sweep_counts_an_index_only_once_two_nodes_agree_and_never_asks_the_same_node_twice():
    m = sweep_machine(1, confidence=2)
    report(m, "n-a", ok(0), 1.0)
    assert m.states == [JobState.PENDING] and m.sweep.state is JobState.RUNNING
    again, _ = m.claim("n-a", claim("c-a-again", want=1), 3.0, able={"n-a", "n-b"}, quarantined=False)
    assert again.ranges == []  # its own word cannot confirm itself
    _, changes = report(m, "n-b", ok(0), 4.0)
    assert changes.finished and m.sweep.state is JobState.COMPLETED and changes.penalties == []
    assert changes.credits == ["n-a", "n-b"]  # each agreeing node's good work counts for it
    record = changes.writes[-1].indexes[0]
    assert record.state is JobState.COMPLETED and record.reason == "completed, verified by 2 of 2 nodes"


def test_each_claim_gets_the_indexes_awaiting_other_nodes_runs_lowest_first_and_never_its_own():
    m = sweep_machine(10, confidence=3)
    able = {"n-a", "n-b", "n-c"}
    m.claim("n-a", claim("c-a", want=4), 1.0, able=able, quarantined=False)  # 0-3
    m.claim("n-a", claim("c-a", *map(ok, range(4))), 2.0, able=able, quarantined=False)
    a_again, _ = m.claim("n-a", claim("c-a2", want=2), 3.0, able=able, quarantined=False)
    assert a_again.ranges == [(4, 6)]  # fresh ones: its own results await others
    b, _ = m.claim("n-b", claim("c-b", want=2), 3.0, able=able, quarantined=False)
    assert b.ranges == [(0, 2)]
    m.claim("n-b", claim("c-b", ok(0), IndexResult(index=1, result=RunResult(stdout="other"))), 4.0, able=able,
            quarantined=False)
    c, _ = m.claim("n-c", claim("c-c", want=3), 5.0, able=able, quarantined=False)
    assert c.ranges == [(0, 3)]  # 0 and 1 await a third node's run, 2 and 3 a second one's
    b_again, _ = m.claim("n-b", claim("c-b2", want=2), 6.0, able=able, quarantined=False)
    assert b_again.ranges == [(3, 4), (6, 7)]  # not 0 or 1, which it ran: 3, then a fresh one


def test_two_nodes_errors_do_not_fail_an_index_of_a_sweep_verified_by_three():
    """Errors need as many nodes as results do, as a job's: two liars' "cannot run" failed an index of a
    confidence-3 sweep that three honest nodes were there to run."""
    m = sweep_machine(1, confidence=3)
    able = ("liar-1", "liar-2", "n-a", "n-b", "n-c")
    for liar, now in (("liar-1", 1.0), ("liar-2", 3.0)):
        report(m, liar, IndexResult(index=0, error="the module is invalid"), now, able=able)
    assert m.states == [JobState.PENDING] and m.sweep.state is JobState.RUNNING
    for honest, now in (("n-a", 70.0), ("n-b", 72.0), ("n-c", 74.0)):  # after ERROR_PATIENCE, any node may take it
        report(m, honest, ok(0), now, able=able)
    assert m.sweep.state is JobState.COMPLETED and m.states == [JobState.COMPLETED]


def test_a_slow_nodes_timeout_is_not_held_against_it_when_faster_nodes_run_the_index():
    """A node's speed is its own, as for a job (``trust.proven_wrong``): a verified sweep's honest slow node
    was penalised for its timeout once faster nodes ran the index to a verified result."""
    m = sweep_machine(1, confidence=2)
    timed_out = m.sweep.spec.job.timed_out()
    report(m, "slow", IndexResult(index=0, error=timed_out), 1.0, able=("slow", "n-a", "n-b"))
    report(m, "n-a", ok(0), 4.0, able=("slow", "n-a", "n-b"))
    _, changes = report(m, "n-b", ok(0), 6.0, able=("slow", "n-a", "n-b"))
    assert m.sweep.state is JobState.COMPLETED
    assert changes.penalties == [] and "errors_contradicted" not in changes.counts
    liar = sweep_machine(1, confidence=2)  # another error is still shown wrong
    report(liar, "liar", IndexResult(index=0, error="the module is invalid"), 1.0, able=("liar", "n-a", "n-b"))
    report(liar, "n-a", ok(0), 4.0, able=("liar", "n-a", "n-b"))
    _, changes = report(liar, "n-b", ok(0), 6.0, able=("liar", "n-a", "n-b"))
    assert [peer for peer, _ in changes.penalties] == ["liar"]


def test_a_liars_hit_ends_no_any_sweep_and_the_majority_outvotes_it():
    m = sweep_machine(2, success="any", confidence=2)
    forged = IndexResult(index=0, result=RunResult(stdout="forged: found it"))
    _, changes = report(m, "liar", forged, 1.0, able=("liar", "n-a", "n-b"))
    assert not changes.finished and m.sweep.winner is None and m.states[0] is JobState.PENDING
    _, changes = report(m, "n-a", ok(0), 3.0, able=("liar", "n-a", "n-b"))
    assert not changes.finished and m.states[0] is JobState.PENDING  # one against one: no verdict yet
    _, changes = report(m, "n-b", ok(0), 5.0, able=("liar", "n-a", "n-b"))
    assert changes.finished and m.sweep.state is JobState.COMPLETED and m.sweep.winner == 0
    assert changes.writes[-1].indexes[0].result.stdout == "0"  # the honest result, never the forged one
    assert [peer for peer, _ in changes.penalties] == ["liar"] and changes.credits == ["n-a", "n-b"]
    assert [e.node_id for w in changes.writes for e in w.events if e.kind is EventKind.RESULTS_REJECTED] == ["liar"]


def test_an_index_whose_nodes_all_disagree_fails_as_unverified_and_blames_no_one():
    m = sweep_machine(1, confidence=2)
    for n, peer in enumerate(("n-a", "n-b", "n-c")):
        _, changes = report(m, peer, IndexResult(index=0, result=RunResult(stdout=f"different {n}")), 1.0 + 2 * n)
    assert changes.finished and m.sweep.state is JobState.FAILED and changes.penalties == changes.credits == []
    assert changes.writes[-1].indexes[0].reason.startswith("could not verify: no result shared by 2 nodes")


def test_an_index_on_which_every_able_node_disagrees_fails_but_one_nodes_result_waits_for_another():
    m = sweep_machine(2, confidence=2)
    report(m, "n-a", ok(0), 1.0, able=("n-a", "liar"))
    _, changes = report(m, "liar", IndexResult(index=0, result=RunResult(stdout="forged")), 3.0, able=("n-a", "liar"))
    assert m.states[0] is JobState.FAILED and changes.penalties == []  # no third node to break the tie
    report(m, "n-a", ok(1), 5.0, able=("n-a",))  # a node alone: its index waits for a second one
    assert m.states[1] is JobState.PENDING


def test_an_index_that_every_able_node_ran_alike_but_fewer_than_it_needs_says_so():
    """``confidence 4`` on a network of 3: "no result shared by 4 nodes (x3)" read like a disagreement."""
    m = sweep_machine(1, confidence=4)
    able = ("n-a", "n-b", "n-c")
    for n, peer in enumerate(able):
        _, changes = report(m, peer, ok(0), 1.0 + 2 * n, able=able)
    assert m.states == [JobState.FAILED] and changes.penalties == []
    assert changes.writes[-1].indexes[0].reason == "could not verify: the 3 nodes able to run it agree, and it needs 4"


def test_runs_awaiting_confirmation_do_not_use_up_an_index_s_attempts():
    m = sweep_machine(1, confidence=3)
    nodes = ("n-a", "n-b", "n-c", "n-d", "n-e")
    for n, peer in enumerate(nodes[:4]):  # 2 against 2: nobody has 3 yet
        report(m, peer, IndexResult(index=0, result=RunResult(stdout=str(n % 2))), 1.0 + 2 * n, able=nodes)
    m.claim("n-e", claim("c-e", want=1), 10.0, able=set(nodes), quarantined=False)
    changes = m.tick(30.0)  # its claim lapses: a run lost for reasons of its node, the fifth attempt
    assert m.states == [JobState.PENDING] and "will run again" in changes.writes[0].indexes[0].reason


# -- the store the requester needs ---------------------------------------------------------------


def test_the_node_store_offers_every_method_the_requester_needs_with_the_same_parameters():
    from node.store import Store

    for name, wanted in inspect.getmembers(RequesterStore, inspect.isfunction):
        if name.startswith("_"):
            continue
        offered = getattr(Store, name)
        assert list(inspect.signature(offered).parameters) == list(inspect.signature(wanted).parameters), name


def test_the_job_service_offers_every_method_the_sweep_service_asks_of_it():
    from requester.service import RequesterService

    for name, wanted in inspect.getmembers(NodeJudge, inspect.isfunction):
        if not name.startswith("_"):
            offered = getattr(RequesterService, name)
            assert list(inspect.signature(offered).parameters) == list(inspect.signature(wanted).parameters), name
            assert inspect.iscoroutinefunction(offered) == inspect.iscoroutinefunction(wanted), name


def test_the_machines_and_their_rules_import_no_trio_no_store_and_no_network():
    pure = ("machine", "sweep_machine", "trust", "selection", "sweep_rules", "nodes")
    io = {"trio", "node", "requester.service", "requester.sweeps", "requester.common"}
    for name in pure:
        tree = ast.parse((Path(requester.__file__).parent / f"{name}.py").read_text())
        imported = {alias.name for n in ast.walk(tree) if isinstance(n, ast.Import) for alias in n.names}
        imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not {m for m in imported if m in io or m.split(".")[0] in {"trio", "node"}}, name


def test_a_tie_whose_last_possible_breaker_left_fails_unverified_at_the_next_tick():
    state = running(tracked(spec(concurrency=2, confidence=2)), "n-a", "liar")
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    _, changes = machine().on_result(changes.state, "liar", result("x-liar", stdout="lie"), 6.0, KNOWN, signed=True)
    assert changes.state.needed() == 1  # n-c may break the tie
    assert not machine().tick(changes.state, 7.0, KNOWN).finished
    gone = Known(nodes=[node("n-a"), node("liar")])
    ticked = machine().tick(changes.state, 7.0, gone)
    assert ticked.finished and ticked.state.job.state is JobState.FAILED
    assert ticked.state.job.reason.startswith("could not verify") and ticked.writes[-1][0].reputation is None


def test_a_tie_that_takes_the_last_re_offer_is_announced_not_failed_at_the_next_tick():
    job_spec = spec(concurrency=2, confidence=2)
    state = tracked(job_spec)
    state = replace(state, job=state.job.model_copy(update={"attempt": MAX_REOFFERS - 1}))
    for n in ("n-a", "liar"):
        _, changes = machine().on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{n}", attempt=MAX_REOFFERS - 1),
                                      1.0, KNOWN)
        state = changes.state
    _, changes = machine().on_result(state, "n-a", result("x-n-a"), 5.0, KNOWN, signed=True)
    _, changes = machine().on_result(changes.state, "liar", result("x-liar", stdout="lie"), 6.0, KNOWN, signed=True)
    assert changes.state.job.attempt == MAX_REOFFERS and changes.state.needed() == 1
    ticked = machine().tick(changes.state, 6.25, KNOWN)
    assert not ticked.finished and ticked.announce
    plan, _ = machine().announce(ticked.state, 6.25, KNOWN, None)
    assert plan.ask and not {"n-a", "liar"} & set(plan.ask)  # offered to the nodes that may break it


def test_proposals_all_in_with_no_verdict_written_are_judged_at_the_next_tick():
    """A restart between a proposal's write and the verdict's left every slot proposed: nothing judged them."""
    state = running(tracked(spec(concurrency=2, confidence=2)), "n-a", "n-b")
    proposed = [x.transition(ExecutionState.PROPOSED, "results proposed", 5.0, result=RunResult(stdout="42"))
                for x in state.executions.values()]
    ticked = machine().tick(state.with_executions(*proposed), 9.0, KNOWN)
    assert ticked.finished and ticked.state.job.state is JobState.COMPLETED
    assert {s.peer for s in ticked.sends} == {"n-a", "n-b"}  # each node hears its verdict


def test_a_job_waiting_on_a_quarantined_node_says_so():
    """A job whose third slot only a quarantined node could take said "3 of 3 known nodes can run it" while it
    waited for a node to join."""
    known = Known(nodes=KNOWN.nodes, reputation={"n-c": Standing(4, 3)})
    state = tracked(spec(concurrency=3, confidence=2))
    for n in ("n-a", "n-b"):
        _, changes = machine().on_bid(state, n, Bid(job_id="j-1", execution_id=f"x-{n}"), 1.0, known)
        state = changes.state
    assert state.job.reason == ("waiting for more nodes: it needs 3 and 2 of 3 known nodes can run it "
                                "(1 more quarantined or done with it); 2 of 3 accepted (another node must join)")


def test_a_job_waiting_on_a_node_done_with_it_says_so():
    """A concurrency-3 job on three nodes, one of them restarted twice while it ran it (and so barred from it),
    said "3 of 3 known nodes can run it, 3 have room now" while it waited a day for a node to join."""
    state = running(tracked(spec(concurrency=3)), "n-a", "n-b")
    lost = "node restarted while running the job"
    state = state.with_executions(*(Execution(
        id=f"x-c{i}", job_id="j-1", node_id="n-c", requester=REQ, attempt=i, created_at=i, updated_at=i,
        state=ExecutionState.FAILED, reason=lost, error=lost, retryable=True) for i in (0, 1)))
    barred = machine().barred(state, KNOWN, 2.0)
    assert barred == {"n-c"}
    assert waiting_reason(state.job.spec, KNOWN.nodes, state.held(), barred=barred) == (
        "waiting for more nodes: it needs 3 and 2 of 3 known nodes can run it (1 more quarantined or done with "
        "it); 2 of 3 accepted (another node must join)")


def test_only_a_restart_forgives_what_a_node_sends_of_a_claim_the_requester_does_not_know():
    """Retrying an ended sweep rebuilds it as a restart does: it opened the window in which reports of unknown
    claims count against no one, with no restart to explain them."""
    rows = [(i, JobState.PENDING, "", 0, None, 0) for i in range(4)]
    for restarted, held_against in ((True, []), (False, ["rogue"])):
        m = SweepMachine.restored(sweep_machine(4).sweep, REQ, rows, 1.0, restarted=restarted)
        _, changes = m.claim("rogue", claim("c-unknown", ok(0)), 2.0, able={"rogue", "n-a"}, quarantined=False)
        assert [peer for peer, _ in changes.penalties] == held_against, restarted
