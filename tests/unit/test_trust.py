"""The requester's trust rules, alone: no store, network or clock."""

from __future__ import annotations

from jobs import Execution, ExecutionState, RunResult
from requester.trust import agreeing_nodes, bid_refusal, corroborated, error_confirmed, error_reporters, nodes_left


def ex(node: str, state: ExecutionState, attempt: int = 0, *, error: str | None = None, retryable: bool = False,
       result: RunResult | None = None) -> Execution:
    return Execution(id=f"e-{node}-{attempt}-{state.value}", job_id="j", node_id=node, requester="r", state=state,
                     attempt=attempt, error=error, retryable=retryable, result=result, created_at=0, updated_at=0)


def test_one_live_bid_per_node_per_job_and_one_execution_per_attempt():
    assert bid_refusal([], "a", 0) is None
    assert "already runs" in bid_refusal([ex("a", ExecutionState.BIDDING)], "a", 0)
    assert "already runs" in bid_refusal([ex("a", ExecutionState.COMPLETED)], "a", 1)
    assert "this attempt" in bid_refusal([ex("a", ExecutionState.REJECTED)], "a", 0)
    assert bid_refusal([ex("a", ExecutionState.REJECTED)], "a", 1) is None  # a new attempt: may bid again
    assert bid_refusal([ex("a", ExecutionState.BIDDING)], "b", 0) is None


def test_a_node_that_reported_an_error_has_had_its_turn():
    assert "error" in bid_refusal([ex("a", ExecutionState.FAILED, error="boom")], "a", 1)
    once = [ex("a", ExecutionState.FAILED, 0, error="lost", retryable=True)]
    assert bid_refusal(once, "a", 1) is None  # a restarted node may come back once
    twice = [*once, ex("a", ExecutionState.FAILED, 1, error="lost", retryable=True)]
    assert "2 times" in bid_refusal(twice, "a", 2)
    silent = [ex("a", ExecutionState.FAILED, i, retryable=True) for i in range(3)]  # the requester's verdict
    assert bid_refusal(silent, "a", 3) is None


def test_an_error_is_believed_only_when_confirmed():
    assert not error_confirmed({"a"}, {"a", "b"}, confidence=0)
    assert error_confirmed({"a", "b"}, {"a", "b", "c"}, confidence=0)
    assert not error_confirmed({"a", "b"}, {"a", "b", "c", "d"}, confidence=3)
    assert error_confirmed({"a"}, {"a"}, confidence=3)  # every node able to run it said so
    assert error_confirmed({"a"}, set(), confidence=0)  # nobody else could try
    executions = [ex("a", ExecutionState.FAILED, error="x"), ex("b", ExecutionState.FAILED, error="y", retryable=True),
                  ex("c", ExecutionState.FAILED)]
    assert error_reporters(executions) == {"a"}


def test_only_two_agreeing_nodes_or_our_own_make_a_result_others_may_be_served():
    good, bad = RunResult(stdout="42"), RunResult(stdout="43")
    executions = [ex("a", ExecutionState.COMPLETED, result=good), ex("b", ExecutionState.COMPLETED, result=bad),
                  ex("c", ExecutionState.REJECTED, result=good)]
    assert agreeing_nodes(executions, good) == {"a"}
    assert not corroborated({"a"}, own_node="me", pinned=False)
    assert corroborated({"a"}, own_node="a", pinned=False)
    assert corroborated({"a", "b"}, own_node="me", pinned=False)
    # nodes its submitter chose (a selector) may be its own: two of them agreeing is still its word
    assert not corroborated({"a", "b"}, own_node="me", pinned=True)
    assert corroborated({"a", "b"}, own_node="a", pinned=True)


def test_nodes_left_are_the_able_ones_not_done_with_the_job():
    executions = [ex("a", ExecutionState.ACCEPTED), ex("b", ExecutionState.FAILED, error="x")]
    assert nodes_left(executions, {"a", "b", "c"}) == {"a", "c"}
    assert nodes_left(executions, {"b"}) == set()


def test_a_node_busy_with_the_job_or_lost_once_is_not_done_with_it():
    """Seen in CI: a restarted requester lost one node's execution to silence while the other nodes
    ran theirs; the job must wait for a slot, not fail for want of nodes."""
    executions = [ex("a", ExecutionState.ACCEPTED), ex("b", ExecutionState.COMPLETED),
                  ex("c", ExecutionState.FAILED)]  # lost to silence: no error reported
    assert nodes_left(executions, {"a", "b", "c"}) == {"a", "b", "c"}
    twice = [ex("c", ExecutionState.FAILED, error="x", retryable=True),
             ex("c", ExecutionState.FAILED, error="y", retryable=True)]
    assert nodes_left(twice, {"c"}) == set()


