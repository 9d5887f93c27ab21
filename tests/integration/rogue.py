"""A rogue peer for security tests: Shoal's real libp2p ``Network``, saying whatever a test scripts.

It joins running ``shoal serve`` processes like any node (same transport, same Noise identity,
same gossip topic, same wire messages) but has no roles: a test makes it publish any gossip as
itself, send any direct message and read the reply, sign with its own key, advertise itself as a
compute node, and answer incoming requests with a scripted async handler::

    async with (devstack(tmp_path / "stack", [["--no-compute"]]) as stack,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        won = rogue.take_offers(1)                 # script: bid on the first job offered
        rogue.advertise(cpu=4, memory=8 << 30)     # requesters now count it as a compute node
        ...                                        # a client submits a job to node 0
        [(offer, execution_id, reply)] = await poll(lambda: won, 30, "no job offered")
        lie = rogue.result(offer.job_id, execution_id, result=RunResult(stdout="forged"))
        await rogue.request(offer.requester, lie)  # the requester's Reply

As a requester that never decides: ``rogue.script = hold`` with::

    async def hold(peer: str, message: Message) -> Reply | None:
        return Reply(verdict="pending") if isinstance(message, Bid) else None

Requests the script leaves unanswered (it returns ``None``) get a default reply: a
``StatusQuery`` learns that the executions the rogue bid for (``rogue.executions``) are
running, an ``OpenQuery`` that every job is open, an offered ``Announce`` is declined,
``Decision`` and ``Cancel`` are acknowledged, anything else is refused (``ok=False``).
Every message heard is kept, in order, in ``rogue.gossip`` and ``rogue.requests``.
"""

from __future__ import annotations

import base64
import inspect
import json
import os
import secrets
import socket
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from devstack import Devstack
from jobs.errors import MalformedMessage
from jobs.messages import (
    Announce,
    Bid,
    Cancel,
    Claim,
    Decision,
    Message,
    NodeInfo,
    OpenQuery,
    Reply,
    Result,
    StatusQuery,
    SweepAnnounce,
    _Message,
    decode,
    encode,
)
from jobs.model import RunResult
from jobs.spec import ENGINES, Resources
from node.identity import Identity
from node.net import Network
from node.net.admission import load_admission

LOCAL = "/ip4/127.0.0.1/tcp/0"
CONNECT_TIMEOUT = 20.0
REQUEST_TIMEOUT = 10.0

Script = Callable[[str, Message], Awaitable[Reply | bytes | None]]
"""(sending peer, decoded message) -> the reply; ``None`` leaves the request to the defaults."""
_Signed = TypeVar("_Signed", Result, Claim)
Outgoing = _Message | dict[str, Any] | bytes
"""A message model, a raw JSON object (to send fields the models do not know), or raw bytes."""


def _encode(message: Outgoing) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, dict):
        return json.dumps(message).encode()
    return encode(message)


