"""The requester's node table: new and restarted nodes are told apart, stale ones expire, its size is bounded."""

from __future__ import annotations

import pytest

from jobs.messages import NodeInfo
from jobs.spec import Resources
from requester.nodes import NodeTable


def info(peer: str, boot: str = "b1", cpu: float = 4) -> NodeInfo:
    room = Resources(cpu=cpu, memory="8GiB", disk="10GiB")
    return NodeInfo(peer_id=peer, max_per_job=room, total=room, free=room, boot=boot)


def test_update_says_whether_a_node_is_new_or_restarted() -> None:
    table = NodeTable(ttl=30)
    assert table.update(info("a"), now=0)  # new
    assert not table.update(info("a", cpu=2), now=1)  # same boot: news, not a restart
    assert table.get("a").free.cpu == 2
    assert table.update(info("a", boot="b2"), now=2)  # restarted
    assert table.get("nobody") is None


def test_nodes_not_heard_from_within_the_ttl_are_forgotten() -> None:
    table = NodeTable(ttl=30)
    table.update(info("old"), now=0)
    table.update(info("fresh"), now=20)
    assert {n.peer_id for n in table.known(now=30)} == {"old", "fresh"}
    assert [n.peer_id for n in table.known(now=31)] == ["fresh"]
    assert table.get("old") is None
    table.update(info("fresh"), now=40)  # heard again: lives on
    assert [n.peer_id for n in table.known(now=69)] == ["fresh"]
    stats = table.statistics()
    assert (stats.size, stats.expired, stats.evicted) == (1, 1, 0)


def test_a_full_table_drops_the_node_it_learnt_of_last_so_a_flood_of_identities_pushes_out_no_known_node() -> None:
    table = NodeTable(ttl=30, max_size=3)
    for t, peer in enumerate("abc"):
        table.update(info(peer), now=t)
    assert table.update(info("d"), now=3)  # c, the newest, makes room
    assert {n.peer_id for n in table.known(now=3)} == {"a", "b", "d"}
    for n in range(100):  # a flood of new identities never grows the table, and churns only among itself
        table.update(info(f"sybil-{n}"), now=4)
        table.update(info("a"), now=4)  # heard again meanwhile: a keeps its place
    assert len(table) == 3
    assert {n.peer_id for n in table.known(now=4)} == {"a", "b", "sybil-99"}
    assert table.statistics().evicted == 101


def test_a_node_vouched_for_stays_through_a_flood_and_a_crowded_table_proves_nothing_impossible() -> None:
    """Red team: 4,000 fresh identities kept a pure requester's table full; a node joining later was known in
    0 of 30 samples, and every job was failed at once for want of a node. A node whose results were
    accepted is vouched for and is never the one dropped; while the table drops nodes it is crowded."""
    table = NodeTable(ttl=30, max_size=3)
    table.update(info("a"), now=0)
    assert not table.crowded(now=0)
    for n in range(2):
        table.update(info(f"sybil-{n}"), now=1)
    assert table.update(info("late", boot="b1"), now=2, vouched=True)  # the flood is at its limit
    for n in range(2, 100):
        table.update(info(f"sybil-{n}"), now=3)
    assert {"a", "late"} <= {n.peer_id for n in table.known(now=3)} and len(table) == 3
    assert table.crowded(now=3) and table.crowded(now=33) and not table.crowded(now=34)
    full = NodeTable(ttl=30, max_size=2)
    for peer in "ab":
        full.update(info(peer), now=0, vouched=True)
    assert not full.update(info("sybil"), now=1)  # every node held is vouched for: a stranger waits
    assert {n.peer_id for n in full.known(now=1)} == {"a", "b"}


def test_a_table_needs_room() -> None:
    with pytest.raises(ValueError):
        NodeTable(ttl=30, max_size=0)
