"""Flood limits on the real network layer: a rogue peer's forged or malformed gossip stops at the first
honest node (it reaches no third peer), a rogue neighbour is scored down and then ignored, a neighbour
passing gossip too fast is cut to its rate, and a peer flooding a real ``shoal serve`` with direct
requests is refused while an honest peer is served; each is counted in /metrics."""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest
import trio

from jobs.messages import Announce, Bid, NodeInfo, StatusQuery, decode, encode
from jobs.spec import JobSpec, Resources
from node.dispatch import Dispatcher
from node.net import Network, host
from shoal import AsyncClient, ClientKey
from tests.integration.single_node import noop_node
from tests.integration.test_net import LOCAL, cluster, echo, ignore_gossip, wait_until

ROOM = Resources(cpu=4, memory="8GiB", disk="10GiB")
SPEC = JobSpec(engine={"name": "noop"})


def node_info(peer: str, running: int = 0) -> NodeInfo:
    return NodeInfo(peer_id=peer, max_per_job=ROOM, total=ROOM, free=ROOM, running=running)


class Roles:
    """Stands in for a node's requester and compute roles: records what gossip reached them."""

    def __init__(self) -> None:
        self.heard: list[tuple[str, object]] = []

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
    net = Network(seed=hashlib.sha256(name.encode()).digest(), listen=[LOCAL], peers=peers,
                  on_gossip=dispatcher.on_gossip, on_request=echo, validate_gossip=dispatcher.check_gossip,
                  gossip_heartbeat=heartbeat)
    return net, roles


def rogue(name: str, peers: list[str] | None = None, heartbeat: float = 0.5) -> Network:
    """A peer that publishes whatever it likes: no validator of its own."""
    return Network(seed=hashlib.sha256(name.encode()).digest(), listen=[LOCAL], peers=peers or [],
                   on_gossip=ignore_gossip, on_request=echo, gossip_heartbeat=heartbeat)


async def until_heard(sender: Network, roles: Roles, timeout: float = 15) -> int:
    """Publish the sender's node info until ``roles`` has heard some (the mesh takes a heartbeat or
    two to form); return how many were published."""
    n = 0
    with trio.fail_after(timeout):
        while not any(origin == sender.peer_id for origin, _ in roles.heard):
            await sender.publish(encode(node_info(sender.peer_id, running=n)))
            n += 1
            await trio.sleep(0.2)
    return n


async def test_forged_and_malformed_gossip_reaches_no_third_peer() -> None:
    async with cluster() as start:
        mallory = rogue("mallory")
        await start(mallory)
        b, b_roles = honest("b", mallory.addrs())
        await start(b)
        c, c_roles = honest("c", b.addrs())  # C hears Mallory only through B
        await start(c)
        await wait_until(lambda: len(b.connected_peers()) == 2)
        await until_heard(mallory, c_roles)  # the path works for honest gossip

        bad = [
            encode(Announce(job_id="j-forged", spec=SPEC, requester=b.peer_id)),  # in B's name
            encode(node_info(c.peer_id)),  # in C's name
            encode(Bid(job_id="j-1", execution_id="e-1")),  # a direct message, not gossip
            b"\xff{not json",
        ]
        for data in bad:
            await mallory.publish(data)
        last = node_info(mallory.peer_id, running=10_000)
        await mallory.publish(encode(last))
        await wait_until(lambda: c_roles.heard[-1] == (mallory.peer_id, last), timeout=10)
        await trio.sleep(0.5)

        for roles in (b_roles, c_roles):  # only Mallory's own node info got through, in her name
            assert {(origin, type(m)) for origin, m in roles.heard} == {(mallory.peer_id, NodeInfo)}
            assert all(m.peer_id == mallory.peer_id for _, m in roles.heard)
        assert b.statistics().gossip_rejected == len(bad)
        assert c.statistics().gossip_rejected == 0  # B forwarded none of it
        assert b.statistics().gossip_penalised_peers == 1  # Mallory, at B
        assert c.statistics().gossip_penalised_peers == 0  # B is not blamed for what it stopped


