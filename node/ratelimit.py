"""Per-peer token buckets: how many requests a peer may make per second, with a burst.

Pure (the clock is injected) and bounded: it tracks at most ``max_keys`` peers and forgets the
least recently seen one beyond that (a forgotten peer starts again with a full bucket).
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass

MAX_TRACKED = 10_000
"""Peers whose buckets are kept; each costs about 200 bytes."""


@dataclass(frozen=True)
class RateLimiterStatistics:
    tracked: int
    allowed: int
    refused: int


class RateLimiter:
    """``allow(key)`` is True while ``key`` stays under ``rate`` per second on average, with up to
    ``burst`` at once (a bucket of ``burst`` tokens refilled at ``rate`` per second)."""

    def __init__(self, rate: float, burst: float, *, clock: Callable[[], float] = time.monotonic,
                 max_keys: int = MAX_TRACKED) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        if max_keys < 1:
            raise ValueError("max_keys must be positive")
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._max_keys = max_keys
        self._buckets: OrderedDict[Hashable, tuple[float, float]] = OrderedDict()  # key -> (tokens, when)
        self.allowed = 0
        self.refused = 0

    def allow(self, key: Hashable) -> bool:
        now = self._clock()
        bucket = self._buckets.pop(key, None)
        if bucket is None:
            tokens = self.burst
        else:
            tokens, then = bucket
            tokens = min(self.burst, tokens + max(0.0, now - then) * self.rate)
        ok = tokens >= 1.0
        if ok:
            tokens -= 1.0
            self.allowed += 1
        else:
            self.refused += 1
        self._buckets[key] = (tokens, now)  # most recently seen last
        if len(self._buckets) > self._max_keys:
            self._buckets.popitem(last=False)
        return ok

    def statistics(self) -> RateLimiterStatistics:
        return RateLimiterStatistics(tracked=len(self._buckets), allowed=self.allowed, refused=self.refused)


WARN_EVERY = 10.0  # seconds between two warnings of one kind: a peer's flood of refusals must not flood the log


class SpacedWarnings:
    """Log a warning of each kind at most once every ``every`` seconds, saying how many were left out."""

    def __init__(self, logger: logging.Logger, *, every: float = WARN_EVERY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.logger = logger
        self.every = every
        self.clock = clock
        self._last: dict[str, tuple[float, int]] = {}  # kind -> (when last logged, left out since)

    def warn(self, kind: str, message: str, *args: object) -> None:
        now = self.clock()
        at, left_out = self._last.get(kind, (-self.every, 0))
        if now - at < self.every:
            self._last[kind] = (at, left_out + 1)
            return
        self._last[kind] = (now, 0)
        if left_out:
            message += f" ({left_out} more like it in the last {now - at:.0f} s)"
        self.logger.warning(message, *args)
