"""A node's sweep claims, decided alone: no trio, no store, no network."""

from __future__ import annotations

from compute.capacity import CapacityTracker
from compute.claims import BATCH_BYTES, REPORT_INTERVAL, Claim
from compute.machine import SILENT_COOLDOWN, WAITING_TTL, Changes, ComputeMachine
from jobs import Resources, RunResult
from jobs.messages import Cancel, IndexResult, Reply, SweepAnnounce
from jobs.sweep import SweepSpec

REQ = "req"


def sweep(sweep_id: str = "s-1", pending: int = 100, cpu: float = 1) -> SweepAnnounce:
    spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "resources": {"cpu": cpu}},
                                     "grid": {"i": [str(i) for i in range(100)]}})
    return SweepAnnounce(sweep_id=sweep_id, spec=spec, requester=REQ, pending=pending)


def book(cpu: float = 4, parallel: int | None = None, engines: tuple[str, ...] = ("noop",)) -> ComputeMachine:
    return ComputeMachine(node_id="node", capacity=CapacityTracker(Resources(cpu=cpu, memory="8GiB")),
                          engines=engines, parallel=lambda engine: parallel)


def claim_of(slots: int = 2) -> Claim:
    return Claim(ann=sweep(), claim_id="c-1", slots=[f"c-1/{i}" for i in range(slots)])


def test_a_claim_takes_one_slot_per_run_that_fits_no_more_than_the_engine_or_the_sweep_wants():
    assert len(book(cpu=4).announce_sweep(REQ, sweep(cpu=1), 0.0).slots) == 4
    assert len(book(cpu=4, parallel=2).announce_sweep(REQ, sweep(cpu=1), 0.0).slots) == 2
    assert len(book(cpu=4).announce_sweep(REQ, sweep(pending=1, cpu=1), 0.0).slots) == 1


def test_a_sweep_this_node_can_never_run_or_that_is_relayed_is_not_claimed():
    assert book(engines=()).announce_sweep(REQ, sweep(), 0.0) is None
    assert book().announce_sweep("mallory", sweep(), 0.0) is None


def test_a_sweep_with_no_room_is_claimed_once_capacity_frees():
    b = book(cpu=1)
    first = b.announce_sweep(REQ, sweep("s-1"), 0.0)
    assert b.announce_sweep(REQ, sweep("s-2"), 0.0) is None  # no room: waits
    assert b.announce_sweep(REQ, sweep("s-1"), 0.0) is None  # our claim asks for more by itself
    assert b.retry_waiting(1.0) == []
    b.finish_claim(first)
    (second,) = b.retry_waiting(2.0)
    assert second.ann.sweep_id == "s-2" and b.capacity.free.cpu == 0
    assert b.retry_waiting(3.0) == []  # claimed once


def test_a_sweep_waiting_for_room_is_forgotten_once_it_is_no_longer_announced():
    b = book(cpu=1)
    first = b.announce_sweep(REQ, sweep("s-1"), 0.0)
    b.announce_sweep(REQ, sweep("s-2"), 0.0)
    b.finish_claim(first)
    assert b.retry_waiting(WAITING_TTL + 1) == []
    assert b.capacity.statistics().reservations == 0


def test_a_requester_that_left_a_new_claim_unanswered_gets_no_claims_for_a_while():
    """A sweep's announcer chooses its silence (up to a day): a claim it never answered held the node's
    slots for an hour. Unanswered, a new claim gives up like a bid (the service), and no sweep of that
    requester is claimed for the cooldown, nor one waiting for room."""
    b = book(cpu=1)
    first = b.announce_sweep(REQ, sweep("s-1"), 0.0)
    b.announce_sweep(REQ, sweep("s-2"), 0.0)  # no room: waits
    b.finish_claim(first)
    b.requester_silent(REQ, 10.0)
    assert b.announce_sweep(REQ, sweep("s-1"), 11.0) is None and b.retry_waiting(11.0) == []
    assert b.capacity.statistics().reservations == 0
    assert b.announce_sweep(REQ, sweep("s-1"), 10.0 + SILENT_COOLDOWN + 1) is not None


def test_a_claim_asks_for_enough_to_keep_every_slot_busy_for_two_report_intervals():
    c = claim_of(slots=2)
    assert c.want(0.0) == 2
    for i in range(40):  # 40 indexes finished in the last second
        c.finished(IndexResult(index=i, result=RunResult()), 0.5)
    assert c.want(1.0) == 2 + int(40 * 2 * REPORT_INTERVAL)
    c.queue.extend(range(5))
    assert c.want(1.0) == 2 + 20 - 5
    assert c.want(3.0) == 0  # the rate has aged out; the queue covers the slots