async def test_a_neighbour_that_keeps_passing_invalid_gossip_is_ignored() -> None:
    async with cluster() as start:
        mallory = rogue("mallory", heartbeat=3.0)  # scores decay per heartbeat: as in a real node
        await start(mallory)
        b, b_roles = honest("b", mallory.addrs(), heartbeat=3.0)
        await start(b)
        await until_heard(mallory, b_roles, timeout=30)
        for n in range(20):  # past the publish threshold of 10 invalid messages
            await mallory.publish(encode(node_info(b.peer_id, running=n)))
        await wait_until(lambda: b.statistics().gossip_blocked_peers == 1, timeout=10)
        heard = len(b_roles.heard)
        for n in range(5):  # now even her valid gossip is dropped unread
            await mallory.publish(encode(node_info(mallory.peer_id, running=100 + n)))
            await trio.sleep(0.1)
        await trio.sleep(1.0)
        assert len(b_roles.heard) == heard
        assert b.statistics().gossip_rejected < 20  # once she was ignored, the rest went unread


async def test_a_neighbour_passing_gossip_too_fast_is_cut_to_its_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host, "GOSSIP_PEER_RATE", 5.0)  # bursts of 10
    async with cluster() as start:
        mallory = rogue("mallory")
        await start(mallory)
        b, b_roles = honest("b", mallory.addrs())
        await start(b)
        await until_heard(mallory, b_roles)
        await trio.sleep(2.5)  # the bucket refills
        before = len(b_roles.heard)
        for n in range(60):  # valid, but all at once
            await mallory.publish(encode(node_info(mallory.peer_id, running=1000 + n)))
        await trio.sleep(2.0)
        got = len(b_roles.heard) - before
        assert 1 <= got <= 10 + 3 * 5  # the burst, and what refilled meanwhile
        assert b.statistics().gossip_rate_limited >= 1
        assert b.statistics().gossip_rejected == 0 and b.statistics().gossip_penalised_peers == 0  # no penalty


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in /metrics:\n{text}")


@pytest.mark.slow
async def test_a_peer_flooding_direct_requests_is_refused_and_an_honest_one_is_not(tmp_path: Path) -> None:
    port = 19087
    with noop_node(tmp_path, port, args=["--peer-rate-limit", "20"]) as ready:
        node = ready["peer_id"]
        async with cluster() as start, httpx.AsyncClient(base_url=ready["api"]) as api:
            flooder = rogue("flooder", ready["addrs"], heartbeat=3.0)
            await start(flooder)
            steady = rogue("steady", ready["addrs"], heartbeat=3.0)
            await start(steady)
            query = encode(StatusQuery(execution_ids=["e-1"]))

            async def flood(replies: list) -> None:
                for _ in range(100):
                    replies.append(decode(await flooder.request(node, query, timeout=10)))

            async def politely(replies: list) -> None:
                for _ in range(15):  # 5 a second, well under 20
                    replies.append(decode(await steady.request(node, query, timeout=10)))
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
            with trio.fail_after(30):
                while True:
                    await flooder.publish(encode(node_info(steady.peer_id)))
                    text = (await api.get("/metrics")).text
                    if metric(text, 'shoal_network_total{event="gossip_rejected"}') >= 1:
                        break
                    await trio.sleep(0.5)
            nodes = (await api.get("/metrics")).text
            assert metric(nodes, 'shoal_peer_requests_total{verdict="rate_limited"}') == len(refused)
            allowed = len(flooded) - len(refused) + len(served)
            assert metric(nodes, 'shoal_peer_requests_total{verdict="allowed"}') == allowed
            assert metric(nodes, "shoal_rate_limited_peers_tracked") == 2
            assert metric(nodes, 'shoal_network{value="gossip_penalised_peers"}') == 1
            assert metric(nodes, 'shoal_network_total{event="gossip_rate_limited"}') == 0
            assert metric(nodes, "shoal_node_table") == 1  # itself: the forged node info was not believed
            assert metric(nodes, 'shoal_node_table_total{event="evicted"}') == 0

            # the node's own requests to itself (offer, bid, result: 3 a job) are never limited
            async with AsyncClient(ready["api"], key=ClientKey.load_or_create(tmp_path / "client.key")) as client:
                done: list = []

                async def one() -> None:
                    done.append(await client.run({"engine": {"name": "noop"}}, timeout=60))

                async with trio.open_nursery() as nursery:
                    for _ in range(30):
                        nursery.start_soon(one)
            assert len(done) == 30 and all(d.job.state.value == "completed" for d in done)
            after = (await api.get("/metrics")).text
            assert metric(after, 'shoal_peer_requests_total{verdict="rate_limited"}') == len(refused)
            assert metric(after, 'shoal_peer_requests_total{verdict="allowed"}') == allowed
