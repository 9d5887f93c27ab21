"""The backlog's bookkeeping under any sequence of offers, refreshes, evictions and removals (hypothesis).

A refused offer must leave the backlog as it was: the first fair-share version dropped other requesters'
entries while making room, then refused the offer anyway (a peer sending specs too big to ever fit could
strip everyone else's jobs for nothing).
"""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from compute.backlog import Backlog

OPERATIONS = st.lists(st.one_of(
    st.tuples(st.just("offer"), st.sampled_from("ABCD"), st.integers(0, 6),
              st.sampled_from([0, 1, 10, 20, 30, 50, 60, 100, 101])),
    st.tuples(st.just("pop"), st.sampled_from("ABCD"), st.integers(0, 6), st.just(0)),
    st.tuples(st.just("popitem"), st.booleans(), st.just(0), st.just(0)),
    st.tuples(st.just("clear"), st.just(""), st.just(0), st.just(0)),
), max_size=60)


def consistent(backlog: Backlog) -> None:
    assert len(backlog) <= backlog.max_entries and backlog.bytes <= backlog.max_bytes
    assert backlog.bytes == sum(backlog._sizes.values()) and set(backlog._sizes) == set(backlog)
    owners: dict[str, set] = {}
    for key in backlog:
        owners.setdefault(key[0], set()).add(key)
    assert owners == {owner: set(keys) for owner, keys in backlog._keys.items()}
    assert backlog._weights == {owner: sum(max(backlog._sizes[k], backlog._unit) for k in keys)
                                for owner, keys in owners.items()}


@settings(max_examples=3000, deadline=None)
@given(OPERATIONS)
@example([("offer", "B", 0, 50), ("offer", "B", 1, 0), ("offer", "A", 0, 60)])  # refused, after dropping ("B", "1")
def test_a_refused_offer_changes_nothing_and_the_books_always_balance(operations: list[tuple]) -> None:
    backlog: Backlog[int] = Backlog(max_entries=5, max_bytes=100)
    for operation, who, which, size in operations:
        if operation == "offer":
            before = list(backlog.items())
            if not backlog.offer((who, str(which)), size, size):
                assert list(backlog.items()) == before
        elif operation == "pop":
            backlog.pop((who, str(which)), None)
        elif operation == "popitem" and backlog:
            backlog.popitem(who)
        elif operation == "clear":
            backlog.clear()
        consistent(backlog)


def test_an_offer_too_big_to_fit_takes_nothing_from_the_others() -> None:
    backlog: Backlog[str] = Backlog(max_entries=10, max_bytes=100)
    for i in range(5):
        assert backlog.offer(("A", f"a{i}"), "spec", 20)
    assert not backlog.offer(("B", "b0"), "spec", 60)  # A would have to give up 3 entries and weigh less than B
    assert list(backlog) == [("A", f"a{i}") for i in range(5)] and backlog.bytes == 100
