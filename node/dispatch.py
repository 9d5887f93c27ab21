"""Bytes from peers → validated messages → the right role; and roles' messages → bytes.

This is the node's protocol boundary: anything malformed, oversized or unexpected is logged
and answered (or dropped) here and never reaches a role or the store. A peer over its request rate
gets a canned refusal before its request is even decoded; gossip that ``read_gossip`` refuses is
rejected by the network's validator, so it is not forwarded to anyone either.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from jobs import MalformedMessage, Unreachable, Unsendable
from jobs.messages import (
    MAX_MESSAGE_BYTES,
    Announce,
    Bid,
    Cancel,
    Claim,
    Decision,
    NodeInfo,
    OpenQuery,
    Output,
    Reply,
    Result,
    StatusQuery,
    SweepAnnounce,
    decode,
    encode,
)
from node.ratelimit import RateLimiter, SpacedWarnings
from node.store import StoreClosed

if TYPE_CHECKING:
    from compute import ComputeService
    from requester import RequesterService
    from requester.sweeps import SweepService

log = logging.getLogger("shoal.node")


class Transport(Protocol):
    """Bytes between peers: libp2p in a node, an in-memory hub in protocol tests.

    ``request`` raises ``jobs.Unreachable`` when the dial or the stream fails and
    ``jobs.PeerTimeout`` when the peer does not answer within ``timeout``.
    """

    peer_id: str

    async def request(self, peer_id: str, data: bytes, *, timeout: float, addrs: Sequence[str] = ()) -> bytes: ...

    async def publish(self, data: bytes) -> None: ...

    def addrs(self) -> list[str]: ...


class Signer(Protocol):
    """The node key (``node.identity.Identity``); protocol tests use named test keys."""

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, peer_id: str, data: bytes, signature: bytes) -> bool: ...


class MessagePeers:
    """The roles' ``Peers`` over any ``Transport``: encodes, decodes and maps errors once."""

    def __init__(self, transport: Transport, dispatcher: Dispatcher, identity: Signer) -> None:
        self.transport = transport
        self.dispatcher = dispatcher  # gossip never comes back to its sender: deliver our own here
        self.identity = identity
        self.node_id = transport.peer_id

    def sign(self, data: bytes) -> bytes:
        return self.identity.sign(data)

    def verify(self, peer_id: str, data: bytes, signature: bytes) -> bool:
        return self.identity.verify(peer_id, data, signature)

    def addrs(self) -> list[str]:
        return self.transport.addrs()

    async def request(self, peer_id: str, message, *, timeout: float, addrs: Sequence[str] = ()) -> Reply:
        """The peer's reply; ``Unreachable`` or ``PeerTimeout`` (from the transport) when none comes,
        ``Unreachable`` when what comes back is not a reply, ``Unsendable`` when ``message`` is larger than
        any peer reads (its size grew with what peers sent: ids, error texts)."""
        data = encode(message)
        if len(data) > MAX_MESSAGE_BYTES:
            raise Unsendable(peer_id, f"a {message.kind} message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
        data = await self.transport.request(peer_id, data, timeout=timeout, addrs=addrs)
        try:
            reply = decode(data)
        except MalformedMessage as e:
            raise Unreachable(peer_id, f"unreadable reply: {e}") from e
        if not isinstance(reply, Reply):
            raise Unreachable(peer_id, f"expected a reply, got {reply.kind}")
        return reply

    async def publish(self, message: Announce | NodeInfo | SweepAnnounce) -> None:
        data = encode(message)
        await self.transport.publish(data)
        await self.dispatcher.on_gossip(self.node_id, data)


READY_WAIT = 30.0  # a peer's request that arrives while we start waits this long for the roles
MAX_NODE_INFO_BYTES = 8192
"""Node info on the wire: an honest one is well under 2 KiB. Bounds what a requester's node table holds."""
CHECKED_GOSSIP = 64
"""Gossip messages decoded by the network's validator, kept until on_gossip takes them (decoded once).
Normally a few are in flight; under a backlog older ones are forgotten and decoded again."""

GossipMessage = Announce | NodeInfo | SweepAnnounce


def read_gossip(origin: str, data: bytes) -> GossipMessage:
    """A gossip message from ``origin`` (the peer that signed it), or ``MalformedMessage`` saying why it
    must be neither delivered nor forwarded: it does not decode, is not a gossip kind, claims another
    sender than ``origin``, or is node info over ``MAX_NODE_INFO_BYTES``."""
    message = decode(data)
    if isinstance(message, Announce | SweepAnnounce):
        claimed = message.requester
    elif isinstance(message, NodeInfo):
        claimed = message.peer_id
        if len(data) > MAX_NODE_INFO_BYTES:
            raise MalformedMessage(f"node info of {len(data)} bytes exceeds {MAX_NODE_INFO_BYTES}")
    else:
        raise MalformedMessage(f"{message.kind} is not a gossip message")
    if claimed != origin:
        raise MalformedMessage(f"{message.kind} claims to come from {claimed!r}, not its sender")
    return message


class Dispatcher:
    """Routes messages to the roles. Requests wait for ``ready``: the network comes up before the
    roles have restored their state, and an answer given before that would be wrong."""

    def __init__(self, requester: RequesterService | None = None, compute: ComputeService | None = None,
                 sweeps: SweepService | None = None, *, rate_limiter: RateLimiter | None = None,
                 node_id: str = "", clock: Callable[[], float] = time.monotonic) -> None:
        self.requester = requester
        self.compute = compute
        self.sweeps = sweeps
        self.ready = trio.Event()
        self.dropped = 0
        self.rate_limiter = rate_limiter  # None: no limit on direct requests
        self.node_id = node_id  # our own requests (to our own roles) are never limited
        self.clock = clock  # spaces out repeated warnings
        self._checked: OrderedDict[tuple[str, bytes], GossipMessage] = OrderedDict()
        self._warnings = SpacedWarnings(log, clock=clock)
        self._rate_limited_reply = b""
        if rate_limiter is not None:
            self._rate_limited_reply = encode(Reply(ok=False, reason=(
                f"rate limited: over {rate_limiter.rate:g} requests/s (burst {rate_limiter.burst:g}) from one peer")))

    async def on_request(self, peer: str, data: bytes) -> bytes:
        limiter = self.rate_limiter
        if limiter is not None and peer != self.node_id and not limiter.allow(peer):
            # before anything else: a flood costs a dict lookup and a canned reply, never the roles or the store
            self._warnings.warn("rate", "refusing requests from %s: over the rate limit (%d refused so far, all peers)",
                       peer, limiter.refused)
            return self._rate_limited_reply
        if not self.ready.is_set():
            with trio.move_on_after(READY_WAIT):
                await self.ready.wait()
        try:
            message = decode(data)
        except MalformedMessage as e:
            self.dropped += 1
            self._warnings.warn("malformed", "malformed request from %s: %s", peer, e)
            return encode(Reply(ok=False, reason=str(e)))
        try:
            if isinstance(message, Bid | Result | OpenQuery) and self.requester is not None:
                reply = await self.requester.handle(peer, message)
            elif isinstance(message, Output) and self.requester is not None:
                reply = self.requester.take_output(peer, message)
            elif isinstance(message, Claim) and self.sweeps is not None:
                reply = await self.sweeps.handle(peer, message)
            elif isinstance(message, Decision | Cancel | StatusQuery) and self.compute is not None:
                reply = await self.compute.handle(peer, message)
            elif isinstance(message, Announce) and self.compute is not None:
                # a first announcement sent to the nodes it names; "pending": a bid follows
                bidding = self.compute.on_announce(peer, message)
                reply = Reply(verdict="pending" if bidding else "rejected")
            else:
                reply = None
        except StoreClosed:  # the node is stopping: the sender asks again elsewhere or later
            log.info("not handling %s from %s: the node is shutting down", message.kind, peer)
            return encode(Reply(ok=False, reason="the receiving node is shutting down"))
        except Exception:  # a bug or a store failure on one message must not take the node down
            log.exception("handling %s from %s", message.kind, peer)
            return encode(Reply(ok=False, reason="internal error on the receiving node"))
        if reply is None:
            self.dropped += 1
            self._warnings.warn("unexpected", "unexpected %s request from %s", message.kind, peer)
            reply = Reply(ok=False, reason=f"this node does not take {message.kind} messages")
        return encode(reply)

    def check_gossip(self, origin: str, data: bytes) -> bool:
        """The network's gossip validator: False rejects the message (not delivered, not forwarded,
        held against the peer that sent it to us). What passes is kept decoded for on_gossip."""
        try:
            message = read_gossip(origin, data)
        except MalformedMessage as e:
            self._warnings.warn("gossip", "rejected gossip from %s: %s", origin, e)
            return False
        self._checked[(origin, data)] = message
        if len(self._checked) > CHECKED_GOSSIP:  # the network dropped some before on_gossip
            self._checked.popitem(last=False)
        return True

    async def on_gossip(self, origin: str, data: bytes) -> None:
        message = self._checked.pop((origin, data), None)
        if not self.ready.is_set():
            return  # announcements are repeated; node info is periodic
        if message is None:  # our own, or not seen by a validator (in-memory test networks)
            try:
                message = read_gossip(origin, data)
            except MalformedMessage as e:
                self.dropped += 1
                self._warnings.warn("gossip", "dropped gossip from %s: %s", origin, e)
                return
        if isinstance(message, Announce):
            if self.compute is not None:
                self.compute.on_announce(origin, message)
        elif isinstance(message, SweepAnnounce):
            if self.compute is not None:
                self.compute.on_sweep_announce(origin, message)
        elif self.requester is not None:  # NodeInfo
            self.requester.on_node_info(origin, message)
