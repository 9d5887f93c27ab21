"""The rules deciding which parts of a sweep claim count, and when an error fails an index."""

from __future__ import annotations

from jobs import InputSpec, JobSpec, NoopEngine, RunResult
from jobs.messages import Claim, IndexResult
from jobs.spec import SEEN_WHILE_RUNNING
from requester.sweep_rules import (
    CANNOT_RUN,
    ERROR_PATIENCE,
    TIMED_OUT,
    ClaimView,
    check_claim,
    contradicted,
    error_confirmed,
    may_grant,
    report,
)


def done(i: int) -> IndexResult:
    return IndexResult(index=i, result=RunResult(exit_code=0, stdout=f"out {i}"))


def claim(*results: IndexResult, released: list[int] = (), claim_id: str = "c-1") -> Claim:
    return Claim(sweep_id="s-1", claim_id=claim_id, want=4, results=list(results), released=list(released))


def test_results_for_indexes_the_claim_holds_count():
    check = check_claim("a", claim(done(3), done(4)), ClaimView(holder="a", held={3, 4, 5}))
    assert [r.index for r in check.results] == [3, 4]
    assert check.refused == [] and not check.against_sender and check.reason() == ""


def test_a_result_for_an_index_never_granted_to_the_claim_is_refused_and_named():
    check = check_claim("a", claim(done(3), done(7), done(8), done(20)), ClaimView(holder="a", held={3}))
    assert [r.index for r in check.results] == [3]
    assert check.refused == [7, 8, 20] and check.against_sender
    assert check.reason() == "refused 3 results or releases for indexes not granted to this claim: 7-8, 20"


def test_a_new_claims_first_message_carries_no_results():
    check = check_claim("rogue", claim(done(0)), ClaimView())
    assert check.results == [] and check.refused == [0] and check.against_sender
    assert not check_claim("a", claim(), ClaimView()).against_sender  # a plain new claim is fine


def test_a_new_claim_adopts_what_its_node_held_before_the_requester_restarted():
    check = check_claim("a", claim(done(5)), ClaimView(held={5, 6}))
    assert [r.index for r in check.results] == [5] and not check.against_sender


def test_another_nodes_claim_id_is_refused_whole():
    check = check_claim("rogue", claim(done(3)), ClaimView(holder="a", held={3}))
    assert check.results == [] and check.whole and check.refused == [3] and check.against_sender
    lapsed = check_claim("rogue", claim(done(3)), ClaimView(holder="a", expired=True))
    assert lapsed.results == [] and lapsed.against_sender


def test_a_lapsed_claims_late_results_are_refused_but_not_held_against_its_node():
    check = check_claim("a", claim(done(3)), ClaimView(holder="a", expired=True))
    assert check.results == [] and check.refused == [3] and "lease lapsed" in check.whole
    assert not check.against_sender


def test_the_same_index_twice_in_one_message_counts_once():
    check = check_claim("a", claim(done(3), done(3)), ClaimView(holder="a", held={3}))
    assert [r.index for r in check.results] == [3] and check.refused == [3] and check.against_sender


def test_a_batch_re_sent_after_a_lost_reply_is_ignored_not_refused():
    check = check_claim("a", claim(done(3), done(4)), ClaimView(holder="a", held={4}, reported={3}))
    assert [r.index for r in check.results] == [4] and check.repeated == 1
    assert check.refused == [] and not check.against_sender


def test_only_held_indexes_can_be_given_back():
    check = check_claim("a", claim(done(1), released=[1, 2, 9]), ClaimView(holder="a", held={1, 2}))
    assert check.released == [2] and check.refused == [1, 9] and check.against_sender  # 1 was just reported


def test_a_refusals_reason_stays_short_whatever_the_message_holds():
    check = check_claim("rogue", claim(released=list(range(0, 200_000, 2))), ClaimView(holder="rogue"))
    assert len(check.refused) == 100_000 and len(check.reason()) < 300
    assert check.reason().endswith("and 99990 more ranges")


def test_one_nodes_error_does_not_fail_an_index_another_nodes_confirms_it():
    able = {"a", "b", "c"}
    assert not error_confirmed({"a": CANNOT_RUN}, able, 0)
    assert error_confirmed({"a": CANNOT_RUN, "b": CANNOT_RUN}, able, 0)
    assert not error_confirmed({"a": CANNOT_RUN, "b": None}, able, 0)  # a retryable error speaks of its node only


