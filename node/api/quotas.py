"""Per-client API quotas: jobs in flight and the bytes of their specs, submissions per second, open event
streams, working directories stored and sweep indexes made.

A client over a quota gets 429 with ``Retry-After`` (``Refusal``). The defaults are far above
what a person, the test suite or ``shoal bench`` (ten submitters sharing one client key) ask
for; ``shoal serve --quota-*`` sets them. Pure apart from the injected clock: the API asks,
this answers.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from jobs import format_bytes
from requester.common import InFlight

MAX_TRACKED = 10_000  # submit buckets kept before full (idle) ones are dropped


def node_streams() -> int:
    """A quarter of this process's file descriptors, within 64 and 4096: the rest serve peers, the store, jobs."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return 4096 if soft == resource.RLIM_INFINITY else max(64, min(4096, soft // 4))


@dataclass(frozen=True)
class QuotaLimits:
    jobs_in_flight: int = 10_000  # live jobs and sweeps of one client on this node
    spec_bytes_in_flight: int = 256 * 1024**2  # their specs together: each is held in memory and announced again
    # while it waits (300 jobs of 900 KB of inline code took a requester from 130 to 912 MiB)
    submits_per_second: float = 1_000.0  # sustained rate of job and sweep submissions
    submit_burst: int = 2_000  # submissions at once after a quiet spell
    event_streams: int = 256  # open streams of one client: events (SSE), logs it follows, descriptions it waits on
    # open streams of all clients together: fresh keys are free on an open node, and 2 x 250 streams took every
    # file descriptor of a node limited to 512 (10,000 streams: 520 MB, a busy CPU); see node_streams
    event_streams_total: int = field(default_factory=lambda: node_streams())
    context_bytes_per_hour: int = 2 * 1024**3  # working directories (POST /v1/contexts) and job and sweep specs
    # one client stores, kept for the node's retention: without a bound, a client able to submit could fill the
    # node's disk (specs of 900 KB of inline code that failed at once grew it by 36 MB/s) and its memory
    sweep_indexes_per_hour: int = 2_000_000  # indexes of the sweeps one client submits: each is a row kept until
    # the node's --ttl; a 14 KB request for a 1000x1000 grid made a million (100 MB, 10 s of the node's time)


@dataclass(frozen=True)
class Refusal:
    quota: str  # the /metrics label: "jobs_in_flight", "spec_bytes_in_flight", "submits_per_second",
    # "event_streams", "context_bytes" or "sweep_indexes"
    message: str
    retry_after: int  # seconds


