"""A sweep claim gives back the slots its requester left idle: no trio, no store, no network."""

from __future__ import annotations

from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from jobs import Resources, RunResult
from jobs.messages import IndexResult, Reply, SweepAnnounce
from jobs.sweep import SweepSpec

REQ = "req"


def book(cpu: float = 4, parallel: int | None = None) -> ComputeMachine:
    return ComputeMachine(node_id="node", capacity=CapacityTracker(Resources(cpu=cpu, memory="8GiB")),
                          engines=["noop"], parallel=lambda engine: parallel)


def sweep(sweep_id: str = "s-1") -> SweepAnnounce:
    spec = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}, "resources": {"cpu": 1}},
                                     "grid": {"i": [str(i) for i in range(100)]}})
    return SweepAnnounce(sweep_id=sweep_id, spec=spec, requester=REQ, pending=100)


def test_a_claim_the_requester_ran_dry_keeps_only_the_slots_its_runs_need():
    """A requester granted one long index, then nothing: all four slots stayed reserved while that one ran."""
    b = book(cpu=4)
    claim = b.announce_sweep(REQ, sweep(), 0.0)
    assert len(claim.slots) == 4 and b.capacity.free.cpu == 0
    claim.answered(Reply(verdict="accepted", ranges=[(0, 1)]), claim.want(0.0), 0.0)
    assert claim.start_next("node", 0.0) is not None
    assert not b.release_idle(claim)  # it asked for more and got some: nothing is given back
    claim.answered(Reply(verdict="accepted", ranges=[]), claim.want(1.0), 1.0)
    assert claim.exhausted and b.release_idle(claim)
    assert len(claim.slots) == 1 and b.capacity.free.cpu == 3
    assert b.announce_sweep(REQ, sweep("s-2"), 1.0) is not None  # the room went to someone else
    assert not b.release_idle(claim) and b.capacity.free.cpu == 0


def test_later_grants_run_on_the_slots_still_held():
    b = book(cpu=4, parallel=4)
    claim = b.announce_sweep(REQ, sweep(), 0.0)
    claim.answered(Reply(verdict="accepted", ranges=[(0, 1)]), 4, 0.0)
    claim.start_next("node", 0.0)
    claim.answered(Reply(verdict="accepted", ranges=[]), 3, 1.0)
    b.release_idle(claim)
    assert b._room_for_runs("noop") == 3  # the engine's parallel limit came back too
    claim.answered(Reply(verdict="accepted", ranges=[(1, 3)]), 2, 2.0)  # the requester had more after all
    assert claim.start_next("node", 2.0) is None and list(claim.queue) == [1, 2]  # one slot, busy
    claim.finished(IndexResult(index=0, result=RunResult()), 3.0)
    assert claim.start_next("node", 3.0) is not None and claim.start_next("node", 3.0) is None


def test_capacity_comes_back_exactly_once():
    b = book(cpu=4)
    claim = b.announce_sweep(REQ, sweep(), 0.0)
    claim.answered(Reply(verdict="accepted", ranges=[(0, 2)]), 4, 0.0)
    claim.start_next("node", 0.0)
    claim.answered(Reply(verdict="accepted", ranges=[]), 2, 1.0)
    b.release_idle(claim)
    assert len(claim.slots) == 2  # one running, one queued
    claim.start_next("node", 1.0)
    for i in range(2):
        claim.finished(IndexResult(index=i, result=RunResult()), 2.0)
        b.release_idle(claim)
    assert len(claim.slots) == 1 and b.capacity.statistics().reservations == 1
    b.release_idle(claim)
    b.finish_claim(claim)
    stats = b.capacity.statistics()
    assert stats.reservations == 0 and stats.free == stats.total and stats.used.cpu == 0
