"""Flood limits on the real network layer, against a rogue peer (``tests/integration/rogue.py``):
its forged or malformed gossip stops at the first honest node and reaches no third peer, it is
scored down and then ignored, gossip it passes too fast is cut to its rate, and its flood of direct
requests to a real ``shoal serve`` is refused while an honest peer is served; each is in /metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import trio

from devstack import Devstack
from jobs.messages import Announce, Bid, NodeInfo, StatusQuery, encode
from jobs.spec import JobSpec, Resources
from node.dispatch import Dispatcher
from node.net import Network, host
from shoal import AsyncClient, ClientKey
from tests.integration.rogue import RoguePeer, free_base_port, knows, metrics, poll
from tests.integration.single_node import noop_node
from tests.integration.test_net import LOCAL, cluster, echo, wait_until

ROOM = Resources(cpu=4, memory="8GiB", disk="10GiB")
SPEC = JobSpec(engine={"name": "noop"})


def node_info(peer: str, running: int = 0) -> NodeInfo:
    return NodeInfo(peer_id=peer, max_per_job=ROOM, total=ROOM, free=ROOM, running=running)


class Roles:
    """Stands in for a node's requester and compute roles: records what gossip reached them."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []
        self.dispatcher: Dispatcher | None = None

    def on_node_info(self, origin: str, info: NodeInfo) -> None:
        self.heard.append((origin, info))

    def on_announce(self, origin: str, ann: Announce) -> bool:
        self.heard.append((origin, ann))
        return False


def honest(name: str, peers: list[str], heartbeat: float = 0.5) -> tuple[Network, Roles]:
    """A network wired as ``shoal serve`` wires it: the dispatcher validates gossip for libp2p."""
    roles = Roles()
    dispatcher = Dispatcher(requester=roles, compute=roles)  # type: ignore[arg-type]
    dispatcher.ready.set()
    roles.dispatcher = dispatcher
    net = Network(seed=hashlib.sha256(name.encode()).digest(), listen=[LOCAL], peers=peers,
                  on_gossip=dispatcher.on_gossip, on_request=echo, validate_gossip=dispatcher.check_gossip,
                  gossip_heartbeat=heartbeat)
    return net, roles


async def until_heard(rogue: RoguePeer, roles: Roles, timeout: float = 15) -> None:
    """Publish the rogue's own node info until ``roles`` has heard some (the mesh takes a heartbeat
    or two to form)."""
    n = 0
    with trio.fail_after(timeout):
        while not any(origin == rogue.peer_id for origin, _ in roles.heard):
            await rogue.publish(node_info(rogue.peer_id, running=n))
            n += 1
            await trio.sleep(0.2)


def forgeries(victim: str) -> list[bytes]:
    """Gossip a rogue may not pass: in another peer's name, not gossip at all, not a message."""
    return [
        encode(Announce(job_id="j-forged", spec=SPEC, requester=victim)),
        encode(node_info(victim)),
        encode(Bid(job_id="j-1", execution_id="e-1")),
        b"\xff{not json",
    ]


async def test_forged_and_malformed_gossip_reaches_no_third_peer() -> None:
    async with cluster() as start:
        b, b_roles = honest("b", [])
        await start(b)
        c, c_roles = honest("c", b.addrs())  # C hears the rogue only through B
        await start(c)
        async with RoguePeer(b.addrs()) as mallory:
            await wait_until(lambda: len(b.connected_peers()) == 2)
            await until_heard(mallory, c_roles)  # the path works for honest gossip
            bad = forgeries(c.peer_id)
            for data in bad:
                await mallory.publish(data)
            last = node_info(mallory.peer_id, running=10_000)
            await mallory.publish(last)
            await wait_until(lambda: c_roles.heard[-1] == (mallory.peer_id, last), timeout=10)
            await trio.sleep(0.5)

            for roles in (b_roles, c_roles):  # only the rogue's own node info got through, in its name
                assert {(origin, type(m)) for origin, m in roles.heard} == {(mallory.peer_id, NodeInfo)}
                assert all(m.peer_id == mallory.peer_id for _, m in roles.heard)
            assert b.statistics().gossip_rejected == len(bad)
            assert c.statistics().gossip_rejected == 0  # B forwarded none of it
            assert b_roles.dispatcher.dropped == c_roles.dispatcher.dropped == 0  # nor delivered it
            assert b.statistics().gossip_penalised_peers == 1  # the rogue, at B
            assert c.statistics().gossip_penalised_peers == 0  # B is not blamed for what it stopped


async def test_a_neighbour_that_keeps_passing_invalid_gossip_is_ignored() -> None:
    async with cluster() as start:
        b, b_roles = honest("b", [], heartbeat=3.0)  # scores decay per heartbeat: as in a real node
        await start(b)
        async with RoguePeer(b.addrs(), gossip_heartbeat=3.0) as mallory:
            await until_heard(mallory, b_roles, timeout=30)
            for n in range(20):  # past the publish threshold of 10 invalid messages
                await mallory.publish(node_info(b.peer_id, running=n))
            await wait_until(lambda: b.statistics().gossip_blocked_peers == 1, timeout=10)
            heard = len(b_roles.heard)
            for n in range(5):  # now even its valid gossip is dropped unread
                await mallory.publish(node_info(mallory.peer_id, running=100 + n))
                await trio.sleep(0.1)
            await trio.sleep(1.0)
            assert len(b_roles.heard) == heard
            assert b.statistics().gossip_rejected < 20  # once it was ignored, the rest went unread


