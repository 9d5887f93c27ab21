"""A requester that takes a node's room and never uses it, or fills its backlog, driven against the compute
machine alone: what it gets is nothing, and the honest requester's job is served."""

from __future__ import annotations

from compute.backlog import Backlog
from compute.machine import MAX_WAITING_SWEEPS, PENDING_BID_GRACE, SILENT_COOLDOWN, Changes
from jobs import ExecutionState
from jobs.messages import Decision, Reply, SweepAnnounce
from jobs.sweep import SweepSpec
from tests.unit.test_compute_machine import REQ, announce, bid_on, machine

ROGUE = "rogue"


def test_a_requester_answering_every_bid_pending_loses_the_node_to_an_honest_job():
    """It answered "pending" and never decided: each bid held the node's room for its min_bids wait, then
    expired unpenalised, and the re-announced job was bid on again, first in the backlog's turn: an honest
    job waited an hour, the node running nothing."""
    m = machine(cpu=1)
    wait = {"deadlines": {"min_bids": 110}}
    first = bid_on(m, announce("j-rogue-0", requester=ROGUE, spec=wait), now=100.0)
    for i in range(1, 40):
        m.announce(ROGUE, announce(f"j-rogue-{i}", requester=ROGUE, spec=wait), 100.0)
    ((_, hold),) = m.bid_answered(first.id, Reply(verdict="pending"), 100.0).expire
    assert hold == 110 + PENDING_BID_GRACE
    m.announce(REQ, announce("j-honest"), 103.0)  # the node is full: it waits behind the rogue's

    expired = m.expire_pending(first.id, hold, 100.0 + hold)
    assert expired.released
    fitting = m.backlog_fitting(100.0 + hold)
    assert [a.job_id for a in fitting] == ["j-honest"]  # none of the rogue's
    ((honest, _),) = m.bid_from_backlog(fitting, 100.0 + hold).bids
    assert honest.requester == REQ
    m.accept(honest.id, {}, 100.0 + hold)
    # re-announced with the next attempt, the rogue's job gets no bid for a while, room or not
    m.end(honest.id, ExecutionState.COMPLETED, "done", 100.0 + hold + 1)
    again = announce("j-rogue-0", requester=ROGUE, spec=wait, attempt=2)
    assert m.announce(ROGUE, again, 100.0 + hold + 2) == (False, Changes()) and again.key in m.backlog
    assert m.backlog_fitting(100.0 + hold + 2) == [] and m.capacity.free.cpu == 1
    assert {a.requester for a in m.backlog_fitting(100.0 + hold + SILENT_COOLDOWN + 1)} == {ROGUE}  # a while only


def test_a_pending_answer_does_not_end_a_requesters_silence():
    """Bids sent before its first pending bid expired, answered "pending" late, kept it bid on."""
    m = machine(cpu=2)
    first, second = (bid_on(m, announce(f"j-{i}", requester=ROGUE), now=100.0) for i in range(2))
    ((_, hold),) = m.bid_answered(first.id, Reply(verdict="pending"), 100.0).expire
    m.expire_pending(first.id, hold, 100.0 + hold)
    m.bid_answered(second.id, Reply(verdict="pending"), 100.0 + hold)
    assert m.announce(ROGUE, announce("j-2", requester=ROGUE), 101.0 + hold) == (False, Changes())  # room, but silent


def test_a_requester_whose_min_bids_wait_outlasts_the_nodes_pending_timeout_is_not_held_silent():
    """The node cut the wait the job promised (300 s of min_bids) to its own 120 s: an honest requester still
    waiting for bids has broken no promise, and its next job is bid on."""
    m = machine(cpu=2)
    wait = {"deadlines": {"min_bids": 300}}
    ex = bid_on(m, announce("j-0", spec=wait))
    ((_, hold),) = m.bid_answered(ex.id, Reply(verdict="pending"), 100.0).expire
    assert hold == m.pending_bid_timeout < 300
    assert m.expire_pending(ex.id, hold, 100.0 + hold).released
    bid, changes = m.announce(REQ, announce("j-1", spec=wait), 101.0 + hold)
    assert bid and changes.bids


def test_an_honest_requester_waiting_for_min_bids_then_deciding_is_not_held_silent():
    m = machine(cpu=2)
    wait = {"deadlines": {"min_bids": 5}}
    lost, won = (bid_on(m, announce(f"j-{i}", spec=wait)) for i in range(2))
    for ex in (lost, won):
        assert m.bid_answered(ex.id, Reply(verdict="pending"), 100.0).expire == [(ex.id, 5 + PENDING_BID_GRACE)]
    m.handle(REQ, Decision(job_id=lost.job_id, execution_id=lost.id, accepted=False), 105.5)
    m.handle(REQ, Decision(job_id=won.job_id, execution_id=won.id, accepted=True), 105.5)
    assert m.expire_pending(lost.id, 15.0, 115.0).writes == [] and m.expire_pending(won.id, 15.0, 115.0).writes == []
    assert m.live[won.id].state is ExecutionState.ACCEPTED
    assert m.announce(REQ, announce("j-next"), 116.0)[0]  # bid on at once


