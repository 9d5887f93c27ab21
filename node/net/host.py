"""``Network``: Shoal's trio service over py-libp2p (TCP, Noise, Yamux, GossipSub).

This is the only place in Shoal that touches libp2p. Everything crossing its
boundary is ``bytes`` and base58 peer-id strings; every libp2p exception is
turned into one of Shoal's: ``jobs.Unreachable`` (a dial or stream failed) or
``jobs.PeerTimeout`` (no reply in time) for a request, ``NetworkError`` for the
network itself.
"""

from __future__ import annotations

import contextlib
import functools
import ipaddress
import logging
import os
import socket
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import multiaddr
import trio

# py-libp2p's yamux sends a WINDOW_UPDATE frame after every read unless told to batch like
# go-yamux (update once half the window is consumed). With small request/reply frames that
# doubled the encrypted writes per message; profiled at ~14 % of a node's CPU under load.
os.environ.setdefault("PY_YAMUX_RELEASE_ON_READ", "0")

from libp2p import new_host
from libp2p.abc import IHost, IMuxedConn, INetConn, INetStream, INetwork, INotifee
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.crypto.x25519 import create_new_key_pair as create_new_x25519_key_pair
from libp2p.custom_types import TProtocol
from libp2p.network.config import RetryConfig
from libp2p.network.connection.raw_connection import RawConnection
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub
from libp2p.pubsub.rpc_queue import RpcQueue
from libp2p.pubsub.score import ScoreParams, TopicScoreParams
from libp2p.security.noise.transport import PROTOCOL_ID as NOISE_PROTOCOL_ID
from libp2p.security.noise.transport import Transport as NoiseTransport
from libp2p.stream_muxer.yamux.yamux import PROTOCOL_ID as YAMUX_PROTOCOL_ID
from libp2p.stream_muxer.yamux.yamux import Yamux
from libp2p.tools.anyio_service import background_trio_service
from libp2p.transport.exceptions import SecurityUpgradeFailure

from jobs.errors import PeerError, PeerTimeout, Unreachable
from node.net import eager_io, pubsub_records, yamux_credit, yamux_window, yamux_writes
from node.net.admission import OPEN, Admission
from node.net.errors import NetworkError
from node.net.links import Counters, OutboundLink, PartialFrames, discard_stream, serve_inbound, warnings
from node.net.wire import DEFAULT_MAX_FRAME, PROTOCOL_ID
from node.ratelimit import RateLimiter

log = logging.getLogger(__name__)
pubsub_records.install()
yamux_credit.install()
yamux_window.install()
yamux_writes.install()
eager_io.install()

RPC_PROTOCOL = TProtocol(PROTOCOL_ID)
GOSSIP_PROTOCOL = TProtocol("/meshsub/1.1.0")

REDIAL_MIN = 0.2
REDIAL_MAX = 10.0
STABLE_AFTER = 10.0
"""A connection that stayed up this long resets the redial backoff."""
DIAL_TIMEOUT = 10.0
STREAM_OPEN_TIMEOUT = 10.0
"""A ``new_stream`` negotiation was once seen hanging for 10 s: always bound it."""
CONNECTED_POLL = 1.0
HANDSHAKE_TIMEOUT = 8.0
"""Bound on a connection's security handshake (libp2p's own, for the whole upgrade, is 10 s):
a peer without the network key often stalls it, reading our bytes as a long message."""
PUBLISH_TIMEOUT = 2.0
SHUTDOWN_TIMEOUT = 5.0
GOSSIP_QUEUE = 1024
"""Gossip messages buffered between libp2p's (32-slot) subscription and on_gossip."""
MAX_GOSSIP = (1 << 20) - 4096
"""libp2p rejects pubsub RPCs over 1 MiB; leave room for signature, key, topic."""
EQUIVOCATION_CACHE = 512
MAX_ADDRS_PER_PEER = 8
MAX_KNOWN_PEERS = 10_000
ADDRS_CACHE_SECONDS = 5.0
GOSSIP_HEARTBEAT = 3.0
"""Seconds between gossipsub heartbeats (mesh upkeep, IHAVE gossip, message-cache shift).
The message cache holds the last five heartbeats of messages, so this also bounds the
protobuf messages a node keeps: about 15 s of traffic."""

GOSSIP_PEER_RATE = 500.0
"""Gossip messages per second a neighbour may pass us (it relays everyone's), in bursts of up to
twice that; the rest is dropped unread. py-libp2p carries ~500 msg/s at most before it loses
messages, so an honest neighbour stays below. (libp2p's own spam protection stays off: it allows
10 msg/s, counts our own publishes, scans a list per message and logs a WARNING per drop.)"""
INVALID_GOSSIP_WEIGHT = 10.0
"""Score lost per message a neighbour passes us that fails validation (honest nodes validate the
same way before forwarding, so they never pass one). Decays by INVALID_GOSSIP_DECAY per heartbeat."""
INVALID_GOSSIP_DECAY = 0.99
"""Per heartbeat (3 s): a penalty halves in about 3.5 minutes. A neighbour ignored after 11 invalid
messages (what it sends then is not validated, so not counted) is heard again after about 30 s,
and ignored again at its next invalid message."""
GOSSIP_SCORE = ScoreParams(
    p4_invalid_messages=TopicScoreParams(weight=INVALID_GOSSIP_WEIGHT, cap=1000.0, decay=INVALID_GOSSIP_DECAY),
    gossip_threshold=-5 * INVALID_GOSSIP_WEIGHT,  # 5 invalid messages: we stop telling it what we have (IHAVE)
    publish_threshold=-10 * INVALID_GOSSIP_WEIGHT,  # past 10: we neither send it gossip nor read what it sends,
    graylist_threshold=-10 * INVALID_GOSSIP_WEIGHT,  # and it may not join our mesh (GRAFT refused)
)
"""py-libp2p's peer scoring, used for one thing: neighbours passing invalid gossip. The other parts
(time in mesh, deliveries, IP colocation, behaviour penalties) keep weight 0: py-libp2p counts them
too crudely to judge honest peers by. What py-libp2p 0.8.1 cannot do: keep a score once the peer
disconnects (it reconnects with a clean slate; go-libp2p retains it), "ignore" a message without
penalising its sender (a validator only accepts or rejects), or limit by origin rather than by
neighbour (valid gossip signed by many identities is bounded only by GOSSIP_PEER_RATE per relay)."""
PEER_NAMES = 4096
# inbound rpc streams one peer may hold at once: an honest one keeps one (``OutboundLink``), and one more each time
# it replaced a link broken on a connection whose end we have not seen yet (a half-open TCP connection lasts
# minutes); 800 streams of one peer each held an unfinished megabyte
INBOUND_STREAMS_PER_PEER = 8
"""Gossip origins whose base58 ids are kept (libp2p computes them in pure Python: ~25 us each)."""