def test_a_verified_sweeps_index_fails_on_as_many_nodes_errors_as_its_results_need():
    """As a job's: two liars failed an index of a confidence-3 sweep that three honest nodes would have run."""
    able = {"a", "b", "c", "d"}
    assert not error_confirmed({"a": CANNOT_RUN, "b": CANNOT_RUN}, able, 3)
    assert error_confirmed({"a": CANNOT_RUN, "b": CANNOT_RUN, "c": CANNOT_RUN}, able, 3)
    assert error_confirmed({"a": CANNOT_RUN, "b": CANNOT_RUN}, {"a", "b"}, 3)  # every able node said so


def test_the_only_able_node_confirms_its_own_error():
    assert error_confirmed({"a": CANNOT_RUN}, {"a"}, 0)
    assert not error_confirmed({"rogue": CANNOT_RUN}, {"a"}, 0)  # a node we do not count as able does not
    assert not error_confirmed({"a": None}, {"a"}, 0)
    assert not error_confirmed({"a": CANNOT_RUN}, set(), 0)


def test_an_index_that_errored_on_a_node_goes_to_another_while_one_is_left():
    assert may_grant("b", {"a"}, {"a", "b"}, 0.0)
    assert not may_grant("a", {"a"}, {"a", "b"}, 0.0)
    assert may_grant("a", {"a", "b"}, {"a", "b"}, 0.0)  # everyone tried: any may try again
    assert may_grant("a", {"a"}, {"a"}, 0.0)


def test_an_able_node_that_never_claims_holds_an_errored_index_back_only_so_long():
    assert not may_grant("a", {"a"}, {"a", "silent"}, ERROR_PATIENCE - 1)
    assert may_grant("a", {"a"}, {"a", "silent"}, ERROR_PATIENCE)


EXACT = JobSpec(engine=NoopEngine())  # the same outcome on every node
FROM_A_URL = JobSpec(engine=NoopEngine(), inputs=[InputSpec(source="https://example.com/frame1", path="/data")])


def test_errors_contradicted_by_another_nodes_result():
    assert contradicted({"rogue": CANNOT_RUN, "a": CANNOT_RUN}, "a", EXACT) == ["rogue"]
    assert contradicted({}, "a", EXACT) == []


def test_a_retryable_error_is_not_contradicted_by_another_nodes_result():
    # "retry elsewhere" (the node ran out of disk, lost its runner) says nothing false about the index
    assert contradicted({"flaky": None, "rogue": CANNOT_RUN}, "a", EXACT) == ["rogue"]


def test_a_slow_nodes_timeout_is_not_contradicted_by_a_faster_nodes_result():
    """A node's speed is its own, as for a job's errors (``trust.proven_wrong``): an honest slow node that
    timed out was held to account once a faster one ran the index."""
    assert contradicted({"slow": TIMED_OUT, "rogue": CANNOT_RUN}, "a", EXACT) == ["rogue"]


def test_an_error_where_nodes_may_see_different_worlds_is_not_contradicted():
    """An input URL that answered 403 to one node and 200 to another: the first node did not lie."""
    assert contradicted({"refused": CANNOT_RUN}, "a", FROM_A_URL) == []


def test_what_a_node_re_sends_across_a_requester_restart_is_refused_without_counting_against_it():
    """The batch a requester wrote and could not answer before it died comes again: its indexes have ended."""
    check = check_claim("a", claim(done(3), done(4), released=[7]), ClaimView(held={4}, forgiven=True))
    assert [r.index for r in check.results] == [4] and check.refused == [3, 7] and not check.against_sender


def test_what_is_kept_of_an_index_error_is_its_kind_never_its_text():
    """A node may report 100,000 indexes with an error of a megabyte each: all of it was kept until they ended."""
    assert report("x" * 1_000_000, False, EXACT) == CANNOT_RUN
    assert report(EXACT.timed_out(), False, EXACT) == TIMED_OUT
    assert report(f"disk limit exceeded: wrote more than 1 bytes{SEEN_WHILE_RUNNING}", False, EXACT) == TIMED_OUT
    assert report("disk full", True, EXACT) is None
