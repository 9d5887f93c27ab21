"""A sweep index's errors leave events: its record's reason is overwritten once another node runs it."""

from __future__ import annotations

from jobs import EventKind, JobState
from jobs.messages import IndexResult
from requester.machine import Changes
from requester.sweep_machine import MAX_KIND_EVENTS
from tests.unit.test_requester_machine import claim, ok, sweep_machine

ABLE = {"n-a", "n-b", "n-c"}


def events(*changes: Changes) -> list[tuple[EventKind, str | None, str]]:
    return [(e.kind, e.node_id, e.message) for c in changes for w in c.writes for e in w.events]


def test_an_index_error_that_runs_it_again_on_another_node_is_an_event():
    """An input server silent for 30 s on one node, the index completed on another: two Claimed events
    30 s apart were all that was left of it."""
    m = sweep_machine(1)
    silent = IndexResult(index=0, error="input server silent for 30 s", retryable=True)
    _, claimed = m.claim("n-a", claim("c-a", want=1), 1.0, able=ABLE, quarantined=False)
    _, errored = m.claim("n-a", claim("c-a", silent), 31.0, able=ABLE, quarantined=False)
    _, again = m.claim("n-b", claim("c-b", want=1), 32.0, able=ABLE, quarantined=False)
    _, done = m.claim("n-b", claim("c-b", ok(0)), 33.0, able=ABLE, quarantined=False)
    assert done.finished and m.sweep.state is JobState.COMPLETED
    assert done.writes[0].indexes[0].reason == "completed"
    assert events(claimed, errored, again, done) == [
        (EventKind.CLAIMED, "n-a", "1 indexes: 0"),
        (EventKind.ERROR, "n-a", "index 0: node n-a: input server silent for 30 s; will run again"),
        (EventKind.CLAIMED, "n-b", "1 indexes: 0"),
        (EventKind.COMPLETED, "req", "all 1 indexes completed"),
    ]


def test_an_index_that_fails_for_good_keeps_its_events_with_an_error_event_for_each_error():
    m = sweep_machine(1)
    boom = IndexResult(index=0, error="boom")
    changes = [m.claim("n-a", claim("c-a", want=1), 1.0, able=ABLE, quarantined=False)[1],
               m.claim("n-a", claim("c-a", boom), 2.0, able=ABLE, quarantined=False)[1],
               m.claim("n-b", claim("c-b", want=1), 3.0, able=ABLE, quarantined=False)[1],
               m.claim("n-b", claim("c-b", boom), 4.0, able=ABLE, quarantined=False)[1]]
    assert changes[-1].finished and m.sweep.state is JobState.FAILED
    assert events(*changes) == [
        (EventKind.CLAIMED, "n-a", "1 indexes: 0"),
        (EventKind.ERROR, "n-a", "index 0: node n-a: boom; will run again"),
        (EventKind.CLAIMED, "n-b", "1 indexes: 0"),
        (EventKind.ERROR, "n-b", "index 0: boom"),  # confirmed by a second node: it fails
        (EventKind.FAILED, "req", "1 of 1 indexes failed"),
    ]


def test_a_lapsed_claim_whose_indexes_are_taken_back_is_an_event():
    m = sweep_machine(3)
    m.claim("n-a", claim("c-a", want=3), 1.0, able={"n-a"}, quarantined=False)
    changes = m.tick(12.0)  # silent past deadlines.silence
    assert m.states == [JobState.PENDING] * 3
    assert events(changes) == [(EventKind.ERROR, "n-a", "node n-a silent for 11 s; 3 indexes taken back: 0-2")]


def test_a_sweep_writes_only_the_first_few_error_events_and_refusals_have_their_own_share():
    m = sweep_machine(2 * MAX_KIND_EVENTS)
    able = {f"n-{i}" for i in range(2 * MAX_KIND_EVENTS)}
    written = []
    for i in range(2 * MAX_KIND_EVENTS):  # each node errs on the index it is granted
        peer = f"n-{i}"
        [(index, _)] = m.claim(peer, claim(f"c-{i}", want=1), 1.0, able=able, quarantined=False)[0].ranges
        error = IndexResult(index=index, error="boom", retryable=True)
        written += events(m.claim(peer, claim(f"c-{i}", error), 2.0, able=able, quarantined=False)[1])
    assert [kind for kind, _, _ in written] == [EventKind.ERROR] * MAX_KIND_EVENTS
    _, refused = m.claim("liar", claim("c-liar", ok(0)), 3.0, able=able, quarantined=False)
    assert [kind for kind, _, _ in events(refused)] == [EventKind.RESULTS_REJECTED]