GossipHandler = Callable[[str, bytes], Awaitable[None]]
RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
GossipValidator = Callable[[str, bytes], bool]
"""``(origin, data) -> ok``: False rejects a gossip message (not delivered, not forwarded, counted
against the neighbour that passed it). ``origin`` is the peer that signed it."""


@dataclass(frozen=True)
class NetworkStatistics:
    """Counters since ``Network`` was created (a snapshot; cheap to take).

    ``requests_*`` count outbound requests (sent / failed with ``PeerError``)
    and inbound ones handled (``received``; requests to ourselves count as both).
    ``handler_errors``: on_request raised or returned something unusable, so no
    reply was sent. ``gossip_received`` counts messages handed to on_gossip;
    ``gossip_dropped`` those lost because on_gossip fell behind; ``gossip_unsent``: messages (ours or relayed)
    not sent to a neighbour, as its outbound queue was full.
    ``frames_rejected``: malformed or oversized frames, and streams closed in
    the middle of a frame; also streams of gossip or libp2p's own protocols
    dropped on what a peer sent. ``open_streams``: rpc streams open now, both ways.
    ``gossip_cached``: messages libp2p keeps now to answer IWANTs (about five heartbeats' worth).
    ``peers_refused_key``: connections (either way) whose handshake failed while the node has a
    network key: the peer lacks the key (or dropped the connection mid-handshake).
    ``peers_refused_untrusted``: connections closed because the peer is not a trusted peer.
    ``gossip_rejected``: messages the validator refused (neither delivered nor forwarded);
    ``gossip_rate_limited``: messages dropped unread because their neighbour passed over GOSSIP_PEER_RATE.
    ``gossip_penalised_peers`` / ``gossip_blocked_peers``: neighbours whose score is below zero now
    (they passed invalid gossip lately) / below the publish threshold (ignored until it decays).
    """

    connected_peers: int
    requests_sent: int
    requests_received: int
    requests_failed: int
    handler_errors: int
    gossip_published: int
    gossip_publish_failed: int
    gossip_received: int
    gossip_dropped: int
    frames_rejected: int
    open_streams: int
    gossip_cached: int = 0
    peers_refused_key: int = 0
    peers_refused_untrusted: int = 0
    gossip_rejected: int = 0
    gossip_rate_limited: int = 0
    gossip_penalised_peers: int = 0
    gossip_blocked_peers: int = 0
    gossip_unsent: int = 0


OUTBOUND_QUEUE = 64
"""Messages waiting to be sent to one neighbour before more are dropped. libp2p's own 32 lost the tail of
every burst of announcements a requester sent (568 of 600), when ``publish`` let no sender run between
them. A stalled neighbour holds this many at most: each message is a copy of up to MAX_GOSSIP bytes."""


class _PeerQueues(dict[ID, RpcQueue]):
    """libp2p's outbound queue per neighbour (``Pubsub.peer_queues``), each made to hold OUTBOUND_QUEUE messages
    and to count the published messages it drops: libp2p makes each queue with its default and logs drops
    at debug level only."""

    def __init__(self, counters: Counters) -> None:
        super().__init__()
        self._counters = counters

    def __setitem__(self, peer: ID, queue: RpcQueue) -> None:
        queue._queue.max_size = OUTBOUND_QUEUE  # no way to pass it: libp2p makes the queue and its sender together
        push = queue.push

        def counted(rpc: rpc_pb2.RPC, priority: bool = False) -> bool:
            queued = push(rpc, priority)
            if not queued:
                self._counters.gossip_unsent += len(rpc.publish)
            return queued

        queue.push = counted  # type: ignore[method-assign]
        super().__setitem__(peer, queue)


class _Pubsub(Pubsub):
    """libp2p's Pubsub, dropping what a neighbour passes over its rate before anything else (seen
    cache, signature, validation, delivery): a flood costs a dict lookup per message."""

    def __init__(self, host: IHost, router: GossipSub, *, rate: RateLimiter, counters: Counters) -> None:
        super().__init__(host, router)
        self._rate = rate
        self._counters = counters
        self.peer_queues = _PeerQueues(counters)
        self.deliver: Callable[[rpc_pb2.Message], None] | None = None

    async def push_msg(self, msg_forwarder: ID, msg: rpc_pb2.Message) -> None:
        if msg_forwarder != self.my_id and not self._rate.allow(msg_forwarder):
            self._counters.gossip_rate_limited += 1
            return
        await super().push_msg(msg_forwarder, msg)

    def notify_subscriptions(self, publish_message: rpc_pb2.Message) -> None:
        """Hand a message of our topic to ``deliver``, in place of libp2p's 32-message channel: that one
        dropped bursts with a log line and no count (5,600 lost in a minute on a node of a busy devstack)."""
        if self.deliver is None or not any(topic in self.topic_ids for topic in publish_message.topicIDs):
            return super().notify_subscriptions(publish_message)
        self.deliver(publish_message)