class RoguePeer:
    """A peer on the Shoal network that a test controls completely; use as an async context manager."""

    def __init__(self, peers: Sequence[str], *, seed: bytes | None = None, listen: str = LOCAL,
                 script: Script | None = None, gossip_heartbeat: float = 0.5,
                 network_key: Path | None = None) -> None:
        """``peers``: multiaddrs with ``/p2p/<id>`` of running nodes, kept dialled like a node's
        ``--peer`` (a node started later is dialled by the first request given its ``addrs``).
        A short gossip heartbeat joins the nodes' gossip mesh within a second.
        ``network_key``: a private network's key file (e.g. ``Devstack(network_key=True).network_key``)."""
        self.seed = seed or secrets.token_bytes(32)
        self.identity = Identity(self.seed)
        self.network = Network(seed=self.seed, listen=[listen], peers=list(peers), on_gossip=self._on_gossip,
                               on_request=self._on_request, gossip_heartbeat=gossip_heartbeat,
                               admission=load_admission(network_key, None))
        self.peer_id: str = self.network.peer_id
        self.script = script
        self.gossip: list[tuple[str, Message]] = []  # (origin, message), every decodable gossip heard
        self.requests: list[tuple[str, Message]] = []  # (peer, message), every decodable request received
        self.malformed = 0  # requests and gossip that did not decode
        self.executions: set[str] = set()  # execution ids a StatusQuery hears are running here
        self.boot = uuid.uuid4().hex
        self._peer_ids = [addr.rsplit("/p2p/", 1)[1] for addr in peers]
        self._changed = trio.Event()
        self._nursery: trio.Nursery | None = None
        self._advertising: trio.CancelScope | None = None
        self._stack: AsyncExitStack | None = None

    # -- lifetime --------------------------------------------------------------------------------

    async def __aenter__(self) -> RoguePeer:
        self._stack = AsyncExitStack()
        try:
            await self._stack.enter_async_context(self._running())
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._stack is not None
        await self._stack.aclose()

    @asynccontextmanager
    async def _running(self) -> AsyncIterator[None]:
        async with trio.open_nursery() as nursery:
            await nursery.start(self.network.run)
            self._nursery = nursery
            try:
                await self.wait_connected(self._peer_ids)
                yield
            finally:
                self._nursery = None
                nursery.cancel_scope.cancel()  # the network then closes its connections gracefully

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        """Run ``fn(*args)`` in the background until the rogue stops (e.g. a bid after a reply)."""
        assert self._nursery is not None, "the rogue is not running"
        self._nursery.start_soon(fn, *args)

    def addrs(self) -> list[str]:
        return self.network.addrs()

    async def wait_connected(self, peer_ids: Sequence[str], timeout: float = CONNECT_TIMEOUT) -> None:
        await poll(lambda: set(peer_ids) <= set(self.network.connected_peers()), timeout,
                   f"rogue connected to {list(peer_ids)}", interval=0.05)

    async def wait_mesh(self, peer_ids: Sequence[str], timeout: float = CONNECT_TIMEOUT) -> None:
        """Until these peers are in the rogue's gossip mesh, so what it publishes reaches them.
        (Reads libp2p's router state: the one place the mesh is visible.)"""
        def meshed() -> bool:
            pubsub = self.network._pubsub
            mesh = pubsub.router.mesh.get(self.network._topic, set()) if pubsub is not None else set()
            return set(peer_ids) <= {p.to_base58() for p in mesh}

        await poll(meshed, timeout, f"rogue's gossip mesh holding {list(peer_ids)}", interval=0.05)

    # -- speaking ----------------------------------------------------------------------------------

    async def publish(self, message: Announce | NodeInfo | SweepAnnounce | dict[str, Any] | bytes) -> None:
        """Gossip anything, as the rogue (the origin every receiver sees is ``peer_id``)."""
        await self.network.publish(_encode(message))

    async def request_raw(self, peer_id: str, message: Outgoing, *, timeout: float = REQUEST_TIMEOUT,
                          addrs: Sequence[str] = ()) -> bytes:
        """Send one direct request; the reply's bytes as they came. Raises ``jobs.PeerError``."""
        return await self.network.request(peer_id, _encode(message), timeout=timeout, addrs=addrs)

    async def request(self, peer_id: str, message: Outgoing, *, timeout: float = REQUEST_TIMEOUT,
                      addrs: Sequence[str] = ()) -> Reply:
        """Send one direct request and return the node's ``Reply`` (``MalformedMessage`` if it is not one)."""
        reply = decode(await self.request_raw(peer_id, message, timeout=timeout, addrs=addrs))
        if not isinstance(reply, Reply):
            raise MalformedMessage(f"expected a reply, got {reply.kind}")
        return reply

    def sign(self, data: bytes) -> str:
        """urlsafe base64 of the rogue key's Ed25519 signature, as messages carry it."""
        return base64.urlsafe_b64encode(self.identity.sign(data)).decode()

    def signed(self, message: _Signed) -> _Signed:
        """A ``Result`` or ``Claim`` with its ``signature``: the rogue key's, over its ``statement()``."""
        return message.model_copy(update={"signature": self.sign(message.statement())})

    # -- as a compute node -------------------------------------------------------------------------

    def node_info(self, *, cpu: float = 4.0, memory: int = 8 << 30, disk: int = 100 << 30,
                  engines: Sequence[str] = ENGINES, free: Resources | None = None) -> NodeInfo:
        total = Resources(cpu=cpu, memory=memory, disk=disk)
        return NodeInfo(peer_id=self.peer_id, addrs=self.addrs(), engines=list(engines), max_per_job=total,
                        total=total, free=free or total, boot=self.boot)

    def advertise(self, interval: float = 1.0, **node_info: Any) -> None:
        """Gossip ``node_info(**node_info)`` every ``interval`` s until ``stop_advertising``: requesters
        then count the rogue as a compute node with that much room and offer it jobs."""
        self.stop_advertising()
        scope = self._advertising = trio.CancelScope()

        async def loop() -> None:
            with scope:
                while True:
                    await self.publish(self.node_info(**node_info))
                    await trio.sleep(interval)

        self.spawn(loop)

    def stop_advertising(self) -> None:
        if self._advertising is not None:
            self._advertising.cancel()
            self._advertising = None

    async def bid(self, announce: Announce, *, execution_id: str | None = None,
                  attempt: int | None = None) -> tuple[str, Reply]:
        """Bid on an announced job, to its requester; returns (execution id, the requester's reply).
        The execution then counts as running here for status queries."""
        execution_id = execution_id or f"e-rogue-{uuid.uuid4().hex}"
        self.executions.add(execution_id)
        bid = Bid(job_id=announce.job_id, execution_id=execution_id,
                  attempt=announce.attempt if attempt is None else attempt)
        reply = await self.request(announce.requester, bid, addrs=announce.requester_addrs)
        return execution_id, reply

    def take_offers(self, count: int = 1) -> list[tuple[Announce, str, Reply]]:
        """Script: bid on the first ``count`` jobs offered to the rogue directly (answered "pending",
        as a node does, and a Bid follows); decline later offers. Returns the list that fills with
        (offer, execution id, the requester's reply to the bid)."""
        won: list[tuple[Announce, str, Reply]] = []
        taken: list[str] = []

        async def take(offer: Announce) -> None:
            execution_id, reply = await self.bid(offer)
            won.append((offer, execution_id, reply))

        async def script(peer: str, message: Message) -> Reply | None:
            if isinstance(message, Announce) and len(taken) < count and message.job_id not in taken:
                taken.append(message.job_id)
                self.spawn(take, message)
                return Reply(verdict="pending")
            return None

        self.script = script
        return won

    def result(self, job_id: str, execution_id: str, *, result: RunResult | None = None,
               error: str | None = None, retryable: bool = False, claimed: str | None = None) -> Result:
        """A ``Result`` signed with the rogue's key: over its ``digest``, which is ``claimed`` if given,
        else the digest of what the message says. A ``claimed`` digest of another outcome (e.g.
        ``RunResult().digest()``) makes a message whose fields do not match what it signed."""
        message = Result(job_id=job_id, execution_id=execution_id, result=result, error=error, retryable=retryable)
        return self.signed(message.model_copy(update={"digest": claimed or message.outcome()}))

    # -- listening -----------------------------------------------------------------------------------

    async def wait_gossip(self, predicate: Callable[[str, Message], bool], timeout: float = 30.0,
                          what: str = "gossip") -> tuple[str, Message]:
        """The first gossip heard (since the rogue started) for which ``predicate(origin, message)``."""
        return await self._wait(self.gossip, predicate, timeout, what)

    async def wait_request(self, predicate: Callable[[str, Message], bool], timeout: float = 30.0,
                           what: str = "request") -> tuple[str, Message]:
        """The first request received (since the rogue started) for which ``predicate(peer, message)``."""
        return await self._wait(self.requests, predicate, timeout, what)

    async def _wait(self, log: list[tuple[str, Message]], predicate: Callable[[str, Message], bool],
                    timeout: float, what: str) -> tuple[str, Message]:
        seen = 0
        with trio.move_on_after(timeout):
            while True:
                for item in log[seen:]:
                    if predicate(*item):
                        return item
                seen = len(log)
                await self._changed.wait()
        raise AssertionError(f"the rogue heard no matching {what} within {timeout:g} s")

    def _heard(self, log: list[tuple[str, Message]], peer: str, message: Message) -> None:
        log.append((peer, message))
        self._changed.set()
        self._changed = trio.Event()

    async def _on_gossip(self, origin: str, data: bytes) -> None:
        try:
            message = decode(data)
        except MalformedMessage:
            self.malformed += 1
            return
        self._heard(self.gossip, origin, message)

    async def _on_request(self, peer: str, data: bytes) -> bytes:
        try:
            message = decode(data)
        except MalformedMessage as e:
            self.malformed += 1
            return encode(Reply(ok=False, reason=str(e)))
        self._heard(self.requests, peer, message)
        reply = await self.script(peer, message) if self.script is not None else None
        if reply is None:
            reply = self._default_reply(message)
        return reply if isinstance(reply, bytes) else encode(reply)

    def _default_reply(self, message: Message) -> Reply:
        if isinstance(message, StatusQuery):
            return Reply(states={eid: "accepted" if eid in self.executions else "unknown"
                                 for eid in message.execution_ids})
        if isinstance(message, OpenQuery):
            return Reply(states=dict.fromkeys(message.job_ids, "open"))
        if isinstance(message, Announce):
            return Reply(verdict="rejected", reason="the rogue declines")
        if isinstance(message, Cancel):
            self.executions.discard(message.execution_id)
            return Reply()
        if isinstance(message, Decision):
            return Reply()
        return Reply(ok=False, reason=f"the rogue has no script for {message.kind}")


