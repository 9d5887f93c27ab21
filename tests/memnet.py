"""An in-memory network of nodes for protocol tests: the real roles, store and dispatcher,
with bytes passed between them in-process instead of over libp2p.

Every node reads trio's clock (``MemoryHub.now``) and runs its blocking calls inline (``run_inline``),
so tests run on ``trio.testing.MockClock`` (pytest-trio's ``autojump_clock``): a wait of seconds takes
none, and the virtual clock never jumps while a worker thread is busy.

By default a message arrives at once and is never lost. A ``Links`` model gives each message (and each
reply) a delay and a chance to be lost, as a wide network would: ``devstack/bench_sim.py`` runs the real
roles on 100 and 1,000 simulated nodes with it.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from compute import CapacityTracker, ComputeService
from executors import ExecutorRegistry, NoopExecutor
from executors.faults import BadActor
from executors.noop import NoopHooks
from jobs import PeerTimeout, Resources, Unreachable
from jobs.messages import decode
from node.dispatch import Dispatcher, MessagePeers
from node.net.wire import DEFAULT_MAX_FRAME
from node.store import Store
from requester import RequesterService
from requester.sweeps import SweepService

T = TypeVar("T")


async def run_inline(fn: Callable[..., T], /, *args: Any, limiter: trio.CapacityLimiter | None = None) -> T:
    """A ``node.tasks.RunBlocking`` that calls ``fn`` in the trio thread: nothing else runs meanwhile,
    so ``limiter`` has nothing to limit. Cancellable before the call, like a worker thread."""
    await trio.lowlevel.checkpoint()
    return fn(*args)


@dataclass
class Links:
    """How messages travel: each one (a request, its reply, one node's copy of gossip) is delayed by a
    latency drawn uniformly from ``latency`` seconds and lost with probability ``loss``. A lost request
    or reply costs its sender the request's timeout, as on a real network."""

    latency: tuple[float, float] = (0.005, 0.05)
    loss: float = 0.0
    rng: random.Random = field(default_factory=lambda: random.Random(1))

    def delay(self) -> float:
        return self.rng.uniform(*self.latency)

    def lost(self) -> bool:
        return self.loss > 0 and self.rng.random() < self.loss


class MemoryHub:
    def __init__(self, links: Links | None = None) -> None:
        self.links = links
        self.nursery: trio.Nursery | None = None  # with ``links``: where delayed gossip copies travel
        self.transports: dict[str, MemoryTransport] = {}
        self.sent: Counter[tuple[str, str]] = Counter()  # (gossip | request, message kind) -> count
        self.keys: dict[str, Ed25519PrivateKey] = {}  # test node names stand in for peer ids
        # (way, sender, receiver, bytes) of every message and reply, when a test sets it to a list
        self.frames: list[tuple[str, str, str, bytes]] | None = None
        self._epoch = time.time() - trio.current_time()

    def now(self) -> float:
        """The nodes' clock: trio's (virtual under a MockClock), shifted to look like ``time.time()``,
        which the store still uses for a few timestamps of its own."""
        return self._epoch + trio.current_time()

    @property
    def requests(self) -> int:
        return sum(n for (way, _), n in self.sent.items() if way == "request")

    @property
    def gossip(self) -> int:
        return sum(n for (way, _), n in self.sent.items() if way == "gossip")

    def identity(self, name: str) -> NamedIdentity:
        key = self.keys.setdefault(name, Ed25519PrivateKey.generate())
        return NamedIdentity(self, key)


class NamedIdentity:
    """Real Ed25519 signatures; the public key is found by node name instead of inside a peer id."""

    def __init__(self, hub: MemoryHub, key: Ed25519PrivateKey) -> None:
        self.hub, self.key = hub, key

    def sign(self, data: bytes) -> bytes:
        return self.key.sign(data)

    def verify(self, peer_id: str, data: bytes, signature: bytes) -> bool:
        key = self.hub.keys.get(peer_id)
        try:
            if key is None:
                return False
            key.public_key().verify(signature, data)
        except InvalidSignature:
            return False
        return True


class MemoryTransport:
    def __init__(self, hub: MemoryHub, peer_id: str) -> None:
        self.hub = hub
        self.peer_id = peer_id
        self.dispatcher: Dispatcher | None = None
        self.down = False
        hub.transports[peer_id] = self

    def addrs(self) -> list[str]:
        return [f"/memory/{self.peer_id}"]

    async def request(self, peer_id: str, data: bytes, *, timeout: float, addrs: Sequence[str] = ()) -> bytes:
        await trio.lowlevel.checkpoint()
        if len(data) > DEFAULT_MAX_FRAME:  # as node.net.host.Network.request
            raise ValueError(f"request of {len(data)} bytes exceeds max_frame={DEFAULT_MAX_FRAME}")
        target = self.hub.transports.get(peer_id)
        if self.down or target is None or target.down or target.dispatcher is None:
            raise Unreachable(peer_id, "down")
        self.hub.sent["request", decode(data).kind] += 1
        if self.hub.frames is not None:
            self.hub.frames.append(("request", self.peer_id, peer_id, data))
        links = self.hub.links
        with trio.move_on_after(timeout):
            if links is not None:
                if links.lost():
                    await trio.sleep_forever()  # the request never arrives: the timeout ends the wait
                await trio.sleep(links.delay())
                if target.dispatcher is None:
                    raise Unreachable(peer_id, "down")
            reply = await target.dispatcher.on_request(self.peer_id, data)
            if links is not None:
                if links.lost():
                    await trio.sleep_forever()  # the reply is lost
                await trio.sleep(links.delay())
            if self.hub.frames is not None:
                self.hub.frames.append(("reply", peer_id, self.peer_id, reply))
            return reply
        raise PeerTimeout(peer_id, f"no reply within {timeout} s")

    async def publish(self, data: bytes) -> None:
        if self.down:
            return
        kind = decode(data).kind
        self.hub.sent["gossip", kind] += 1
        if self.hub.frames is not None:
            self.hub.frames.append(("gossip", self.peer_id, "*", data))
        links = self.hub.links
        for other in list(self.hub.transports.values()):
            if other is self or other.down or other.dispatcher is None:
                continue
            if kind == "node_info" and other.dispatcher.requester is None:
                continue  # only requesters read node info (node.dispatch): 1,000 nodes need not decode it
            if links is None:
                await other.dispatcher.on_gossip(self.peer_id, data)
            elif not links.lost():
                assert self.hub.nursery is not None, "a hub with links needs a nursery for gossip"
                self.hub.nursery.start_soon(other.deliver_gossip, self.peer_id, data, links.delay())

    async def deliver_gossip(self, origin: str, data: bytes, delay: float) -> None:
        await trio.sleep(delay)
        if not self.down and self.dispatcher is not None:
            await self.dispatcher.on_gossip(origin, data)


def raw_peer(hub: MemoryHub, name: str, dispatcher: Dispatcher) -> MessagePeers:
    """A peer of the hub with no role of the project's: a test's attacker, answering through ``dispatcher``
    (whose roles the test fakes) and sending what the test builds."""
    transport = MemoryTransport(hub, name)
    transport.dispatcher = dispatcher
    dispatcher.ready.set()
    return MessagePeers(transport, dispatcher, hub.identity(name))


@dataclass
class MemoryNode:
    peer_id: str
    transport: MemoryTransport
    store: Store
    requester: RequesterService | None
    compute: ComputeService | None
    sweeps: SweepService | None
    noop: NoopExecutor
    scope: trio.CancelScope


@asynccontextmanager
async def memory_node(
    hub: MemoryHub, peer_id: str, data_dir: Path, *, requester: bool = True, compute: bool = True,
    total: Resources | None = None, per_job: Resources | None = None, hooks: NoopHooks | None = None,
    bad_actor: bool = False, labels: dict[str, str] | None = None, joins: bool = False,
) -> AsyncIterator[MemoryNode]:
    """A node (store + roles) on ``hub``; leaving the block stops it like a crash would (no goodbye). ``joins``:
    it was told of peers to join (``shoal serve --peer``), as every node of a devstack but the first is."""
    data_dir.mkdir(parents=True, exist_ok=True)
    transport = MemoryTransport(hub, peer_id)
    dispatcher = Dispatcher(clock=trio.current_time)
    peers = MessagePeers(transport, dispatcher, hub.identity(peer_id))
    store = Store(data_dir / "shoal.db", run_blocking=run_inline)
    noop = NoopExecutor(hooks, clock=hub.now)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        c = r = sw = None
        if compute:
            registry = ExecutorRegistry.all_noop(noop)
            if bad_actor:
                registry = registry.map(BadActor)
            c = ComputeService(peers=peers, store=store, executors=registry,
                               capacity=CapacityTracker(total or Resources(cpu=4, memory="8GiB", disk="10GiB"),
                                                        per_job), work_dir=data_dir / "work",
                               clock=hub.now, run_blocking=run_inline, labels=labels)
            await nursery.start(c.run)
        if requester:
            r = RequesterService(peers=peers, store=store, clock=hub.now, joins=joins)
            if c is not None:
                r.on_node_info(peer_id, c.node_info())
            await nursery.start(r.run)
            sw = SweepService(peers=peers, store=store, judge=r, clock=hub.now)
            r.sweep_work = sw.work_held  # as node/daemon.py wires them
            await nursery.start(sw.run)
        dispatcher.requester, dispatcher.compute, dispatcher.sweeps = r, c, sw
        dispatcher.ready.set()
        transport.dispatcher = dispatcher
        node = MemoryNode(peer_id, transport, store, r, c, sw, noop, nursery.cancel_scope)
        try:
            yield node
        finally:
            transport.down = True
            transport.dispatcher = None
            nursery.cancel_scope.cancel()