class _GuardedHandlers(dict[Any, Any]):
    """libp2p's stream handlers by protocol, each wrapped so that what a peer sends on one stream can end
    that stream and no more. libp2p lets a handler's error travel up to the host: one 7-byte gossip frame
    that protobuf could not parse stopped the whole node (its pubsub reader catches only its own errors).
    Wraps the handlers there are and every one set later (``multiselect.add_handler`` sets items)."""

    def __init__(self, handlers: dict[Any, Any], counters: Counters) -> None:
        super().__init__()
        self._counters = counters
        for protocol, handler in handlers.items():
            self[protocol] = handler

    def __setitem__(self, protocol: Any, handler: Any) -> None:
        super().__setitem__(protocol, None if handler is None else self._guarded(protocol, handler))

    def _guarded(self, protocol: Any, handler: Callable[[Any], Awaitable[None]]) -> Callable[[Any], Awaitable[None]]:
        async def guarded(stream: Any) -> None:
            try:
                await handler(stream)
            except Exception as exc:  # not Cancelled (a BaseException): shutting down still ends it
                self._counters.frames_rejected += 1
                peer = getattr(getattr(stream, "muxed_conn", None), "peer_id", "?")
                log.info("dropped a %s stream from %s on what it sent: %r", protocol, peer, exc)
                await discard_stream(stream)
        return guarded


class _BoundedDict(OrderedDict[Any, Any]):
    """Insertion-ordered dict that forgets its oldest entries beyond ``maxlen``.

    Replaces ``GossipSub.equivocation_detection``, which keeps a copy of every
    message it sees (only trimmed to 500 once it passes 1,000 at a heartbeat).
    Duplicates are already dropped by Pubsub's seen-cache, so a short memory
    loses nothing useful.
    """

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self.maxlen = maxlen

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        while len(self) > self.maxlen:
            self.popitem(last=False)