def test_a_requester_that_won_the_node_once_no_longer_comes_first_once_it_keeps_its_bids_undecided():
    """One cheap job accepted put a requester's jobs first in every turn of the backlog, and among those whose
    bids we won, the one with the oldest entry came first: one that re-announced jobs it held undecided did."""
    m = machine(cpu=1)
    for requester, at in ((ROGUE, 90.0), ("carol", 99.0), (REQ, 100.0)):
        ex = bid_on(m, announce(f"j-{requester}", requester=requester), now=at)
        m.accept(ex.id, {}, at)
        m.end(ex.id, ExecutionState.COMPLETED, "done", at)
    held = bid_on(m, announce("j-held", requester=ROGUE, spec={"deadlines": {"min_bids": 5}}), now=101.0)
    m.bid_answered(held.id, Reply(verdict="pending"), 101.0)
    for requester in (ROGUE, REQ, "carol", "dave"):  # the rogue's entry is the oldest, then REQ's
        m.announce(requester, announce(f"j-{requester}-2", requester=requester), 102.0)
    m.expire_pending(held.id, 15.0, 116.0)
    # in each turn: those whose bids we won, the one we bid for longest ago first; then the others
    assert [a.requester for a in m.backlog_fitting(116.0)] == ["carol", REQ, "dave"]
    cooled = 116.0 + SILENT_COOLDOWN + 1
    assert [a.requester for a in m.backlog_fitting(cooled)] == ["carol", REQ, "dave", ROGUE]


def test_one_requester_filling_the_backlog_leaves_room_for_another_requesters_job():
    """10,000 offers of one requester filled a busy node's backlog: an honest job announced meanwhile was
    passed over, and when room came only the first requester's jobs were bid on."""
    m = machine(cpu=1)
    busy = bid_on(m, announce("j-busy"), now=100.0)
    for i in range(m.backlog_size):
        m.announce(ROGUE, announce(f"j-r{i}", requester=ROGUE), 101.0)
    assert len(m.backlog) == m.backlog_size
    m.announce("alice", announce("j-alice", requester="alice"), 102.0)
    assert ("alice", "j-alice") in m.backlog and len(m.backlog) == m.backlog_size
    assert (ROGUE, f"j-r{m.backlog_size - 1}") not in m.backlog  # its newest made room
    m.announce(ROGUE, announce(f"j-r{m.backlog_size - 1}", requester=ROGUE), 103.0)  # and takes none back
    assert ("alice", "j-alice") in m.backlog and len(m.backlog) == m.backlog_size
    m.end(busy.id, ExecutionState.REJECTED, "bid rejected", 104.0)
    assert "alice" in [a.requester for a in m.backlog_fitting(104.0)[:2]]


def test_one_requester_filling_the_backlogs_bytes_leaves_room_for_another_requesters_job():
    backlog: Backlog[str] = Backlog(max_entries=100, max_bytes=1000)
    for i in range(10):
        assert backlog.offer((ROGUE, f"j-{i}"), "big", 100)
    assert not backlog.offer((ROGUE, "j-10"), "big", 100)  # full, and it is the one holding most
    assert backlog.offer(("alice", "j-a"), "small", 10)
    assert list(backlog)[-1] == ("alice", "j-a") and (ROGUE, "j-9") not in backlog
    assert backlog.bytes == 910 and len(backlog) == 10
    assert not backlog.offer((ROGUE, "j-9"), "big", 100)  # it holds more than alice would: refused


def test_one_requester_filling_the_sweeps_waiting_for_room_leaves_room_for_another_requesters_sweep():
    m = machine(cpu=1)
    bid_on(m, announce("j-busy"), now=100.0)
    spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "resources": {"cpu": 1}},
                                     "grid": {"i": ["0", "1"]}})
    for i in range(MAX_WAITING_SWEEPS):
        assert m.announce_sweep(ROGUE, SweepAnnounce(sweep_id=f"s-{i}", spec=spec, requester=ROGUE), 101.0) is None
    assert m.announce_sweep("alice", SweepAnnounce(sweep_id="s-a", spec=spec, requester="alice"), 102.0) is None
    assert ("alice", "s-a") in m._waiting and len(m._waiting) == MAX_WAITING_SWEEPS
    assert (ROGUE, f"s-{MAX_WAITING_SWEEPS - 1}") not in m._waiting