async def poll(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """Call ``predicate()`` (awaiting it if it is async) until it returns something truthy, and
    return that; AssertionError naming ``what`` after ``timeout`` s."""
    with trio.move_on_after(timeout):
        while True:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            await trio.sleep(interval)
    raise AssertionError(f"{what}: not within {timeout:g} s")


# -- devstack helpers ------------------------------------------------------------------------------


@asynccontextmanager
async def devstack(base_dir: Path, node_args: Sequence[Sequence[str]], *, start: int | None = None,
                   noop: bool = True) -> AsyncIterator[Devstack]:
    """A devstack of ``len(node_args)`` nodes on free ports, each with its own ``shoal serve`` flags;
    only the first ``start`` (default all) are started, the test starts the others with
    ``await stack.start_node(stack.nodes[i])``. Every node is stopped at the end; when the block
    ended without an error, no node may have logged one (nothing a peer sent may crash a handler)."""
    n = len(node_args)
    stack = Devstack(n, noop=noop, base_dir=base_dir, base_port=free_base_port(n),
                     node_args={i: list(args) for i, args in enumerate(node_args)}, write_state=False)
    try:
        for node in stack.nodes[:start]:
            await stack.start_node(node)
        yield stack
    finally:
        await stack.stop()
    for node in stack.nodes:
        log = node.data_dir / "node.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        assert "Traceback" not in text and " ERROR " not in text, f"node {node.index} logged an error:\n{text[-3000:]}"


def free_base_port(nodes: int, *, tries: int = 200) -> int:
    """A ``Devstack`` base port whose API (``base + i``) and libp2p (``base + 100 + i``) ports are free; Kubo,
    when started, takes ``base + 200`` to ``base + 400 + nodes``.

    Under ``pytest -n`` each worker picks from its own slice of the range, so two workers never choose
    the same ports however close together they look for them.
    """
    low, high = _port_slice()
    rng = secrets.SystemRandom()
    for _ in range(tries):
        base = rng.randrange(low, high)
        if all(_port_free(base + i) and _port_free(base + 100 + i) for i in range(nodes)):
            return base
    raise RuntimeError("no free port range found")


PORTS = (20_000, 32_000)  # below Linux's ephemeral ports (32768-)
DEVSTACK_SPAN = 500  # what one devstack takes above its base port, Kubo included


def _port_slice() -> tuple[int, int]:
    """Where this test process picks base ports: all of ``PORTS``, or its worker's share under xdist."""
    worker, workers = os.environ.get("PYTEST_XDIST_WORKER", ""), os.environ.get("PYTEST_XDIST_WORKER_COUNT", "")
    if not (worker.startswith("gw") and workers.isdigit()):
        return PORTS[0], PORTS[1] - DEVSTACK_SPAN
    share = (PORTS[1] - PORTS[0]) // int(workers)
    low = PORTS[0] + int(worker[2:]) * share
    return low, max(low + 1, low + share - DEVSTACK_SPAN)  # (more than 24 workers: slices overlap)


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def metrics(api: str) -> dict[str, float]:
    """A node's ``/metrics`` (unsigned) as {'name{labels}': value}."""
    async with httpx.AsyncClient(timeout=10.0) as http:
        text = (await http.get(f"{api.rstrip('/')}/metrics")).raise_for_status().text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


async def knows(client: Any, peer_id: str) -> bool:
    """Whether the node behind ``client`` (an ``AsyncClient``) has heard ``peer_id``'s node info."""
    return any(n.peer_id == peer_id for n in (await client.nodes()).nodes)
