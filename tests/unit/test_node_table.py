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


def test_a_table_needs_room() -> None:
    with pytest.raises(ValueError):
        NodeTable(ttl=30, max_size=0)
