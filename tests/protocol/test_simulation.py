"""#20 item 6 at a size CI affords: the real roles on simulated networks with delays and losses
(``devstack/bench_sim.py`` runs the same code on 100 and 1,000 nodes). A job's messages are bounded by
its concurrency, not by the number of nodes, and lost messages delay jobs but lose none."""

from __future__ import annotations

from devstack.bench_sim import simulate
from tests.memnet import Links


async def test_messages_per_job_do_not_grow_with_the_number_of_nodes(tmp_path, autojump_clock) -> None:
    small = await simulate(8, jobs=30, concurrency=2, rate=20, links=Links(), base=tmp_path / "small")
    large = await simulate(64, jobs=30, concurrency=2, rate=20, links=Links(), base=tmp_path / "large")
    assert small["completed"] == large["completed"] == 30
    assert small["known_to_requester"] == 8 and large["known_to_requester"] == 64
    # announce to concurrency + 1 nodes, their bids, two results, a few liveness queries
    assert large["requests_per_job"] <= 3 * 2 + 4
    assert large["requests_per_job"] <= small["requests_per_job"] + 0.5
    assert large["gossip_copies_per_job"] == 0  # no job was gossiped to all 64
    assert 10 < large["accepted_ms"]["p50"] < 200  # a few network delays of 5-50 ms each


async def test_with_lost_messages_every_job_still_completes(tmp_path, autojump_clock) -> None:
    report = await simulate(16, jobs=40, concurrency=1, rate=20, links=Links(loss=0.05), base=tmp_path)
    assert report["completed"] == 40
    assert report["accepted_ms"]["p99"] > report["accepted_ms"]["p50"]  # some waited for a timeout or a repeat
