"""Per-peer token buckets: a peer gets its burst, then its rate; others are untouched; memory is bounded."""

from __future__ import annotations

import pytest

from node.ratelimit import RateLimiter


class Clock:
    now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_peer_gets_its_burst_then_its_rate() -> None:
    clock = Clock()
    limiter = RateLimiter(10, 20, clock=clock)
    assert [limiter.allow("flooder") for _ in range(25)] == [True] * 20 + [False] * 5
    clock.now += 0.5  # refilled at 10/s: five more
    assert sum(limiter.allow("flooder") for _ in range(10)) == 5
    clock.now += 60  # never more than the burst, however long it waited
    assert sum(limiter.allow("flooder") for _ in range(100)) == 20
    stats = limiter.statistics()
    assert (stats.allowed, stats.refused, stats.tracked) == (45, 90, 1)


def test_one_peer_over_its_limit_does_not_limit_another() -> None:
    clock = Clock()
    limiter = RateLimiter(5, 5, clock=clock)
    for _ in range(100):
        limiter.allow("flooder")
    assert all(limiter.allow("honest") for _ in range(5))


def test_a_steady_peer_under_its_rate_is_never_refused() -> None:
    clock = Clock()
    limiter = RateLimiter(100, 200, clock=clock)
    for _ in range(10_000):  # 99 requests a second for 100 s
        clock.now += 1 / 99
        assert limiter.allow("honest")


def test_tracked_peers_are_bounded_forgetting_the_least_recently_seen() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock, max_keys=3)
    for peer in ("a", "b", "c"):
        assert limiter.allow(peer)
    assert not limiter.allow("a")  # a is now the most recently seen
    assert limiter.allow("d")  # b is forgotten
    assert limiter.statistics().tracked == 3
    assert not limiter.allow("a") and not limiter.allow("c") and not limiter.allow("d")
    assert limiter.allow("b")  # forgotten: starts again with a full bucket


def test_a_clock_that_goes_back_adds_no_tokens() -> None:
    clock = Clock()
    limiter = RateLimiter(1, 1, clock=clock)
    assert limiter.allow("p")
    clock.now -= 1000
    assert not limiter.allow("p")


@pytest.mark.parametrize("rate, burst, keys", [(0, 1, 1), (-1, 1, 1), (1, 0.5, 1), (1, 1, 0)])
def test_nonsense_limits_are_refused(rate: float, burst: float, keys: int) -> None:
    with pytest.raises(ValueError):
        RateLimiter(rate, burst, max_keys=keys)
