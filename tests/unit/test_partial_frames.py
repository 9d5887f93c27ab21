"""The budget of unfinished request frames: room is made by resetting the frames parked longest."""

from __future__ import annotations

import trio

from node.net.links import PARTIAL_FRAME_CHARGE, PartialFrames


async def test_a_frame_past_the_budget_resets_older_frames_oldest_first_and_never_younger_ones() -> None:
    frames = PartialFrames(limit=4 * PARTIAL_FRAME_CHARGE)
    scopes = {name: trio.CancelScope() for name in "abcde"}
    for at, name in enumerate("abc"):  # a, b, c parked in that order; two begin at once (a tie is no error)
        assert frames.hold(name, PARTIAL_FRAME_CHARGE, float(min(at, 1)), name, scopes[name])
    assert frames.hold("d", 2 * PARTIAL_FRAME_CHARGE, 5.0, "d", scopes["d"])  # a frame in transit: a goes
    assert [n for n, s in scopes.items() if s.cancel_called] == ["a"]
    assert frames.held == 4 * PARTIAL_FRAME_CHARGE
    assert not frames.hold("b", 3 * PARTIAL_FRAME_CHARGE, 1.0, "b", scopes["b"])  # only younger ones could make room
    assert [n for n, s in scopes.items() if s.cancel_called] == ["a"]
    frames.forget("d")
    assert frames.held == PARTIAL_FRAME_CHARGE  # c's; b's refused growth holds nothing


async def test_each_unfinished_frame_counts_for_at_least_the_least_charge() -> None:
    """8,000 parked one-byte frames made each byte of growth sort them all (7 ms a byte): at most 1,024 are held."""
    frames = PartialFrames(limit=64 << 20)
    scopes = [trio.CancelScope() for _ in range(8000)]
    for i, scope in enumerate(scopes):
        assert frames.hold(i, 1, float(i), "p", scope)  # each younger one pushes out the oldest
    assert sum(not s.cancel_called for s in scopes) == (64 << 20) // PARTIAL_FRAME_CHARGE == 1024
    assert frames.held == 64 << 20
