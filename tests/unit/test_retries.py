"""#19 queueing and retries, in the requester's machines alone: ``spec.retries`` runs a failed job (or
sweep index) again after a backoff, and a job short of nodes says where it stands in the queue."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import EventKind, ExecutionState, JobSpec, JobState, RunResult
from jobs.messages import Bid, Cancel, IndexResult
from jobs.spec import MAX_RETRIES, InputSpec
from jobs.sweep import Sweep, SweepSpec
from requester.machine import Known, Tracked, retry_delay
from requester.selection import Queue, waiting_reason
from requester.sweep_machine import SweepMachine
from tests.unit.test_requester_machine import KNOWN, REQ, claim, kinds, machine, node, result, running, spec, tracked


def with_retries(n: int, **kw: object) -> JobSpec:
    """A job that may exit another way when run again: it reads a URL, whose content may change."""
    changing = [InputSpec(source="https://example.com/data.csv", path="/data.csv")]
    return spec(**kw).model_copy(update={"retries": n, "inputs": changing})  # type: ignore[arg-type]


def test_retries_are_checked_and_left_out_of_a_spec_that_has_none() -> None:
    """A spec without retries reads, hashes and caches as before retries existed."""
    plain = JobSpec.model_validate({"engine": {"name": "noop"}})
    assert "retries" not in plain.model_dump(mode="json")
    again = JobSpec.model_validate({"engine": {"name": "noop"}, "retries": 2})
    assert again.model_dump(mode="json")["retries"] == 2 and again.cache_key() == plain.cache_key()
    for bad in (-1, MAX_RETRIES + 1):
        with pytest.raises(ValidationError, match="retries"):
            JobSpec.model_validate({"engine": {"name": "noop"}, "retries": bad})


def test_the_backoff_doubles_from_one_second_up_to_a_minute() -> None:
    assert [retry_delay(n) for n in (1, 2, 3, 7, 8, 10)] == [1, 2, 4, 60, 60, 60]


def test_a_nonzero_exit_with_retries_left_runs_the_job_again_after_a_backoff() -> None:
    state = running(tracked(with_retries(2), secrets={"K": "v"}), "n-a")
    reply, changes = machine().on_result(state, "n-a", result("x-n-a", exit_code=3), 5.0, KNOWN, signed=True)
    assert reply.verdict == "accepted" and not changes.finished
    job = changes.state.job
    assert job.state is JobState.PENDING and (job.retried, job.attempt, job.first_attempt) == (1, 1, 1)
    assert job.reason == "retry 1 of 2 in 1 s: exit code 3 on node n-a"
    assert kinds(changes)[-1] is EventKind.RETRIED
    (write, _), = changes.writes
    assert [x.state for x in write.executions] == [ExecutionState.COMPLETED]  # the failed run, kept in the store
    assert changes.state.executions == {} and changes.state.secrets == {"K": "v"}  # a fresh start, secrets kept
    # not announced before the backoff is over; then announced, and the same node may bid on the new attempt
    assert not machine().tick(changes.state, 5.5, KNOWN).announce
    assert machine().tick(changes.state, 6.0, KNOWN).announce
    bid, after = machine().on_bid(changes.state, "n-a", Bid(job_id="j-1", execution_id="x-2", attempt=1), 6.1, KNOWN)
    assert bid.verdict == "accepted" and after.state.job.state is JobState.RUNNING


def test_the_job_fails_once_its_retries_are_spent() -> None:
    state, m, now = tracked(with_retries(1)), machine(), 1.0
    reasons = []
    for attempt, peer in enumerate(("n-a", "n-b")):
        _, bid = m.on_bid(state, peer, Bid(job_id="j-1", execution_id=f"x-{attempt}", attempt=attempt), now, KNOWN)
        _, changes = m.on_result(bid.state, peer, result(f"x-{attempt}", exit_code=1), now + 1, KNOWN, signed=True)
        state, now = changes.state, now + 10
        reasons.append(state.job.reason)
    assert reasons == ["retry 1 of 1 in 1 s: exit code 1 on node n-a", "exit code 1 on node n-b"]
    assert state.job.state is JobState.FAILED and state.job.result.exit_code == 1 and changes.finished


def test_a_deterministic_job_that_exits_nonzero_is_not_run_again_it_would_exit_the_same_way() -> None:
    """A python (Pyodide) or wasm job on content-addressed inputs is seeded by its spec: every retry printed
    and exited as the first run did, for three times the compute."""
    state = running(tracked(spec().model_copy(update={"retries": 2})), "n-a")
    _, changes = machine().on_result(state, "n-a", result("x-n-a", exit_code=3), 5.0, KNOWN, signed=True)
    job = changes.state.job
    assert changes.finished and job.state is JobState.FAILED and job.retried == 0
    assert job.reason == "exit code 3 on node n-a (not retried: a deterministic job exits the same way on every run)"
    url = spec().model_copy(update={"retries": 2, "inputs": [InputSpec(source="https://example.com/x", path="/x")]})
    _, changes = machine().on_result(running(tracked(url), "n-a"), "n-a", result("x-n-a", exit_code=3), 5.0, KNOWN,
                                     signed=True)
    assert changes.state.job.state is JobState.PENDING  # a URL's content may change: retried


def test_a_confirmed_node_error_is_retried_and_what_still_runs_of_the_failed_run_is_cancelled() -> None:
    state = running(tracked(with_retries(1, concurrency=2)), "n-a", "n-b")
    able = Known(nodes=[node("n-a"), node("n-b")])
    _, first = machine().on_result(state, "n-a", result("x-n-a", error="no such image"), 2.0, able, signed=True)
    assert first.state.job.state is JobState.RUNNING  # one node's word: the slot is re-offered
    _, bid = machine().on_bid(first.state, "n-c", Bid(job_id="j-1", execution_id="x-n-c", attempt=1), 2.5, able)
    _, changes = machine().on_result(bid.state, "n-c", result("x-n-c", error="no such image"), 3.0, able,
                                     signed=True)
    job = changes.state.job
    assert job.state is JobState.PENDING and job.reason.startswith("retry 1 of 1 in 1 s: node n-c: no such image")
    assert isinstance({s.peer: s.message for s in changes.sends}["n-b"], Cancel)  # the other slot of that run


def test_a_queue_timeout_is_not_retried() -> None:
    state = tracked(with_retries(3))  # deadlines.bid 60 s; no node ever bids
    changes = machine().tick(state, 61.0, KNOWN)
    assert changes.finished and changes.state.job.reason.startswith("no node took the job within 60 s")


def test_a_job_short_of_room_says_how_many_jobs_are_ahead_and_how_many_nodes_are_free() -> None:
    busy = [node(n).model_copy(update={"free": node(n).free.model_copy(update={"cpu": 0})}) for n in ("n-a", "n-b")]
    assert waiting_reason(spec(), busy, 0, 412) == "queued: 412 jobs ahead, 0 of 2 nodes free"
    assert waiting_reason(spec(), [*busy, node("n-c")], 0, 1).startswith("waiting for bids: 0 of 1 nodes accepted")
    other = node("n-x").model_copy(update={"engines": ["docker"]})
    assert waiting_reason(spec(), [*busy, other], 0, 1) == \
        "queued: 1 job ahead, 0 of 2 nodes free (2 of 3 known nodes can run it)"
    assert waiting_reason(spec(concurrency=2), busy, 1, 0) == \
        "queued: 0 jobs ahead, 0 of 2 nodes free; 1 of 2 nodes accepted"
    # more nodes than can run it: said so, not "3 have room now" while those 3 already run it
    assert waiting_reason(spec(concurrency=4), [node("n-a"), node("n-b"), node("n-c")], 3) == \
        "waiting for more nodes: it needs 4 and 3 of 3 known nodes can run it; 3 of 4 accepted (another node must join)"


def test_the_queue_counts_the_jobs_that_waited_longer_and_reorders_at_most_every_interval() -> None:
    waiting = [5.0, 1.0, 3.0]
    queue = Queue(lambda: waiting, every=1.0)
    assert [queue.ahead(t, 0.0) for t in (1.0, 3.0, 5.0)] == [0, 1, 2]
    waiting.remove(1.0)  # the first one got a node
    assert queue.ahead(3.0, 0.5) == 1  # still the order of 0.0
    assert queue.ahead(3.0, 1.0) == 0


# -- sweeps --------------------------------------------------------------------------------------


def sweep_with_retries(count: int, retries: int) -> SweepMachine:
    sweep_spec = SweepSpec(job=with_retries(retries), items=[{"X": str(i)} for i in range(count)])
    sweep = Sweep(id="s-1", owner="alice", spec=sweep_spec, count=count, requester=REQ,
                  counts={JobState.PENDING: count}, created_at=0, updated_at=0)
    return SweepMachine.new(sweep, REQ)


def exits(i: int, code: int) -> IndexResult:
    return IndexResult(index=i, result=RunResult(exit_code=code, stdout=str(i)))


def test_a_sweep_index_that_exits_nonzero_runs_again_after_its_backoff_and_fails_when_spent() -> None:
    m, able = sweep_with_retries(2, 1), {"n-a"}
    m.claim("n-a", claim("c-1", want=2), 1.0, able=able, quarantined=False)
    _, changes = m.claim("n-a", claim("c-1", exits(0, 0), exits(1, 2)), 2.0, able=able, quarantined=False)
    [_, record] = changes.writes[0].indexes
    assert (record.state, record.retries, record.reason) == \
        (JobState.PENDING, 1, "exit code 2 on node n-a; retry 1 of 1 in 1 s")
    assert m.claim("n-a", claim("c-2", want=2), 2.5, able=able, quarantined=False)[0].ranges == []  # backing off
    assert m.claim("n-a", claim("c-3", want=2), 3.0, able=able, quarantined=False)[0].ranges == [(1, 2)]
    _, changes = m.claim("n-a", claim("c-3", exits(1, 2)), 4.0, able=able, quarantined=False)
    assert changes.finished and m.sweep.state is JobState.FAILED and m.sweep.reason == "1 of 2 indexes failed"
    [record] = changes.writes[0].indexes
    assert (record.state, record.retries, record.reason, record.result.exit_code) == \
        (JobState.FAILED, 1, "exit code 2", 2)


def test_a_deterministic_sweeps_index_that_exits_nonzero_fails_without_its_retries() -> None:
    sweep_spec = SweepSpec(job=spec().model_copy(update={"retries": 2}), items=[{"X": "0"}])
    m, able = SweepMachine.new(Sweep(id="s-1", owner="alice", spec=sweep_spec, count=1, requester=REQ,
                                     counts={JobState.PENDING: 1}, created_at=0, updated_at=0), REQ), {"n-a"}
    m.claim("n-a", claim("c-1", want=1), 1.0, able=able, quarantined=False)
    _, changes = m.claim("n-a", claim("c-1", exits(0, 2)), 2.0, able=able, quarantined=False)
    [record] = changes.writes[0].indexes
    assert changes.finished and (record.state, record.retries) == (JobState.FAILED, 0)
    assert record.reason == "exit code 2 (not retried: a deterministic job exits the same way on every run)"


def test_a_retried_index_that_succeeds_completes_the_sweep_and_restored_retries_are_not_given_again() -> None:
    m, able = sweep_with_retries(1, 1), {"n-a"}
    m.claim("n-a", claim("c-1", want=1), 1.0, able=able, quarantined=False)
    m.claim("n-a", claim("c-1", exits(0, 1)), 2.0, able=able, quarantined=False)
    restored = SweepMachine.restored(m.sweep, REQ, [(0, JobState.PENDING, "", 0, None, 1)], 10.0)
    restored.claim("n-a", claim("c-2", want=1), 10.0, able=able, quarantined=False)
    _, changes = restored.claim("n-a", claim("c-2", exits(0, 1)), 11.0, able=able, quarantined=False)
    assert changes.finished and restored.sweep.state is JobState.FAILED  # its one retry was used before the restart
    m.claim("n-a", claim("c-3", want=1), 3.0, able=able, quarantined=False)
    _, changes = m.claim("n-a", claim("c-3", exits(0, 0)), 4.0, able=able, quarantined=False)
    assert changes.finished and m.sweep.state is JobState.COMPLETED


# -- the command line ----------------------------------------------------------------------------


def test_the_retry_and_queue_timeout_flags_go_into_the_spec_and_bad_values_name_the_flag() -> None:
    from cli.errors import CLIError
    from cli.options import JobFlags, SweepFlags
    from cli.specs import build_spec

    job = build_spec({"name": "noop"}, JobFlags(retries=3, queue_timeout=7200))
    assert (job.retries, job.deadlines.bid_limit) == (3, 7200)
    with pytest.raises(CLIError) as exc:
        build_spec({"name": "noop"}, JobFlags(retries=11, queue_timeout=-1))
    assert sorted(exc.value.lines) == ["deadlines.bid (--queue-timeout): Input should be greater than 0",
                                       "retries (--retries): Input should be less than or equal to 10"]
    with pytest.raises(CLIError, match="--queue-timeout: a sweep's indexes wait"):
        build_spec({"name": "noop"}, JobFlags(queue_timeout=60, sweep=SweepFlags(params=["x=1,2"])))
    sweep_job = build_spec({"name": "noop"}, JobFlags(retries=2, sweep=SweepFlags(params=["x=1,2"])))
    assert sweep_job.retries == 2  # each index's


def test_a_node_that_joins_wakes_waiting_jobs_but_not_a_retry_still_in_its_backoff() -> None:
    state = running(tracked(with_retries(1)), "n-a")
    _, retried = machine().on_result(state, "n-a", result("x-n-a", exit_code=1), 5.0, KNOWN, signed=True)
    waiting = Tracked(job=tracked(spec()).job.model_copy(update={"id": "j-2"}), waiting_since=4.0)
    assert machine().to_wake([retried.state, waiting], node("n-d"), 5.5) == ["j-2"]
    assert machine().to_wake([retried.state, waiting], node("n-d"), 6.0) == ["j-2", "j-1"]  # its backoff is over
