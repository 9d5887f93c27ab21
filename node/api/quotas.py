"""Per-client API quotas: jobs in flight, submissions per second, open event streams, working directories stored.

A client over a quota gets 429 with ``Retry-After`` (``Refusal``). The defaults are far above
what a person, the test suite or ``shoal bench`` (ten submitters sharing one client key) ask
for; ``shoal serve --quota-*`` sets them. Pure apart from the injected clock: the API asks,
this answers.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from jobs import format_bytes

MAX_TRACKED = 10_000  # submit buckets kept before full (idle) ones are dropped


@dataclass(frozen=True)
class QuotaLimits:
    jobs_in_flight: int = 10_000  # live jobs (and sweeps) of one client on this node
    submits_per_second: float = 1_000.0  # sustained rate of job and sweep submissions
    submit_burst: int = 2_000  # submissions at once after a quiet spell
    event_streams: int = 256  # open event streams (SSE) of one client
    context_bytes_per_hour: int = 2 * 1024**3  # working directories (POST /v1/contexts) one client stores, kept
    # for the node's retention: without a bound, a client able to submit could fill the node's disk


@dataclass(frozen=True)
class Refusal:
    quota: str  # "jobs_in_flight", "submits_per_second", "event_streams" or "context_bytes": the /metrics label
    message: str
    retry_after: int  # seconds


class Quotas:
    """The decisions, and how often each quota refused (``refused``, for /metrics)."""

    def __init__(self, limits: QuotaLimits | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or QuotaLimits()
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._streams: dict[str, int] = {}
        self._stored: dict[str, tuple[float, float]] = {}  # client -> (bytes it may still store, at)
        self.refused = {"jobs_in_flight": 0, "submits_per_second": 0, "event_streams": 0, "context_bytes": 0}

    def submit(self, client: str, in_flight: int) -> Refusal | None:
        """May ``client``, with ``in_flight`` live jobs, submit one more? Takes a token if so."""
        limits = self.limits
        if in_flight >= limits.jobs_in_flight:
            return self._refuse("jobs_in_flight", f"client {client} has {in_flight} jobs in flight on this node "
                                                  f"(at most {limits.jobs_in_flight}): wait for some to end", 5)
        now = self._clock()
        tokens, at = self._buckets.get(client, (float(limits.submit_burst), now))
        tokens = min(float(limits.submit_burst), tokens + (now - at) * limits.submits_per_second)
        if tokens < 1:
            wait = math.ceil((1 - tokens) / limits.submits_per_second)
            self._buckets[client] = (tokens, now)
            return self._refuse("submits_per_second", f"client {client} submits faster than "
                                f"{limits.submits_per_second:g} per second on this node", wait)
        if client not in self._buckets and len(self._buckets) >= MAX_TRACKED:
            self._forget_idle(now)
        self._buckets[client] = (tokens - 1, now)
        return None

    def store_context(self, client: str, size: int) -> Refusal | None:
        """May ``client`` store a working directory of ``size`` bytes? Takes them from its allowance if so,
        which refills at ``context_bytes_per_hour``, up to that much at once."""
        limit = self.limits.context_bytes_per_hour
        now = self._clock()
        allowance, at = self._stored.get(client, (float(limit), now))
        allowance = min(float(limit), allowance + (now - at) * limit / 3600)
        if size > allowance:
            self._stored[client] = (allowance, now)
            return self._refuse("context_bytes", f"client {client} stored more than {format_bytes(limit)} of "
                                f"working directories in the last hour on this node",
                                math.ceil((size - allowance) * 3600 / limit))
        if client not in self._stored and len(self._stored) >= MAX_TRACKED:
            self._stored = {c: (left, then) for c, (left, then) in self._stored.items()
                            if left + (now - then) * limit / 3600 < limit}  # full ones change no decision
        self._stored[client] = (allowance - size, now)
        return None

    def open_stream(self, client: str) -> Refusal | None:
        """Count a new event stream of ``client``, or refuse it; pair with ``close_stream``."""
        open_now = self._streams.get(client, 0)
        if open_now >= self.limits.event_streams:
            return self._refuse("event_streams", f"client {client} has {open_now} event streams open on this node "
                                                 f"(at most {self.limits.event_streams})", 5)
        self._streams[client] = open_now + 1
        return None

    def close_stream(self, client: str) -> None:
        left = self._streams.get(client, 0) - 1
        if left > 0:
            self._streams[client] = left
        else:
            self._streams.pop(client, None)

    def streams(self) -> int:
        """Event streams open now, all clients together."""
        return sum(self._streams.values())

    def _refuse(self, quota: str, message: str, retry_after: int) -> Refusal:
        self.refused[quota] += 1
        return Refusal(quota, message, max(1, retry_after))

    def _forget_idle(self, now: float) -> None:
        """Drop the buckets that have refilled: forgetting them changes no decision."""
        limits = self.limits
        full = [c for c, (tokens, at) in self._buckets.items()
                if tokens + (now - at) * limits.submits_per_second >= limits.submit_burst]
        for client in full:
            del self._buckets[client]
