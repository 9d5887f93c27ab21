"""The dispatcher's flood limits, without a network: which gossip is rejected (and so never forwarded),
that accepted gossip is decoded once, and that a peer over its request rate never reaches a role."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jobs import MalformedMessage
from jobs.messages import Announce, Bid, NodeInfo, Reply, StatusQuery, SweepAnnounce, decode, encode
from jobs.spec import JobSpec, Resources
from jobs.sweep import SweepSpec
from node import dispatch
from node.dispatch import MAX_NODE_INFO_BYTES, Dispatcher, read_gossip
from node.ratelimit import RateLimiter
from node.store import StoreClosed

SPEC = JobSpec(engine={"name": "noop"})
ROOM = Resources(cpu=4, memory="8GiB", disk="10GiB")


def node_info(peer: str, **kw) -> NodeInfo:
    return NodeInfo(peer_id=peer, max_per_job=ROOM, total=ROOM, free=ROOM, **kw)


def sweep(requester: str) -> SweepAnnounce:
    return SweepAnnounce(sweep_id="s-1", spec=SweepSpec(job=SPEC, grid={"x": ["1", "2"]}), requester=requester)


@pytest.mark.parametrize("message", [
    Announce(job_id="j-1", spec=SPEC, requester="alice"), node_info("alice"), sweep("alice"),
])
def test_gossip_from_its_sender_is_read(message) -> None:
    assert read_gossip("alice", encode(message)) == message


@pytest.mark.parametrize("data, why", [
    (b"\xff", "invalid message"),
    (b'{"kind":"announce","v":1}', "invalid message"),
    (encode(Bid(job_id="j", execution_id="e")), "bid is not a gossip message"),
    (encode(Reply()), "reply is not a gossip message"),
    (encode(Announce(job_id="j-1", spec=SPEC, requester="bob")), "claims to come from 'bob'"),
    (encode(sweep("bob")), "claims to come from 'bob'"),
    (encode(node_info("bob")), "claims to come from 'bob'"),
    (encode(node_info("alice", addrs=["/dns4/" + "x" * 1000] * 16)), f"exceeds {MAX_NODE_INFO_BYTES}"),
    (encode(node_info("alice")).replace(b'"engines":[]', b'"engines":["noop [/x]"]'), "invalid message"),
    (encode(node_info("alice")).replace(b'"engines":[]', b'"engines":["\\u001b[2J"]'), "invalid message"),
])
def test_gossip_that_is_malformed_misplaced_forged_or_oversized_is_refused(data: bytes, why: str) -> None:
    with pytest.raises(MalformedMessage, match=why):
        read_gossip("alice", data)


def test_an_honest_node_info_is_far_below_the_size_limit() -> None:
    addrs = [f"/ip4/10.0.0.{i}/tcp/9700/p2p/12D3KooW{'a' * 44}" for i in range(16)]
    honest = node_info("12D3KooW" + "a" * 44, addrs=addrs, engines=["noop", "docker", "wasm", "python"], boot="b" * 32)
    assert len(encode(honest)) < MAX_NODE_INFO_BYTES / 2


class Requester:
    def __init__(self) -> None:
        self.heard: list[tuple[str, NodeInfo]] = []

    def on_node_info(self, origin: str, info: NodeInfo) -> None:
        self.heard.append((origin, info))


async def test_gossip_the_validator_accepted_is_delivered_without_decoding_it_again(monkeypatch) -> None:
    requester = Requester()
    d = Dispatcher(requester=requester)  # type: ignore[arg-type]
    d.ready.set()
    decodes = 0
    real = dispatch.decode

    def counting(data: bytes):
        nonlocal decodes
        decodes += 1
        return real(data)

    monkeypatch.setattr(dispatch, "decode", counting)
    data = encode(node_info("alice"))
    assert d.check_gossip("alice", data)
    await d.on_gossip("alice", bytes(data))  # the network hands over an equal copy
    assert decodes == 1 and requester.heard == [("alice", node_info("alice"))]
    assert not d.check_gossip("mallory", data)  # forged: rejected, nothing kept
    await d.on_gossip("alice", data)  # without a validator (our own gossip): read here
    assert decodes == 3 and len(requester.heard) == 2


async def test_gossip_a_validator_never_saw_is_still_checked_and_what_is_kept_is_bounded() -> None:
    requester = Requester()
    d = Dispatcher(requester=requester)  # type: ignore[arg-type]
    d.ready.set()
    await d.on_gossip("mallory", encode(node_info("alice")))
    assert requester.heard == [] and d.dropped == 1
    for n in range(dispatch.CHECKED_GOSSIP * 3):  # accepted, then lost by the network before delivery
        assert d.check_gossip("alice", encode(node_info("alice", running=n)))
    assert len(d._checked) == dispatch.CHECKED_GOSSIP


class Compute:
    def __init__(self) -> None:
        self.handled = 0

    async def handle(self, peer: str, message) -> Reply:
        self.handled += 1
        return Reply(verdict="accepted")


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


async def test_a_peer_over_its_request_rate_gets_a_refusal_and_never_reaches_a_role() -> None:
    compute, clock = Compute(), Clock()
    d = Dispatcher(compute=compute, rate_limiter=RateLimiter(10, 20, clock=clock), node_id="me")  # type: ignore[arg-type]
    d.ready.set()
    query = encode(StatusQuery(execution_ids=["e-1"]))
    replies = [decode(await d.on_request("flooder", query)) for _ in range(50)]
    assert [r.ok for r in replies] == [True] * 20 + [False] * 30
    assert replies[-1].reason.startswith("rate limited: over 10 requests/s (burst 20)")
    assert compute.handled == 20
    honest = [decode(await d.on_request("honest", query)) for _ in range(5)]  # another peer: unaffected
    ours = [decode(await d.on_request("me", query)) for _ in range(100)]  # our own roles: never limited
    assert all(r.ok and r.verdict == "accepted" for r in honest + ours)
    clock.now += 1.0  # ten more a second
    assert sum([decode(await d.on_request("flooder", query)).ok for _ in range(20)]) == 10
    assert d.rate_limiter.statistics().refused == 40
    assert compute.handled == 20 + 5 + 100 + 10


async def test_without_a_limiter_nothing_is_refused() -> None:
    compute = Compute()
    d = Dispatcher(compute=SimpleNamespace(handle=compute.handle))  # type: ignore[arg-type]
    d.ready.set()
    query = encode(StatusQuery(execution_ids=["e-1"]))
    assert all([decode(await d.on_request("p", query)).ok for _ in range(500)])


async def test_a_request_racing_the_store_closing_gets_a_plain_refusal_not_an_error_log(caplog) -> None:
    """At shutdown a role's write can meet a closed store: the sender hears why, the log holds no traceback."""
    async def handle(peer: str, message) -> Reply:
        raise StoreClosed("the store is shutting down")

    d = Dispatcher(compute=SimpleNamespace(handle=handle))  # type: ignore[arg-type]
    d.ready.set()
    reply = decode(await d.on_request("p", encode(StatusQuery(execution_ids=["e-1"]))))
    assert not reply.ok and reply.reason == "the receiving node is shutting down"
    assert not [r for r in caplog.records if r.levelname == "ERROR" or r.exc_info]


@pytest.mark.parametrize("data", [b'{"kind":"bogus","v":1}', encode(Bid(job_id="j-1", execution_id="x"))])
async def test_a_flood_of_malformed_or_unexpected_requests_logs_a_line_every_few_seconds(caplog, data) -> None:
    """A peer under the rate limit sending 1,000 malformed requests a second wrote 1,000 warnings a second (1.9 GB
    of log an hour); each kind of refusal is now logged once every WARN_EVERY seconds, saying how many it left out."""
    now = [0.0]
    d = Dispatcher(clock=lambda: now[0])  # no roles: a bid is not taken here
    d.ready.set()
    for second in range(3):
        now[0] = second * 5.0
        for _ in range(1000):
            assert not decode(await d.on_request("p", data)).ok
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 2 and "(1999 more like it in the last 10 s)" in warnings[1], warnings