class Quotas:
    """The decisions, and how often each quota refused (``refused``, for /metrics)."""

    def __init__(self, limits: QuotaLimits | None = None, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits or QuotaLimits()
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._streams: dict[str, int] = {}
        self._reserved: dict[str, InFlight] = {}  # client -> its submissions let through, not yet counted live
        self._open_total = 0
        # quota -> client -> (what it may still take, at): the hourly allowances
        self._allowances: dict[str, dict[str, tuple[float, float]]] = {"context_bytes": {}, "sweep_indexes": {}}
        self.refused = dict.fromkeys(("jobs_in_flight", "spec_bytes_in_flight", "submits_per_second", "event_streams",
                                      "context_bytes", "sweep_indexes"), 0)

    def submit(self, client: str, in_flight: InFlight, spec_bytes: int) -> Refusal | None:
        """May ``client``, with ``in_flight`` live jobs and sweeps, submit one more whose spec is ``spec_bytes``
        long? Takes a token if so. ``reserve`` what it lets through, with no await in between."""
        limits = self.limits
        in_flight += self._reserved.get(client, InFlight())
        if in_flight.count >= limits.jobs_in_flight:
            return self._refuse("jobs_in_flight", f"client {client} has {in_flight.count} jobs and sweeps in flight "
                                f"on this node (at most {limits.jobs_in_flight}): wait for some to end", 5)
        if in_flight.spec_bytes + spec_bytes > limits.spec_bytes_in_flight:
            return self._refuse("spec_bytes_in_flight", f"client {client} has {format_bytes(in_flight.spec_bytes)} "
                                f"of job and sweep specs in flight on this node, and {format_bytes(spec_bytes)} more "
                                f"would pass {format_bytes(limits.spec_bytes_in_flight)}: wait for some to end, or "
                                "put large code and data in inputs", 5)
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

    @contextmanager
    def reserve(self, client: str, spec_bytes: int) -> Iterator[Callable[[], None]]:
        """Count a submission ``submit`` let through in flight until the requester counts it itself: until the
        block ends, or the function it yields is called (then, and not once the job is announced too, which
        counted it twice for seconds). Else concurrent submits all passed the check before any was live (60 at
        once, a quota of 5: 12 live)."""
        self._reserved[client] = self._reserved.get(client, InFlight()) + InFlight(1, spec_bytes)
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                left = self._reserved[client]
                if left.count == 1:
                    del self._reserved[client]
                else:  # others of its submissions are still being made
                    self._reserved[client] = InFlight(left.count - 1, left.spec_bytes - spec_bytes)

        try:
            yield release
        finally:
            release()

    def store_context(self, client: str, size: int) -> Refusal | None:
        """May ``client`` store a working directory, or a job or sweep spec, of ``size`` bytes? Takes them from
        its allowance if so."""
        limit = self.limits.context_bytes_per_hour
        return self._take_hourly("context_bytes", client, size, limit,
                                 f"client {client} stored more than {format_bytes(limit)} of working directories "
                                 "and job specs in the last hour on this node")

    def make_indexes(self, client: str, indexes: int) -> Refusal | None:
        """May ``client`` submit a sweep of ``indexes``? Takes them from its allowance if so."""
        limit = self.limits.sweep_indexes_per_hour
        return self._take_hourly("sweep_indexes", client, indexes, limit,
                                 f"client {client} submitted sweeps of more than {limit} indexes in the last hour "
                                 "on this node")

    def _take_hourly(self, quota: str, client: str, amount: int, limit: int, message: str) -> Refusal | None:
        """Take ``amount`` from ``client``'s allowance of ``quota``, which refills at ``limit`` an hour, up to
        ``limit`` at once; or refuse, saying when it would be there."""
        allowances = self._allowances[quota]
        now = self._clock()
        allowance, at = allowances.get(client, (float(limit), now))
        allowance = min(float(limit), allowance + (now - at) * limit / 3600)
        if amount > allowance:
            allowances[client] = (allowance, now)
            return self._refuse(quota, message, math.ceil((amount - allowance) * 3600 / limit))
        if client not in allowances and len(allowances) >= MAX_TRACKED:
            self._allowances[quota] = allowances = {
                c: (left, then) for c, (left, then) in allowances.items()
                if left + (now - then) * limit / 3600 < limit}  # full ones change no decision
        allowances[client] = (allowance - amount, now)
        return None

    def open_stream(self, client: str) -> Refusal | None:
        """Count a new stream of ``client`` (events, a log it follows, a description it waits on), or refuse
        it; pair with ``close_stream``."""
        open_now = self._streams.get(client, 0)
        if (total := self.streams()) >= self.limits.event_streams_total:
            return self._refuse("event_streams", f"this node has {total} event streams, followed logs and waits "
                                                 f"open (at most {self.limits.event_streams_total}): retry later", 5)
        if open_now >= self.limits.event_streams:
            return self._refuse("event_streams", f"client {client} has {open_now} event streams and followed logs "
                                                 f"open on this node (at most {self.limits.event_streams})", 5)
        self._streams[client] = open_now + 1
        self._open_total += 1
        return None

    def close_stream(self, client: str) -> None:
        if client in self._streams:
            self._open_total -= 1
        left = self._streams.get(client, 0) - 1
        if left > 0:
            self._streams[client] = left
        else:
            self._streams.pop(client, None)

    def streams(self) -> int:
        """Event streams open now, all clients together."""
        return self._open_total

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
