"""Bytes from peers → validated messages → the right role; and roles' messages → bytes.

This is the node's protocol boundary: anything malformed, oversized or unexpected is logged
and answered (or dropped) here and never reaches a role or the store.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol

import trio

from jobs import MalformedMessage, Unreachable
from jobs.messages import (
    Announce,
    Bid,
    Cancel,
    Claim,
    Decision,
    NodeInfo,
    OpenQuery,
    Reply,
    Result,
    StatusQuery,
    SweepAnnounce,
    decode,
    encode,
)

if TYPE_CHECKING:
    from compute import ComputeService
    from requester import RequesterService
    from requester.sweeps import SweepService

log = logging.getLogger("shoal.node")


class Transport(Protocol):
    """Bytes between peers: libp2p in a node, an in-memory hub in protocol tests."""

    peer_id: str

    async def request(self, peer_id: str, data: bytes, *, timeout: float, addrs: Sequence[str] = ()) -> bytes: ...

    async def publish(self, data: bytes) -> None: ...

    def addrs(self) -> list[str]: ...


class Signer(Protocol):
    """The node key (``node.identity.Identity``); protocol tests use named test keys."""

    def sign(self, data: bytes) -> bytes: ...

    def verify(self, peer_id: str, data: bytes, signature: bytes) -> bool: ...


class TransportUnreachable(Exception):
    """What a Transport raises when a peer does not answer; mapped to ``jobs.Unreachable`` here."""


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
        try:
            data = await self.transport.request(peer_id, encode(message), timeout=timeout, addrs=addrs)
        except TransportUnreachable as e:
            raise Unreachable(peer_id, str(e)) from e
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


class Dispatcher:
    """Routes messages to the roles. Requests wait for ``ready``: the network comes up before the
    roles have restored their state, and an answer given before that would be wrong."""

    def __init__(self, requester: RequesterService | None = None, compute: ComputeService | None = None,
                 sweeps: SweepService | None = None) -> None:
        self.requester = requester
        self.compute = compute
        self.sweeps = sweeps
        self.ready = trio.Event()
        self.dropped = 0

    async def on_request(self, peer: str, data: bytes) -> bytes:
        if not self.ready.is_set():
            with trio.move_on_after(READY_WAIT):
                await self.ready.wait()
        try:
            message = decode(data)
        except MalformedMessage as e:
            self.dropped += 1
            log.warning("malformed request from %s: %s", peer, e)
            return encode(Reply(ok=False, reason=str(e)))
        try:
            if isinstance(message, Bid | Result | OpenQuery) and self.requester is not None:
                reply = await self.requester.handle(peer, message)
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
        except Exception:  # a bug or a store failure on one message must not take the node down
            log.exception("handling %s from %s", message.kind, peer)
            return encode(Reply(ok=False, reason="internal error on the receiving node"))
        if reply is None:
            self.dropped += 1
            log.warning("unexpected %s request from %s", message.kind, peer)
            reply = Reply(ok=False, reason=f"this node does not take {message.kind} messages")
        return encode(reply)

    async def on_gossip(self, origin: str, data: bytes) -> None:
        if not self.ready.is_set():
            return  # announcements are repeated; node info is periodic
        try:
            message = decode(data)
        except MalformedMessage as e:
            self.dropped += 1
            log.warning("malformed gossip from %s: %s", origin, e)
            return
        if isinstance(message, Announce):
            if self.compute is not None:
                self.compute.on_announce(origin, message)
        elif isinstance(message, SweepAnnounce):
            if self.compute is not None:
                self.compute.on_sweep_announce(origin, message)
        elif isinstance(message, NodeInfo):
            if self.requester is not None:
                self.requester.on_node_info(origin, message)
        else:
            self.dropped += 1
            log.warning("unexpected %s on gossip from %s", message.kind, origin)
