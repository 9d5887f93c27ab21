"""Private networks on real libp2p: a peer without the network key, or not on the trusted list,
hears nothing, reaches nothing and is counted; peers that belong work as usual.

The first tests run ``node.net.Network`` hosts in one trio process; the last runs a real node
process (a private ``Devstack``) against rogue peers with and without its key.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from devstack import Devstack
from jobs.errors import PeerError
from jobs.messages import Announce, Bid, encode
from node.net import Network
from node.net.admission import OPEN, Admission, load_network_key
from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, free_base_port, metrics

KEY = bytes(range(32))
OTHER_KEY = bytes(range(1, 33))
HANDSHAKE_GIVE_UP = 15.0  # a refused dial fails within the 8 s handshake bound


class Peer:
    """A ``Network`` that records what reached it."""

    def __init__(self, name: str, admission: Admission = OPEN) -> None:
        self.gossip: list[tuple[str, bytes]] = []
        self.requests: list[tuple[str, bytes]] = []
        self.net = Network(seed=hashlib.sha256(name.encode()).digest(), listen=["/ip4/127.0.0.1/tcp/0"], peers=[],
                           on_gossip=self._on_gossip, on_request=self._on_request, gossip_heartbeat=0.5,
                           admission=admission)
        self.id = self.net.peer_id

    async def _on_gossip(self, origin: str, data: bytes) -> None:
        self.gossip.append((origin, data))

    async def _on_request(self, peer: str, data: bytes) -> bytes:
        self.requests.append((peer, data))
        return b"ok:" + data

    async def call(self, other: Peer, data: bytes) -> bytes:
        return await self.net.request(other.id, data, timeout=HANDSHAKE_GIVE_UP, addrs=other.net.addrs())


@asynccontextmanager
async def running(*peers: Peer) -> AsyncIterator[None]:
    async with trio.open_nursery() as nursery:
        for p in peers:
            await nursery.start(p.net.run)
        yield
        nursery.cancel_scope.cancel()


async def refused(caller: Peer, callee: Peer, why: str = "") -> None:
    with pytest.raises(PeerError) as caught:
        await caller.call(callee, b"let me in")
    assert why in caught.value.why


async def gossip_until_heard(sender: Peer, hearer: Peer, *, timeout: float = 15.0) -> bytes:
    """Publish numbered messages until ``hearer`` has one (gossip needs a mesh first)."""
    with trio.fail_after(timeout):
        n = 0
        while not hearer.gossip:
            await sender.net.publish(b"announce %d" % n)
            n += 1
            await trio.sleep(0.2)
    return hearer.gossip[0][1]


async def test_peers_without_the_key_hear_nothing_and_reach_nothing() -> None:
    node, member = Peer("node", Admission(network_key=KEY)), Peer("member", Admission(network_key=KEY))
    keyless, wrong_key = Peer("keyless"), Peer("wrong-key", Admission(network_key=OTHER_KEY))
    async with running(node, member, keyless, wrong_key):
        # outsiders dial the node and the node dials them (e.g. addresses heard of): all refused
        async with trio.open_nursery() as nursery:
            for outsider in (keyless, wrong_key):
                nursery.start_soon(refused, outsider, node)
                nursery.start_soon(refused, node, outsider, "the handshake failed under our network key")
        # a member with the key: requests and gossip as usual, both ways
        assert await member.call(node, b"bid") == b"ok:bid"
        assert await node.call(member, b"status") == b"ok:status"
        heard = await gossip_until_heard(node, member)
        assert heard.startswith(b"announce")
        for _ in range(5):  # and more announcements while the outsiders keep trying
            await node.net.publish(b"announce more")
            with trio.move_on_after(0.2):
                await refused(keyless, node)
        assert node.net.connected_peers() == [member.id]
        assert keyless.net.connected_peers() == [] and wrong_key.net.connected_peers() == []
        stats = node.net.statistics()
    assert [p for p, _ in node.requests] == [member.id]  # nothing of theirs reached the node
    assert keyless.gossip == [] and wrong_key.gossip == [] and keyless.requests == [] and wrong_key.requests == []
    assert stats.peers_refused_key >= 4 and stats.peers_refused_untrusted == 0


@pytest.mark.parametrize("key", [KEY, None], ids=["with-key", "trusted-list-only"])
async def test_trusted_peers_exclude_a_peer_outside_the_list_even_with_the_key(key: bytes | None) -> None:
    friend, stranger = Peer("friend", Admission(network_key=key)), Peer("stranger", Admission(network_key=key))
    node = Peer("node", Admission(network_key=key, trusted_peers=frozenset({friend.id})))
    async with running(node, friend, stranger):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(refused, stranger, node)
            nursery.start_soon(refused, node, stranger, "not a trusted peer")  # the node's own dials too
        assert await friend.call(node, b"bid") == b"ok:bid"
        await gossip_until_heard(node, friend)
        assert node.net.connected_peers() == [friend.id]
        stats = node.net.statistics()
    assert [p for p, _ in node.requests] == [friend.id]
    assert stranger.gossip == [] and stranger.requests == []
    assert stats.peers_refused_untrusted >= 2 and stats.peers_refused_key == 0


async def test_gossip_relayed_from_an_untrusted_origin_is_dropped() -> None:
    """A trusts only B; B (open) relays C's gossip: A hears B's own messages, never C's."""
    b = Peer("relay", Admission(network_key=KEY))
    c = Peer("origin", Admission(network_key=KEY))
    a = Peer("node", Admission(network_key=KEY, trusted_peers=frozenset({b.id})))
    async with running(a, b, c):
        assert await a.call(b, b"hi") == b"ok:hi" and await c.call(b, b"hi") == b"ok:hi"
        await gossip_until_heard(c, b)  # C's gossip reaches B ...
        await gossip_until_heard(b, a)  # ... and the mesh B-A carries gossip
        for _ in range(10):
            await c.net.publish(b"from c")
            await trio.sleep(0.1)
        await trio.sleep(1.0)
    assert {origin for origin, _ in a.gossip} == {b.id}  # ... but none of C's reached A's handler