def test_a_dry_queue_is_reported_at_once_and_otherwise_the_claim_waits_for_its_heartbeat():
    c = claim_of()
    assert c.next_report(0.0, heartbeat=10.0) == 0 and c.want(0.0) == 2  # nothing queued: ask now
    c.take_batch(0.0)
    c.answered(Reply(verdict="accepted", ranges=[(0, 2)]), 2, 0.1)
    assert c.next_report(0.2, heartbeat=10.0) == 10.0 - 0.2
    c.finished(IndexResult(index=0, result=RunResult()), 0.2)
    assert abs(c.next_report(0.2, heartbeat=10.0) - (REPORT_INTERVAL - 0.2)) < 1e-9
    assert c.next_report(0.3, heartbeat=10.0) == 0  # results wait at most one report interval


def test_a_claim_is_over_when_the_requester_has_nothing_left_and_everything_is_reported():
    c = claim_of()
    c.answered(Reply(verdict="accepted", ranges=[]), 2, 0.0)
    assert c.exhausted and c.next_report(0.0, heartbeat=10.0) is None
    c.finished(IndexResult(index=0, result=RunResult()), 0.0)
    assert c.next_report(0.0, heartbeat=10.0) is not None  # one result still to report


def test_a_report_carries_at_most_a_batch_and_keeps_the_rest_and_unsent_results_for_the_next():
    c = claim_of()
    big = "x" * (BATCH_BYTES // 2)
    for i in range(3):
        c.finished(IndexResult(index=i, result=RunResult(stdout=big)), 0.0)
    batch = c.take_batch(1.0)
    assert [r.index for r in batch] == [0] and c.last_sent == 1.0
    c.unsent(batch)
    assert [r.index for r in c.results] == [0, 1, 2]


def test_granted_indexes_run_in_order_and_a_rejection_ends_the_claim_counting_what_it_stopped():
    c = claim_of()
    assert c.answered(Reply(verdict="accepted", ranges=[(3, 5)]), 2, 0.0) == [3, 4]
    index, ex = c.start_next("node", 1.0)
    assert index == 3 and ex.id == "c-1-3" and ex.job_id == "s-1" and ex.spec.env["SHOAL_INDEX"] == "3"
    assert c.answered(Reply(verdict="rejected", reason="sweep done"), 1, 2.0) is None
    assert c.stopped == 1


def test_a_claim_runs_only_what_it_asked_for_inside_the_sweep_whatever_its_requester_grants():
    """An index past the sweep's end once crashed the node (its spec could not be built), and a grant of
    a billion indexes exhausted its memory."""
    c = claim_of()
    count = c.ann.spec.count
    assert c.answered(Reply(verdict="accepted", ranges=[(count - 1, count + 5)]), 4, 0.0) == [count - 1]
    assert c.answered(Reply(verdict="accepted", ranges=[(0, 10**12)]), 3, 0.0) == [0, 1, 2]
    assert c.answered(Reply(verdict="accepted", ranges=[(-5, 2), (5, 1), (7, 9)]), 3, 0.0) == [0, 1, 7]
    assert c.answered(Reply(verdict="accepted", ranges=[(0, 2)]), 0, 0.0) == []  # a heartbeat asks for none
    assert list(c.queue) == [count - 1, 0, 1, 2, 0, 1, 7]


def test_only_the_sweeps_requester_may_end_a_claim_and_a_late_cancel_still_gets_its_answer():
    b = book()
    c = b.announce_sweep(REQ, sweep(), 0.0)
    c.answered(Reply(verdict="accepted", ranges=[(0, 1)]), 4, 0.0)
    c.start_next("node", 0.0)
    cancel = Cancel(job_id="s-1", execution_id=c.claim_id)
    assert b.cancel_claim("mallory", cancel) == (None, None)  # to another peer there is no such claim
    reply, changes = b.handle("mallory", cancel, 0.0)
    assert not reply.ok and reply.reason == "unknown or finished execution" and changes == Changes()
    assert b.claims[(REQ, "s-1")] is c and c.stopped == 0
    reply, stop = b.cancel_claim(REQ, cancel)
    assert reply.stopped == 1 and stop is c
    b.finish_claim(c)
    assert b.capacity.statistics().reservations == 0
    assert b.cancel_claim(REQ, cancel) == (Reply(stopped=1), None)
    assert b.cancel_claim("mallory", cancel) == (None, None)  # how it ended is the requester's to know
    assert b.cancel_claim(REQ, Cancel(job_id="s-9", execution_id="c-9")) == (None, None)