async def test_a_neighbour_passing_gossip_too_fast_is_cut_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "GOSSIP_PEER_RATE", 5.0)  # bursts of 10
    async with cluster() as start:
        b, b_roles = honest("b", [])
        await start(b)
        async with RoguePeer(b.addrs()) as mallory:
            await until_heard(mallory, b_roles)
            await trio.sleep(2.5)  # the bucket refills
            before = len(b_roles.heard)
            for n in range(60):  # valid, but all at once
                await mallory.publish(node_info(mallory.peer_id, running=1000 + n))
            await trio.sleep(2.0)
            got = len(b_roles.heard) - before
            assert 1 <= got <= 10 + 3 * 5  # the burst, and what refilled meanwhile
            assert b.statistics().gossip_rate_limited >= 1
            assert b.statistics().gossip_rejected == 0 and b.statistics().gossip_penalised_peers == 0  # no penalty


@pytest.mark.slow
async def test_forged_gossip_stops_at_the_first_node_of_a_devstack(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(2, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(2),
                         write_state=False) as stack,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):  # node 1 hears it only through node 0
        first, second = stack.nodes
        await rogue.wait_mesh([first.peer_id])
        bad = forgeries(second.peer_id)
        for data in bad:
            await rogue.publish(data)
        rogue.advertise()  # honest gossip from the rogue: it does travel through node 0 to node 1
        async with AsyncClient(second.api) as client:
            everyone = {first.peer_id, second.peer_id, rogue.peer_id}

            async def knows_everyone() -> bool:  # each node's info comes on its own schedule
                return all([await knows(client, peer) for peer in everyone])

            await poll(knows_everyone, 30, "node 1 never heard the rogue's (or a node's) node info")
            known = {n.peer_id for n in (await client.nodes()).nodes}
        assert known == everyone  # and no peer id a forgery named
        at_first, at_second = await metrics(first.api), await metrics(second.api)
        assert at_first['shoal_network_total{event="gossip_rejected"}'] == len(bad)
        assert at_first['shoal_network{value="gossip_penalised_peers"}'] == 1
        assert at_second['shoal_network_total{event="gossip_rejected"}'] == 0  # node 0 forwarded none
        assert at_first["shoal_dispatch_dropped_total"] == at_second["shoal_dispatch_dropped_total"] == 0
        assert at_second["shoal_node_table"] == 3



@pytest.mark.slow
async def test_a_peer_flooding_direct_requests_is_refused_and_an_honest_one_is_not(tmp_path: Path) -> None:
    with noop_node(tmp_path, free_base_port(1), args=["--peer-rate-limit", "20"]) as ready:
        node = ready["peer_id"]
        async with RoguePeer(ready["addrs"]) as flooder, RoguePeer(ready["addrs"]) as steady:
            query = StatusQuery(execution_ids=["e-1"])

            async def flood(replies: list) -> None:
                for _ in range(100):
                    replies.append(await flooder.request(node, query))

            async def politely(replies: list) -> None:
                for _ in range(15):  # 5 a second, well under 20
                    replies.append(await steady.request(node, query))
                    await trio.sleep(0.2)

            flooded: list = []
            served: list = []
            began = trio.current_time()
            async with trio.open_nursery() as nursery:
                for _ in range(4):
                    nursery.start_soon(flood, flooded)
                nursery.start_soon(politely, served)
            took = trio.current_time() - began
            refused = [r for r in flooded if not r.ok]
            assert refused and all(r.reason.startswith("rate limited: over 20 requests/s") for r in refused)
            assert len(flooded) - len(refused) <= 40 + 20 * took  # its burst, then 20 a second
            assert all(r.ok and r.states == {"e-1": "unknown"} for r in served)  # the honest peer: all answered

            # gossip in another node's name is rejected by the node, and counted
            await flooder.wait_mesh([node])
            await flooder.publish(node_info(steady.peer_id))
            counted = await poll(lambda: _rejected(ready["api"]), 10, "the forged node info was not counted")
            assert counted == 1
            seen = await metrics(ready["api"])
            allowed = len(flooded) - len(refused) + len(served)
            assert seen['shoal_peer_requests_total{verdict="rate_limited"}'] == len(refused)
            assert seen['shoal_peer_requests_total{verdict="allowed"}'] == allowed
            assert seen["shoal_rate_limited_peers_tracked"] == 2
            assert seen['shoal_network{value="gossip_penalised_peers"}'] == 1
            assert seen['shoal_network_total{event="gossip_rate_limited"}'] == 0
            assert seen["shoal_node_table"] == 1  # itself: the forged node info was not believed
            assert seen['shoal_node_table_total{event="evicted"}'] == 0

            # the node's own requests to itself (offer, bid, result: 3 a job) are never limited
            async with AsyncClient(ready["api"], key=ClientKey.load_or_create(tmp_path / "client.key")) as client:
                done: list = []

                async def one() -> None:
                    done.append(await client.run({"engine": {"name": "noop"}}, timeout=60))

                async with trio.open_nursery() as nursery:
                    for _ in range(30):
                        nursery.start_soon(one)
            assert len(done) == 30 and all(d.job.state.value == "completed" for d in done)
            after = await metrics(ready["api"])
            assert after['shoal_peer_requests_total{verdict="rate_limited"}'] == len(refused)
            assert after['shoal_peer_requests_total{verdict="allowed"}'] == allowed


async def _rejected(api: str) -> float:
    return (await metrics(api))['shoal_network_total{event="gossip_rejected"}']
