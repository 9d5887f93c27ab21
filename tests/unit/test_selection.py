"""Whom a requester asks first: a few nodes with room, every able node in a small network, or gossip."""

from __future__ import annotations

import random

from jobs import JobSpec, Resources
from jobs.messages import NodeInfo
from requester.selection import candidates

SPEC = JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {"cpu": 1}})
BIG = Resources(cpu=4, memory="8GiB", disk="10GiB")
FULL = Resources(cpu=0, memory=0, disk=0)


def node(name: str, *, free: Resources = BIG, engines: tuple[str, ...] = ("noop",),
         per_job: Resources = BIG) -> NodeInfo:
    return NodeInfo(peer_id=name, engines=list(engines), max_per_job=per_job, total=BIG, free=free)


def test_many_with_room_ask_one_more_than_needed_at_random() -> None:
    nodes = [node(f"n{i}") for i in range(40)]
    asked = candidates(SPEC, nodes, needed=3, rng=random.Random(1))
    assert len(asked) == 4 and len(set(asked)) == 4
    assert asked != candidates(SPEC, nodes, needed=3, rng=random.Random(2))  # not always the same nodes


def test_a_small_network_is_asked_whole_full_nodes_included() -> None:
    nodes = [node("a"), node("b", free=FULL), node("c", free=FULL),
             node("wrong-engine", engines=("docker",)), node("too-small", per_job=Resources(cpu=0.5))]
    assert candidates(SPEC, nodes, needed=3) == ["a", "b", "c"]  # full ones keep it in their backlog


def test_gossip_when_fewer_able_nodes_are_known_than_needed() -> None:
    assert candidates(SPEC, [node("a"), node("b")], needed=3) == []  # others may not be known yet
    assert candidates(SPEC, [], needed=1) == []


def test_gossip_in_a_large_network_with_little_room() -> None:
    nodes = [node(f"n{i}", free=FULL) for i in range(30)] + [node("free")]
    assert candidates(SPEC, nodes, needed=1) == []
    assert candidates(SPEC, nodes, needed=1, ask_all_up_to=31) == [n.peer_id for n in nodes]
