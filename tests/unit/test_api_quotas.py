"""Per-client API quotas (node.api.quotas): decisions only, with an injected clock."""

from __future__ import annotations

import resource

from node.api.quotas import MAX_TRACKED, QuotaLimits, Quotas
from requester.common import InFlight

NONE = InFlight()  # no live jobs


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_submissions_per_second_refill_and_say_when_to_retry() -> None:
    clock = Clock()
    quotas = Quotas(QuotaLimits(submits_per_second=2, submit_burst=3), clock=clock)
    assert [quotas.submit("a", NONE, 100) for _ in range(3)] == [None] * 3  # the burst
    refusal = quotas.submit("a", NONE, 100)
    assert refusal is not None and refusal.quota == "submits_per_second" and refusal.retry_after == 1
    assert quotas.submit("b", NONE, 100) is None  # another client has its own bucket
    clock.now += 0.5  # one token back (2 per second)
    assert quotas.submit("a", NONE, 100) is None
    assert quotas.submit("a", NONE, 100) is not None
    clock.now += 100  # refills to the burst, never beyond
    assert [quotas.submit("a", NONE, 100) is None for _ in range(4)] == [True, True, True, False]
    assert quotas.refused["submits_per_second"] == 3


def test_jobs_in_flight_refuse_without_spending_a_token() -> None:
    quotas = Quotas(QuotaLimits(jobs_in_flight=2, submits_per_second=1, submit_burst=1), clock=Clock())
    refusal = quotas.submit("a", InFlight(2), 100)
    assert refusal is not None and refusal.quota == "jobs_in_flight" and refusal.retry_after >= 1
    assert quotas.submit("a", InFlight(1), 100) is None  # the refused submit took no token


def test_the_specs_of_a_clients_live_jobs_are_bounded_together_without_spending_a_token() -> None:
    """Specs are held in memory and announced again while their jobs wait: 300 jobs of 900 KB of inline
    code took a requester from 130 to 912 MiB, far inside the count of jobs in flight."""
    quotas = Quotas(QuotaLimits(spec_bytes_in_flight=1000, submits_per_second=1, submit_burst=1), clock=Clock())
    refusal = quotas.submit("a", InFlight(3, 900), 101)
    assert refusal is not None and refusal.quota == "spec_bytes_in_flight" and refusal.retry_after >= 1
    assert "has 900 B of job and sweep specs in flight on this node, and 101 B more would pass 1000 B" \
        in refusal.message
    assert quotas.submit("a", InFlight(3, 900), 100) is None  # up to the bound, and the refusals took no token
    assert quotas.refused["spec_bytes_in_flight"] == 1


def test_event_streams_are_counted_until_closed() -> None:
    quotas = Quotas(QuotaLimits(event_streams=2), clock=Clock())
    assert quotas.open_stream("a") is None and quotas.open_stream("a") is None
    refusal = quotas.open_stream("a")
    assert refusal is not None and refusal.quota == "event_streams"
    assert quotas.open_stream("b") is None
    assert quotas.streams() == 3
    quotas.close_stream("a")
    assert quotas.open_stream("a") is None
    for _ in range(5):  # closing more than was opened never goes negative or grants extra
        quotas.close_stream("b")
    assert quotas.streams() == 2