# -- a real node process, rogue peers with and without its key --------------------------------------


@pytest.mark.slow
async def test_a_rogue_without_the_network_key_never_hears_an_announcement_and_cannot_bid(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(1, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(1), network_key=True,
                         node_args={0: ["--no-compute"]}, write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        node = stack.nodes[0]
        assert stack.network_key is not None and len(load_network_key(stack.network_key)) == 32
        async with (RoguePeer([node.addrs[0]], network_key=stack.network_key) as member,
                    RoguePeer([]) as outsider):
            outsider.network.add_peer_addrs(node.peer_id, node.addrs)
            await member.wait_mesh([node.peer_id])
            job_id = (await client.submit({"engine": {"name": "noop"}, "env": {"CASE": "private"}})).job.id
            # no compute node: the job is gossiped, and re-announced, to everyone on the network
            _, announce = await member.wait_gossip(lambda o, m: isinstance(m, Announce) and m.job_id == job_id)
            assert isinstance(announce, Announce)
            # the outsider has the announcement (as if leaked) and the address, and still cannot bid
            bid = Bid(job_id=job_id, execution_id="e-outsider", attempt=announce.attempt)
            with pytest.raises(PeerError):
                await outsider.network.request(node.peer_id, encode(bid), timeout=HANDSHAKE_GIVE_UP,
                                               addrs=node.addrs)
            await trio.sleep(2.0)  # re-announcements go on meanwhile
            assert outsider.gossip == [] and outsider.requests == [] and outsider.network.connected_peers() == []
            described = await client.describe(job_id)
            assert [x.node_id for x in described.executions] == []  # no bid of the outsider's landed
            # the member bids as any node would, and is accepted
            execution_id, reply = await member.bid(announce)
            assert reply.verdict == "accepted"
            described = await client.describe(job_id)
            assert [(x.id, x.node_id) for x in described.executions] == [(execution_id, member.peer_id)]
        counts = await metrics(node.api)
    assert counts['shoal_network_total{event="peers_refused_key"}'] >= 1
    assert counts['shoal_network_total{event="peers_refused_untrusted"}'] == 0



@pytest.mark.parametrize("listen", ["/ip4/127.0.0.1/udp/0/quic-v1", "/ip4/127.0.0.1/tcp/0/ws"])
def test_a_private_network_listens_on_plain_tcp_only(listen: str) -> None:
    """Other transports would carry connections past the key (QUIC is multiplexed before any upgrade)."""
    async def nothing(*args: object) -> bytes:
        return b""

    with pytest.raises(ValueError, match="plain TCP only"):
        Network(seed=bytes(32), listen=[listen], peers=[], on_gossip=nothing, on_request=nothing,
                admission=Admission(network_key=KEY))
    Network(seed=bytes(32), listen=[listen], peers=[], on_gossip=nothing, on_request=nothing)  # open: as before