class _ConnectionWatcher(INotifee):
    """Tells the ``Network`` when the last connection to a peer is gone."""

    def __init__(self, on_disconnected: Callable[[ID], None]) -> None:
        self._on_disconnected = on_disconnected

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        peer = getattr(conn.muxed_conn, "peer_id", None)
        if peer is not None:
            self._on_disconnected(peer)

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        pass

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        pass

    async def listen(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass

    async def listen_close(self, network: INetwork, multiaddr: multiaddr.Multiaddr) -> None:
        pass


def _guard_security_upgrade(upgrader: Any, admission: Admission, counters: Counters) -> None:
    """Admit or refuse each connection right after its security handshake, before it is multiplexed.

    Nothing runs on a connection before multiplexing (no identify, gossip or Shoal stream), so a
    refused peer is sent nothing and nothing of it reaches the node. With a network key, a peer
    without it fails the handshake itself (the bytes it sees and sends are noise to the other
    side); this counts those failures. A peer that passes is checked against ``admission``.
    """
    upgrade = upgrader.upgrade_security

    async def guarded(raw_conn: Any, is_initiator: bool, peer_id: ID | None = None) -> Any:
        try:
            with trio.fail_after(HANDSHAKE_TIMEOUT):
                secure = await upgrade(raw_conn, is_initiator, peer_id)
        except (SecurityUpgradeFailure, trio.TooSlowError) as exc:
            if admission.network_key is not None:
                counters.peers_refused_key += 1
            if isinstance(exc, trio.TooSlowError):
                raise SecurityUpgradeFailure(f"no security handshake within {HANDSHAKE_TIMEOUT} s") from None
            raise
        remote = secure.get_remote_peer().to_base58()
        if not admission.admits(remote):
            counters.peers_refused_untrusted += 1
            log.debug("refused a connection with %s: not a trusted peer", remote)
            with trio.CancelScope(shield=True), trio.move_on_after(1):
                await secure.close()
            raise SecurityUpgradeFailure(f"peer {remote} is not a trusted peer")
        return secure

    upgrader.upgrade_security = guarded


def _free_inbound_slots(swarm: Any) -> None:
    """Give back an inbound connection's slot of py-libp2p's inbound cap when the connection ends.

    py-libp2p 0.8.1 keeps each inbound connection's handler, which holds one of the cap's 250 slots, waiting
    until the whole swarm stops. So a node took 250 inbound connections in its life, then refused every new
    one: ~250 short-lived identities, or peers reconnecting over days, locked out every newcomer for good.
    The handler now upgrades the connection as py-libp2p's does, then waits for that connection to close.
    """
    handle = swarm._do_handle_inbound_connection

    async def handle_until_closed(read_write_closer: Any, maddr: multiaddr.Multiaddr, failure_event: Any) -> None:
        if isinstance(read_write_closer, IMuxedConn):  # a transport that multiplexes itself (QUIC): not used here
            return await handle(read_write_closer, maddr, failure_event)
        raw = RawConnection(read_write_closer, False)
        try:
            muxed = await swarm.upgrade_inbound_raw_conn(raw, maddr)
        except Exception as exc:
            log.debug("inbound connection on %s not taken: %s", maddr, exc)
            with contextlib.suppress(Exception):
                await raw.close()
            return
        await muxed.event_closed.wait()

    swarm._do_handle_inbound_connection = handle_until_closed


def _plain_tcp(maddr: multiaddr.Multiaddr) -> bool:
    names = {p.name for p in maddr.protocols()}
    return "tcp" in names and not names & {"ws", "wss", "tls", "quic", "quic-v1", "webtransport", "webrtc",
                                           "webrtc-direct", "p2p-circuit"}


def _parse_peer_id(peer_id: str) -> ID:
    try:
        return ID.from_base58(peer_id)
    except Exception as exc:
        raise ValueError(f"invalid peer id {peer_id!r}") from exc


def _split_p2p(addr: str) -> tuple[multiaddr.Multiaddr, str | None]:
    """Parse ``addr``; return it without any trailing ``/p2p/<id>`` and that id."""
    try:
        maddr = multiaddr.Multiaddr(addr)
    except Exception as exc:
        raise ValueError(f"invalid multiaddr {addr!r}") from exc
    try:
        p2p = maddr.value_for_protocol("p2p")
    except Exception:
        p2p = None
    if not p2p:
        return maddr, None
    return maddr.decapsulate(multiaddr.Multiaddr(f"/p2p/{p2p}")), str(p2p)


def _dialable(maddr: multiaddr.Multiaddr, *, names: bool = True) -> bool:
    """Whether a peer could listen on ``maddr``: not on a link-local address (169.254.169.254 is a cloud's
    metadata server), a multicast or an unspecified one; a name only if ``names``."""
    for protocol in ("ip4", "ip6"):
        try:
            ip = ipaddress.ip_address(maddr.value_for_protocol(protocol))
        except Exception:  # not this protocol
            continue
        return not (ip.is_link_local or ip.is_multicast or ip.is_unspecified)
    return names  # a name (/dns4/...): resolved when dialled


def _check_ports_free(listen: Sequence[multiaddr.Multiaddr]) -> None:
    """Raise ``NetworkError`` if a fixed TCP listen port is already taken.

    libp2p listens with SO_REUSEPORT, so a second node on a port in use would
    start without complaint and the kernel would split connections between the
    two. A plain bind (SO_REUSEADDR only) still fails on such a port.
    """
    for maddr in listen:
        try:
            port = int(maddr.value_for_protocol("tcp") or 0)
        except Exception:
            continue
        if port == 0:
            continue
        family, ip = socket.AF_INET, "0.0.0.0"
        for proto, fam in (("ip4", socket.AF_INET), ("ip6", socket.AF_INET6)):
            try:
                value = maddr.value_for_protocol(proto)
            except Exception:
                continue
            if value:
                family, ip = fam, str(value)
                break
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                raise NetworkError(f"cannot listen on {maddr}: {exc.strerror}") from exc


class Network:
    """Peer-to-peer transport: direct request/reply plus gossip on one topic."""

    def __init__(
        self,
        *,
        seed: bytes,
        listen: list[str],
        peers: list[str],
        topic: str = "shoal/jobs/1",
        on_gossip: GossipHandler,
        on_request: RequestHandler,
        max_frame: int = DEFAULT_MAX_FRAME,
        gossip_heartbeat: float = GOSSIP_HEARTBEAT,
        admission: Admission = OPEN,
        validate_gossip: GossipValidator | None = None,
    ) -> None:
        if len(seed) != 32:
            raise ValueError("seed must be exactly 32 bytes")
        if max_frame <= 0:
            raise ValueError("max_frame must be positive")
        self._key_pair = create_new_key_pair(seed)
        self._pid = ID.from_pubkey(self._key_pair.public_key)
        self.peer_id: str = self._pid.to_base58()
        self._listen = [_split_p2p(a)[0] for a in listen]
        self._topic = topic
        self._on_gossip = on_gossip
        self._on_request = on_request
        self._max_frame = max_frame
        self._gossip_heartbeat = gossip_heartbeat
        self.admission = admission
        if admission != OPEN:
            for maddr in self._listen:
                if not _plain_tcp(maddr):  # QUIC & co. bypass pnet and the security upgrade we guard
                    raise ValueError(f"a private network listens on plain TCP only, not {maddr}")
        self._validate_gossip = validate_gossip
        self._peer_names: dict[bytes, str] = {}
        self._counters = Counters()
        self._partial_frames = PartialFrames()
        self._inbound_streams: Counter[str] = Counter()  # by peer
        self._host: IHost | None = None
        self._pubsub: Pubsub | None = None
        self._nursery: trio.Nursery | None = None
        self._started = False
        self._links: dict[str, OutboundLink] = {}
        self._addrs_cache: tuple[float, list[str]] | None = None
        self._link_locks: dict[str, trio.Lock] = {}
        self._disconnect_events: dict[str, trio.Event] = {}
        # Our own address book: libp2p's peerstore expires or drops addresses
        # (per-peer TTL rewritten by connect/identify), so we re-add ours before
        # every dial.
        self._known_addrs: OrderedDict[str, list[multiaddr.Multiaddr]] = OrderedDict()
        self._keep: list[str] = []
        for addr in peers:
            maddr, pid = _split_p2p(addr)
            if pid is None:
                raise ValueError(f"peer address {addr!r} has no /p2p/<peer id>")
            self.add_peer_addrs(pid, [str(maddr)])
            if pid != self.peer_id and pid not in self._keep:
                self._keep.append(pid)

    # -- public API ----------------------------------------------------------

    def addrs(self) -> list[str]:
        """Listen multiaddrs with ``/p2p/<id>`` (empty until ``run`` is listening)."""
        if self._host is None:
            return []
        now = time.monotonic()
        if self._addrs_cache is None or now - self._addrs_cache[0] > ADDRS_CACHE_SECONDS:
            # libp2p rebuilds multiaddrs on every call; announcements ask for them per job
            self._addrs_cache = (now, [str(a) for a in self._host.get_addrs()])
        return list(self._addrs_cache[1])

    def connected_peers(self) -> list[str]:
        if self._host is None:
            return []
        return [p.to_base58() for p in self._host.get_connected_peers()]

    def add_peer_addrs(self, peer_id: str, addrs: Sequence[str], *, hints: bool = False) -> None:
        """Remember addresses for ``peer_id`` (used whenever we dial it).

        Raises ``ValueError`` for a malformed peer id or address, or an address
        whose ``/p2p/`` part names another peer. Addresses no peer listens on (link-local,
        where clouds keep their metadata servers, multicast, unspecified) are left out, and so are
        names when the addresses are ``hints`` a peer's message gave (``metadata.google.internal``
        is 169.254.169.254): nodes advertise addresses, an operator's ``--peer`` may name a host.
        """
        pid = _parse_peer_id(peer_id)
        parsed: list[multiaddr.Multiaddr] = []
        for addr in addrs:
            maddr, p2p = _split_p2p(addr)
            if p2p is not None and p2p != peer_id:
                raise ValueError(f"address {addr!r} is for peer {p2p}, not {peer_id}")
            if _dialable(maddr, names=not hints):
                parsed.append(maddr)
        known = self._known_addrs.get(peer_id, [])
        # New ones first, in the order given; known ones keep their place, so the rotation of a failed
        # dial holds (re-adding a list on every request once moved its last address first for good).
        known[:0] = [maddr for maddr in dict.fromkeys(parsed) if maddr not in known]
        del known[MAX_ADDRS_PER_PEER:]
        self._known_addrs[peer_id] = known
        self._known_addrs.move_to_end(peer_id)
        while len(self._known_addrs) > MAX_KNOWN_PEERS:
            self._known_addrs.popitem(last=False)
        if self._host is not None and known:
            self._host.get_peerstore().add_addrs(pid, known, 0)

    def statistics(self) -> NetworkStatistics:
        c = self._counters
        scorer = getattr(self._pubsub.router, "scorer", None) if self._pubsub is not None else None
        scores = list(scorer.get_all_peer_scores([self._topic]).values()) if scorer is not None else []
        return NetworkStatistics(
            connected_peers=len(self.connected_peers()),
            requests_sent=c.requests_sent,
            requests_received=c.requests_received,
            requests_failed=c.requests_failed,
            handler_errors=c.handler_errors,
            gossip_published=c.gossip_published,
            gossip_publish_failed=c.gossip_publish_failed,
            gossip_received=c.gossip_received,
            gossip_dropped=c.gossip_dropped,
            frames_rejected=c.frames_rejected,
            open_streams=c.open_streams,
            gossip_cached=len(self._pubsub.router.mcache.msgs) if self._pubsub is not None else 0,
            peers_refused_key=c.peers_refused_key,
            peers_refused_untrusted=c.peers_refused_untrusted,
            gossip_rejected=c.gossip_rejected,
            gossip_rate_limited=c.gossip_rate_limited,
            gossip_penalised_peers=sum(1 for s in scores if s < 0),
            gossip_blocked_peers=sum(1 for s in scores if s < GOSSIP_SCORE.publish_threshold),
            gossip_unsent=c.gossip_unsent,
        )

    async def publish(self, data: bytes) -> None:
        """Gossip ``data`` on the topic. Best effort: delivery is not guaranteed,
        and a libp2p failure is logged and counted, not raised."""
        if self._pubsub is None or self._nursery is None:
            raise NetworkError("network is not running")
        limit = min(self._max_frame, MAX_GOSSIP)
        if len(data) > limit:
            raise ValueError(f"gossip payload of {len(data)} bytes exceeds {limit}")
        with trio.move_on_after(PUBLISH_TIMEOUT) as scope:
            try:
                await self._pubsub.publish(self._topic, bytes(data))
            except Exception as exc:
                self._counters.gossip_publish_failed += 1
                log.warning("gossip publish failed: %r", exc)
                return
        if scope.cancelled_caught:
            self._counters.gossip_publish_failed += 1
            log.warning("gossip publish took over %.1f s; gave up", PUBLISH_TIMEOUT)
            return
        self._counters.gossip_published += 1
        # libp2p only queues the message for each neighbour: their senders run now, so a burst of publishes
        # drains as it goes rather than overflowing the queues (OUTBOUND_QUEUE)
        await trio.sleep(0)

    async def request(self, peer_id: str, data: bytes, *, timeout: float, addrs: Sequence[str] = ()) -> bytes:
        """Send one request to ``peer_id`` and return its reply.

        Raises ``jobs.PeerTimeout`` when no reply came within ``timeout`` seconds,
        ``jobs.Unreachable`` on any other failure (dial, stream, a protocol violation
        by the peer, chained as ``__cause__``), ``ValueError`` if ``data`` exceeds
        ``max_frame``.
        """
        if len(data) > self._max_frame:
            raise ValueError(f"request of {len(data)} bytes exceeds max_frame={self._max_frame}")
        self._counters.requests_sent += 1
        if addrs and peer_id not in self._links and peer_id != self.peer_id:  # hints matter only for dialling
            try:
                self.add_peer_addrs(peer_id, addrs, hints=True)
            except ValueError as exc:
                log.warning("ignoring address hints for %s: %s", peer_id, exc)
        try:
            if peer_id == self.peer_id:
                return await self._request_self(bytes(data), timeout)
            try:
                with trio.fail_after(timeout):
                    link = await self._get_link(peer_id)
                    return await link.call(bytes(data))
            except trio.TooSlowError:
                raise PeerTimeout(peer_id, f"no reply within {timeout} s") from None
        except PeerError:
            self._counters.requests_failed += 1
            raise

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until cancelled. ``task_status.started()`` is called once we are
        listening, gossip is ready and the topic is subscribed.

        Raises ``NetworkError`` if the node cannot start (e.g. a listen address
        is in use) or libp2p fails underneath it.
        """
        if self._started:
            raise RuntimeError("Network.run can only be called once")
        self._started = True
        # libp2p cleans up badly when cancelled: its clean-up code stops at the
        # first ``await``, leaving sockets open (the remote then never sees the
        # connection go) and listeners accepting. So once started, libp2p runs
        # shielded from our caller's cancellation; when that comes we first shut
        # down gracefully while libp2p is still fully alive, then cancel it.
        # (Start-up itself stays cancellable.)
        libp2p_scope = trio.CancelScope()
        stop = trio.Event()
        stopped = trio.Event()

        async def shielded(*, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            try:
                with libp2p_scope:
                    await self._run(stop, libp2p_scope, task_status)
            finally:
                stopped.set()

        try:
            _check_ports_free(self._listen)
            async with trio.open_nursery() as nursery:
                await nursery.start(shielded)
                task_status.started()
                try:
                    await trio.sleep_forever()
                finally:
                    stop.set()
                    with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT + 1):
                        await stopped.wait()
                    libp2p_scope.cancel()
        except NetworkError:
            raise
        except Exception as exc:
            raise NetworkError(f"network stopped on an error: {exc!r}") from exc
        finally:
            self._nursery = None
            self._pubsub = None
            self._host = None
            self._links.clear()
            self._link_locks.clear()

    async def _run(self, stop: trio.Event, scope: trio.CancelScope, task_status: trio.TaskStatus[None]) -> None:
        """Run libp2p and our tasks until ``stop`` is set, then close gracefully."""
        host = new_host(
            key_pair=self._key_pair,
            sec_opt={
                # Noise only: the default list also offers plaintext, whose
                # peer ids are not authenticated.
                NOISE_PROTOCOL_ID: NoiseTransport(
                    self._key_pair, noise_privkey=create_new_x25519_key_pair().private_key
                )
            },
            muxer_opt={TProtocol(YAMUX_PROTOCOL_ID): Yamux},
            listen_addrs=self._listen,
            # libp2p's private network: the whole connection, Noise included, is encrypted with it.
            psk=None if self.admission.network_key is None else self.admission.network_key.hex(),
        )
        swarm: Any = host.get_network()
        if self.admission != OPEN:
            _guard_security_upgrade(swarm.upgrader, self.admission, self._counters)
        _free_inbound_slots(swarm)
        if hasattr(swarm, "retry_config"):
            # Fail a dial at once; our redial loop does the backing off.
            swarm.retry_config = RetryConfig(max_retries=0)
        router = GossipSub(
            protocols=[GOSSIP_PROTOCOL],
            degree=6,
            degree_low=4,
            degree_high=12,
            heartbeat_interval=self._gossip_heartbeat,  # type: ignore[arg-type]  # trio.sleep takes floats
            spam_protection_enabled=False,  # _Pubsub limits each neighbour instead (see GOSSIP_PEER_RATE)
            score_params=GOSSIP_SCORE,
            # "Adaptive gossip" stretches the heartbeat to 30-60 s whenever the mesh is smaller
            # than degree_low (every network of fewer than 5 nodes): the message cache then
            # held five minutes of messages (RSS grew ~2.5 MB per 1,000 jobs) and mesh upkeep
            # ran once a minute.
            adaptive_gossip_enabled=False,
        )
        router.equivocation_detection = _BoundedDict(EQUIVOCATION_CACHE)
        pubsub = _Pubsub(host, router, rate=RateLimiter(GOSSIP_PEER_RATE, 2 * GOSSIP_PEER_RATE),
                         counters=self._counters)
        if self._validate_gossip is not None:
            pubsub.set_topic_validator(self._topic, self._check_gossip, False)
        # Seqnos start at int(time.time()) and count up per message: a node that
        # restarts soon after publishing more messages than seconds elapsed would
        # reuse seqnos that peers still hold as "seen" and have its gossip dropped.
        pubsub.counter = time.time_ns()
        host.set_stream_handler(RPC_PROTOCOL, self._handle_inbound_stream)
        host.multiselect.handlers = _GuardedHandlers(host.multiselect.handlers, self._counters)
        swarm.register_notifee(_ConnectionWatcher(self._on_disconnected))
        self._host = host
        for peer_id, known in self._known_addrs.items():
            host.get_peerstore().add_addrs(ID.from_base58(peer_id), known, 0)
        gossip_send, gossip_recv = trio.open_memory_channel[tuple[str, bytes]](GOSSIP_QUEUE)
        try:
            async with (
                host.run(self._listen),
                background_trio_service(pubsub),
                background_trio_service(router),
            ):
                await pubsub.wait_until_ready()
                pubsub.deliver = functools.partial(self._take_gossip, gossip_send)
                await pubsub.subscribe(self._topic)
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._gossip_dispatcher, gossip_recv)
                    for peer_id in self._keep:
                        nursery.start_soon(self._keep_dialled, peer_id)
                    self._pubsub = pubsub
                    self._nursery = nursery
                    log.info("node %s listening on %s", self.peer_id, self.addrs())
                    scope.shield = True
                    task_status.started()
                    await stop.wait()
                    # Graceful stop: our tasks (links, redials, gossip) first,
                    # then libp2p's connections and listeners while it runs.
                    self._nursery = None
                    self._pubsub = None
                    nursery.cancel_scope.cancel()
                await self._close_host(host)
        finally:
            # Also covers a failed or cancelled start-up (a listener may be open).
            self._nursery = None
            self._pubsub = None
            await self._close_host(host)

    @staticmethod
    async def _close_host(host: IHost) -> None:
        """Close listeners, connections and the host; bounded in time, shielded.

        The TCP listener runs as a trio *system* task with SO_REUSEPORT: one
        left open keeps accepting connections on its port — sharing them with a
        node restarted on the same port. Idempotent.
        """
        swarm: Any = host.get_network()

        async def quietly(what: str, close: Callable[[], Awaitable[None]]) -> None:
            try:
                await close()
            except Exception as exc:
                log.debug("error closing %s: %r", what, exc)

        with trio.CancelScope(shield=True), trio.move_on_after(SHUTDOWN_TIMEOUT) as scope:
            # Listeners first (libp2p closes them only after every connection),
            # then connections concurrently (libp2p closes them one by one, each
            # with a 0.1 s pause), then the rest of the host.
            async with trio.open_nursery() as nursery:
                for listener in list(getattr(swarm, "listeners", {}).values()):
                    nursery.start_soon(quietly, "listener", listener.close)
            async with trio.open_nursery() as nursery:
                for conns in list(getattr(swarm, "connections", {}).values()):
                    for conn in list(conns):
                        nursery.start_soon(quietly, "connection", conn.close)
            await quietly("libp2p host", host.close)
        if scope.cancelled_caught:
            log.warning("closing the libp2p host took over %.0f s; gave up", SHUTDOWN_TIMEOUT)

    # -- direct requests -----------------------------------------------------

    async def _request_self(self, data: bytes, timeout: float) -> bytes:
        """A request to ourselves: call on_request in-process, same contract."""
        self._counters.requests_received += 1
        try:
            with trio.fail_after(timeout):
                reply = await self._on_request(self.peer_id, data)
        except trio.TooSlowError:
            raise PeerTimeout(self.peer_id, f"no reply within {timeout} s") from None
        except Exception as exc:
            self._counters.handler_errors += 1
            log.exception("request handler failed for a request to ourselves")
            raise Unreachable(self.peer_id, "request handler failed") from exc
        if not isinstance(reply, bytes | bytearray | memoryview):
            self._counters.handler_errors += 1
            log.error("request handler returned %s, not bytes", type(reply).__name__)
            raise Unreachable(self.peer_id, "request handler returned no bytes")
        return bytes(reply)

    async def _get_link(self, peer_id: str) -> OutboundLink:
        link = self._links.get(peer_id)
        if link is not None and link.alive:
            return link
        if self._nursery is None:
            raise Unreachable(peer_id, "network is not running")
        # One opener per peer; concurrent callers wait for its link.
        lock = self._link_locks.setdefault(peer_id, trio.Lock())
        try:
            async with lock:
                link = self._links.get(peer_id)
                if link is not None and link.alive:
                    return link
                stream = await self._open_stream(peer_id)
                nursery = self._nursery
                if nursery is None:  # shut down while we were opening
                    await discard_stream(stream)
                    raise Unreachable(peer_id, "network is not running")
                link = OutboundLink(stream, peer_id, max_frame=self._max_frame, counters=self._counters)
                self._links[peer_id] = link
                nursery.start_soon(self._run_link, link)
                return link
        finally:
            idle = not lock.locked() and lock.statistics().tasks_waiting == 0
            if idle and self._link_locks.get(peer_id) is lock:
                del self._link_locks[peer_id]

    async def _run_link(self, link: OutboundLink) -> None:
        try:
            await link.run()
        finally:
            if self._links.get(link.peer_id) is link:
                del self._links[link.peer_id]

    async def _open_stream(self, peer_id: str) -> Any:
        host = self._host
        if host is None:
            raise Unreachable(peer_id, "network is not running")
        try:
            pid = _parse_peer_id(peer_id)
        except ValueError as exc:
            raise Unreachable(peer_id, str(exc)) from exc
        if not self._is_connected(pid):
            await self._dial(peer_id, pid)
        try:
            with trio.fail_after(STREAM_OPEN_TIMEOUT):
                return await host.new_stream(pid, [RPC_PROTOCOL])
        except trio.TooSlowError:
            raise PeerTimeout(peer_id, "opening the rpc stream timed out") from None
        except Exception as exc:
            raise Unreachable(peer_id, f"could not open an rpc stream: {exc}") from exc

    async def _handle_inbound_stream(self, stream: INetStream) -> None:
        try:
            remote = stream.muxed_conn.peer_id.to_base58()  # authenticated by Noise
        except Exception:
            await discard_stream(stream)
            return
        if self._inbound_streams[remote] >= INBOUND_STREAMS_PER_PEER:
            self._counters.frames_rejected += 1
            warnings.warn("streams", "peer %s opened more than %d rpc streams at once: resetting the newest", remote,
                          INBOUND_STREAMS_PER_PEER)
            await discard_stream(stream)
            return
        self._inbound_streams[remote] += 1
        try:
            await serve_inbound(
                stream,
                remote,
                self._on_request,
                max_frame=self._max_frame,
                counters=self._counters,
                partial=self._partial_frames,
            )
        except Exception:  # serve_inbound should not raise; never take libp2p down
            log.exception("rpc stream from %s failed", remote)
        finally:
            self._inbound_streams[remote] -= 1
            if not self._inbound_streams[remote]:
                del self._inbound_streams[remote]

    # -- connections ---------------------------------------------------------

    def _is_connected(self, pid: ID) -> bool:
        host = self._host
        return host is not None and bool(host.get_network().get_connections(pid))

    def _on_disconnected(self, pid: ID) -> None:
        if self._is_connected(pid):
            return
        event = self._disconnect_events.pop(pid.to_base58(), None)
        if event is not None:
            event.set()

    async def _dial(self, peer_id: str, pid: ID) -> None:
        host = self._host
        if host is None:
            raise Unreachable(peer_id, "network is not running")
        known = self._known_addrs.get(peer_id, [])
        if known:
            # libp2p dials only the first TCP address it holds for a peer, in
            # insertion order; put ours there, newest first.
            peerstore = host.get_peerstore()
            peerstore.clear_addrs(pid)
            peerstore.add_addrs(pid, known, 0)
        swarm: Any = host.get_network()
        if hasattr(swarm, "unblock_peer"):
            # libp2p refuses to dial a peer for 60 s after a failed dial; we
            # decide ourselves when to try again.
            swarm.unblock_peer(pid)
        refused = (self._counters.peers_refused_key, self._counters.peers_refused_untrusted)
        try:
            with trio.fail_after(DIAL_TIMEOUT):
                await host.connect(PeerInfo(pid, known))
        except BaseException as exc:
            if len(known) > 1:
                known.append(known.pop(0))  # the next dial tries the next address
            if isinstance(exc, trio.TooSlowError):
                raise Unreachable(peer_id, "dial timed out") from None
            if self._counters.peers_refused_untrusted > refused[1]:
                raise Unreachable(peer_id, "refused: not a trusted peer") from None
            if self._counters.peers_refused_key > refused[0]:
                raise Unreachable(peer_id, "refused: the handshake failed under our network key "
                                               "(the peer does not hold it?)") from None
            if isinstance(exc, Exception):
                raise Unreachable(peer_id, f"dial failed: {exc}") from exc
            raise

    async def _wait_disconnected(self, peer_id: str, pid: ID) -> None:
        while self._is_connected(pid):
            event = self._disconnect_events.setdefault(peer_id, trio.Event())
            with trio.move_on_after(CONNECTED_POLL):
                await event.wait()

    async def _keep_dialled(self, peer_id: str) -> None:
        """Keep a connection to a configured peer, redialling with backoff."""
        pid = ID.from_base58(peer_id)
        delay = 0.0
        failures = 0
        while True:
            if delay:
                await trio.sleep(delay)
            if not self._is_connected(pid):
                try:
                    await self._dial(peer_id, pid)
                except Unreachable as exc:
                    failures += 1
                    level = logging.INFO if failures == 1 else logging.DEBUG
                    log.log(level, "dial to %s failed (%d in a row): %s", peer_id, failures, exc.why)
                    delay = min(max(delay * 2, REDIAL_MIN), REDIAL_MAX)
                    continue
                log.info("connected to %s", peer_id)
            failures = 0
            up_since = trio.current_time()
            await self._wait_disconnected(peer_id, pid)
            log.info("lost connection to %s", peer_id)
            stable = trio.current_time() - up_since >= STABLE_AFTER
            delay = REDIAL_MIN if stable else min(max(delay * 2, REDIAL_MIN), REDIAL_MAX)

    # -- gossip ----------------------------------------------------------------

    def _take_gossip(self, out: trio.MemorySendChannel[tuple[str, bytes]], msg: rpc_pb2.Message) -> None:
        """Queue a message libp2p delivered (signature checked, validated) for ``_gossip_dispatcher``."""
        try:
            origin = self._origin(msg.from_id)
            data = bytes(msg.data)
        except Exception as exc:
            log.warning("skipping malformed gossip message: %r", exc)
            return
        if origin == self.peer_id:
            return
        if not self.admission.admits(origin):  # relayed by a trusted peer from one we do not trust
            return
        try:
            out.send_nowait((origin, data))
        except (trio.WouldBlock, trio.BrokenResourceError):  # full, or stopping
            self._counters.gossip_dropped += 1
            log.debug("gossip queue full; dropped a message from %s", origin)

    def _origin(self, from_id: bytes) -> str:
        """The base58 peer id of a gossip message's signer (remembered: libp2p's is slow)."""
        name = self._peer_names.get(from_id)
        if name is None:
            name = ID(from_id).to_base58()
            if len(self._peer_names) >= PEER_NAMES:
                self._peer_names.clear()
            self._peer_names[from_id] = name
        return name

    def _check_gossip(self, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        """libp2p's topic validator: runs after the signature check (so ``from`` is the signer),
        before delivery and forwarding. Our own publishes pass unchecked."""
        if self._validate_gossip is None or forwarder == self._pid:
            return True
        try:
            ok = self._validate_gossip(self._origin(msg.from_id), bytes(msg.data))
        except Exception:
            log.exception("gossip validator failed; rejecting the message")
            ok = False
        if not ok:
            self._counters.gossip_rejected += 1
        return bool(ok)

    async def _gossip_dispatcher(self, queue: trio.MemoryReceiveChannel[tuple[str, bytes]]) -> None:
        async for origin, data in queue:
            self._counters.gossip_received += 1
            try:
                await self._on_gossip(origin, data)
            except Exception:
                log.exception("gossip handler failed for a message from %s", origin)