def test_streams_of_all_clients_together_are_bounded_by_the_nodes_file_descriptors() -> None:
    """Fresh keys are free on an open node: 2 keys x 250 streams took every file descriptor of a node
    limited to 512, and 10,000 streams of 40 keys 520 MB."""
    quotas = Quotas(QuotaLimits(event_streams=2, event_streams_total=3), clock=Clock())
    assert all(quotas.open_stream(key) is None for key in ("a", "b", "c"))
    refusal = quotas.open_stream("d")  # a fresh key, no stream of its own open
    assert refusal is not None and "this node has 3 event streams" in refusal.message
    quotas.close_stream("a")
    assert quotas.open_stream("d") is None
    quotas.close_stream("never-opened")
    assert quotas.streams() == 3
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    assert QuotaLimits().event_streams_total == (4096 if soft == resource.RLIM_INFINITY
                                                 else max(64, min(4096, soft // 4)))


def test_many_clients_keep_memory_bounded() -> None:
    clock = Clock()
    quotas = Quotas(QuotaLimits(submits_per_second=10, submit_burst=10), clock=clock)
    for i in range(MAX_TRACKED):
        quotas.submit(f"c{i}", NONE, 100)
    clock.now += 10  # every bucket has refilled: forgetting them changes no decision
    quotas.submit("newcomer", NONE, 100)
    assert len(quotas._buckets) == 1


def test_working_directories_a_client_stores_are_bounded_per_hour_and_refill() -> None:
    """Any client that may submit could store 10 MiB contexts as fast as it sent them, each kept for the
    node's retention (403 MiB in 8 s on a devstack): its allowance now refills at the hourly quota."""
    clock = Clock()
    quotas = Quotas(QuotaLimits(context_bytes_per_hour=3600), clock=clock)
    assert quotas.store_context("a", 3000) is None
    refusal = quotas.store_context("a", 1000)  # 600 left
    assert refusal is not None and refusal.quota == "context_bytes" and refusal.retry_after == 400
    assert "stored more than 3.52 KiB of working directories and job specs in the last hour" in refusal.message
    assert quotas.store_context("b", 3600) is None  # another client has its own allowance
    clock.now += 400  # 400 bytes back: 1000
    assert quotas.store_context("a", 1000) is None
    assert quotas.store_context("a", 1) is not None
    clock.now += 10 * 3600  # refills to the hour's allowance, never beyond
    assert quotas.store_context("a", 3601) is not None and quotas.store_context("a", 3600) is None
    assert quotas.refused["context_bytes"] == 3
    for n in range(MAX_TRACKED + 10):  # many clients keep memory bounded once their allowances refill
        clock.now += 1
        quotas.store_context(f"c{n}", 1)
    assert len(quotas._allowances["context_bytes"]) <= MAX_TRACKED + 1


def test_the_indexes_of_a_clients_sweeps_are_bounded_per_hour_and_refill() -> None:
    """A 14 KB request for a 1000x1000 grid made a million rows, as often as a client sent it."""
    clock = Clock()
    quotas = Quotas(QuotaLimits(sweep_indexes_per_hour=1000), clock=clock)
    assert quotas.make_indexes("a", 600) is None
    refusal = quotas.make_indexes("a", 600)  # 400 left
    assert refusal is not None and refusal.quota == "sweep_indexes" and refusal.retry_after == 720
    assert quotas.make_indexes("a", 400) is None and quotas.make_indexes("b", 1000) is None
    clock.now += 36  # 10 indexes back
    assert quotas.make_indexes("a", 11) is not None and quotas.make_indexes("a", 10) is None
    assert quotas.refused["sweep_indexes"] == 2 and quotas.store_context("a", 1) is None  # allowances apart


def test_a_submission_let_through_counts_in_flight_until_its_reservation_ends() -> None:
    """The requester counts a job only once it is stored: 60 submits at once, all checked before any was
    live, left a client with a quota of 5 with 12 live jobs."""
    quotas = Quotas(QuotaLimits(jobs_in_flight=2, spec_bytes_in_flight=1000), clock=Clock())
    with quotas.reserve("a", 600):
        assert quotas.submit("a", NONE, 300) is None
        with quotas.reserve("a", 300):
            refusal = quotas.submit("a", NONE, 10)
            assert refusal is not None and refusal.quota == "jobs_in_flight" and "has 2 jobs" in refusal.message
        refusal = quotas.submit("a", NONE, 401)
        assert refusal is not None and refusal.quota == "spec_bytes_in_flight"
        assert quotas.submit("b", NONE, 900) is None  # another client's reservations are its own
    assert quotas.submit("a", InFlight(1, 600), 400) is None  # the requester counts it now; the reservation is gone
    assert quotas._reserved == {}  # nothing kept for clients with none


def test_a_reservation_ends_when_the_requester_counts_the_job_not_when_its_announcement_returns() -> None:
    """Held until ``submit`` returned, a reservation counted the job twice while it was announced (seconds on
    a network), live and reserved: a client at 2 of 4 jobs was refused."""
    quotas = Quotas(QuotaLimits(jobs_in_flight=4, spec_bytes_in_flight=1000), clock=Clock())
    with quotas.reserve("a", 10) as counted_a, quotas.reserve("a", 10) as counted_b:
        counted_a()
        counted_b()
        counted_b()  # once is enough: a second call takes nothing more
        assert quotas._reserved == {}
        assert quotas.submit("a", InFlight(2, 20), 10) is None  # the 2 live ones, counted once
        assert quotas.submit("a", InFlight(3, 30), 10) is None
    assert quotas._reserved == {}
