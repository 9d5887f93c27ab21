"""One node process: identity, store, network, roles and API, started in order in one nursery."""

from __future__ import annotations

import json
import logging
import math
import signal
import sys
import time
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import trio

from jobs.errors import ShoalError
from jobs.selector import format_labels
from node.api.access import exposure_problem
from node.api.app import create_app, serve_api
from node.api.parts import Node
from node.config import VERSION, NodeConfig, machine_resources
from node.dispatch import Dispatcher, MessagePeers
from node.identity import Identity, load_or_create_seed
from node.ratelimit import RateLimiter
from node.tasks import backoff, retry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable, Sequence

    from node.net import Network
    from storage import InputRegistry, KuboClient, Publisher

__all__ = ["VERSION", "Node", "NodeReady", "main", "run_node"]

log = logging.getLogger("shoal.node")

IPFS_PROBE = 5.0  # seconds a node asks the default Kubo whether it is there, before keeping results itself
IPFS_START_WAIT = 60.0  # seconds a node waits at start for the Kubo its --ipfs-api names


@dataclass(frozen=True)
class NodeReady:
    peer_id: str
    addrs: list[str]
    api: str


async def open_storage(config: NodeConfig) -> tuple[InputRegistry, Publisher]:
    """Kubo when its RPC answers; otherwise the node's own store, with CIDs computed the same way.

    A Kubo named by ``--ipfs-api`` is waited for (it may be starting beside the node) and the node starts
    only with it: it once fell back to its own store for good, unseen, when Kubo was restarting then.
    """
    from storage import HttpInput, InputRegistry, KuboClient, KuboInput, KuboPublisher, LocalInput, LocalPublisher
    from storage.errors import StorageError, Unavailable

    http = HttpInput(allow_private=config.allow_private_urls)
    if config.ipfs_api:
        client = KuboClient(config.ipfs_api)
        wait = IPFS_START_WAIT if config.require_ipfs else IPFS_PROBE
        try:
            version = await _first_answer(client, wait)
            log.info("using Kubo %s at %s", version, config.ipfs_api)
            return InputRegistry([KuboInput(client), http]), KuboPublisher(client)
        except StorageError as e:
            await client.aclose()
            if config.require_ipfs:
                raise Unavailable(f"no Kubo answered at {config.ipfs_api} within {wait:g} s ({e}): start it, "
                                  "or run with --ipfs-api none to keep results in the data dir") from None
            log.warning("no Kubo at %s (%s): results are kept in the node's data dir", config.ipfs_api, e)
    local = await trio.to_thread.run_sync(LocalPublisher, config.data_dir / "results")
    return InputRegistry([LocalInput(local), http]), local


async def _first_answer(client: KuboClient, wait: float) -> str:
    """Kubo's version once its RPC answers, asking again every half second for ``wait`` seconds."""
    from storage.errors import Unavailable

    give_up = trio.current_time() + wait
    try:
        with trio.fail_after(wait):
            return await retry(client.version, backoff(0.5, factor=1.0, give_up=give_up, clock=trio.current_time),
                               retry_on=Unavailable)
    except trio.TooSlowError:
        raise Unavailable(f"it did not answer within {wait:g} s") from None


class _NetworkTransport:
    """Adapts ``node.net.Network`` to the byte ``Transport`` the dispatcher's peers use."""

    def __init__(self, network: Network) -> None:
        self.network = network
        self.peer_id = network.peer_id

    def addrs(self) -> list[str]:
        return self.network.addrs()

    async def request(self, peer_id: str, data: bytes, *, timeout: float, addrs: Sequence[str] = ()) -> bytes:
        return await self.network.request(peer_id, data, timeout=timeout, addrs=addrs)

    async def publish(self, data: bytes) -> None:
        """Gossip is best effort (every sender repeats what matters): a network that is stopping, as on
        SIGINT, loses the message with a warning instead of an error in each role's loop."""
        from node.net import NetworkError

        try:
            await self.network.publish(data)
        except NetworkError as e:
            log.warning("gossip not sent: %s", e)


async def run_node(config: NodeConfig, *, task_status: trio.TaskStatus[NodeReady] = trio.TASK_STATUS_IGNORED) -> None:
    from node import datadir

    problem = exposure_problem(config.api_host, config.authorized_keys, config.open_api)
    if problem is not None:  # the CLI says so first (cli.daemon); this guards every other way in
        raise ValueError(problem)
    with datadir.hold(config.data_dir):
        await _run_node(config, task_status=task_status)


async def _run_node(config: NodeConfig, *, task_status: trio.TaskStatus[NodeReady]) -> None:
    from compute import CapacityTracker, ComputeService
    from executors import ExecutorRegistry, default_registry
    from executors.faults import BadActor
    from node.net import Network
    from node.net.admission import load_admission
    from node.retention import cleanup_loop
    from node.store import Store
    from requester import RequesterService
    from requester.sweeps import SweepService

    seed = load_or_create_seed(config.data_dir)
    store = Store(config.data_dir / "shoal.db")
    limiter = RateLimiter(config.peer_rate_limit, config.peer_rate_burst) if config.peer_rate_limit > 0 else None
    dispatcher = Dispatcher(rate_limiter=limiter)
    admission = load_admission(config.network_key, config.trusted_peers)
    network = Network(seed=seed, listen=list(config.listen), peers=list(config.peers),
                      on_gossip=dispatcher.on_gossip, on_request=dispatcher.on_request,
                      validate_gossip=dispatcher.check_gossip, admission=admission)
    dispatcher.node_id = network.peer_id
    if admission.network_key is not None or admission.trusted_peers is not None:
        log.info("private network: %s", admission)
    peers = MessagePeers(_NetworkTransport(network), dispatcher, Identity(seed))
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        await nursery.start(network.run)
        compute = requester = sweeps = None
        inputs, publisher = await open_storage(config)
        if config.compute:
            total = config.limit_total or machine_resources(config.data_dir)
            registry = ExecutorRegistry.all_noop() if config.noop else default_registry(
                config.data_dir, network.peer_id, unsandboxed_python=config.unsandboxed_python,
                allow_images=config.allow_images, allow_network=config.allow_network,
                max_image_size=config.max_image_size, image_cache_size=config.image_cache_size)
            if config.bad_actor:
                registry = registry.map(BadActor)
            compute = ComputeService(peers=peers, store=store, executors=registry,
                                     capacity=CapacityTracker(total, config.limit_job),
                                     work_dir=config.data_dir / "work", backlog_size=config.backlog_size,
                                     pending_bid_timeout=config.pending_bid_timeout,
                                     inputs=inputs, publisher=publisher, labels=config.labels,
                                     network=config.allow_network, max_output_entries=config.max_output_entries)
            dispatcher.compute = compute
            if config.labels:
                log.info("labels: %s", format_labels(config.labels))
            for engine, why in (await trio.to_thread.run_sync(registry.problems)).items():
                log.warning("engine %s is not offered: %s", engine, why)
            # checked now, before the node starts any process (on cgroup v2 it may move itself into a leaf)
            for engine, note in (await trio.to_thread.run_sync(registry.containment_notes)).items():
                log.warning("engine %s: %s", engine, note)
            for executor in registry.executors():  # containers a crashed run of this node left behind: removed
                await executor.cleanup_leftovers()  # before any job of this run could make one with its label
            await nursery.start(compute.run)
            for executor in registry.executors():
                nursery.start_soon(executor.run_pool)  # warm interpreters; jobs start cold until then
        if config.requester:
            requester = RequesterService(peers=peers, store=store, quarantine_after=config.quarantine_after,
                                         joins=bool(config.peers))
            dispatcher.requester = requester
            if compute is not None:
                requester.on_node_info(peers.node_id, compute.node_info())  # know ourselves at once
            await nursery.start(requester.run)
            sweeps = SweepService(peers=peers, store=store, judge=requester)
            requester.sweep_work = sweeps.work_held  # a node on probation holds one piece of work of either kind
            dispatcher.sweeps = sweeps
            await nursery.start(sweeps.run)
        nursery.start_soon(cleanup_loop, store, publisher, config.retention, config.ttl,
                           config.data_dir / "work" if compute is not None else None)
        dispatcher.ready.set()
        node = Node(config, network, store, requester, compute, dispatcher, publisher, sweeps)
        tls = (config.tls_cert, config.tls_key) if config.tls_cert and config.tls_key else None
        urls = await nursery.start(partial(serve_api, tls=tls), create_app(node), config.api_host, config.api_port)
        ready = NodeReady(network.peer_id, network.addrs(), urls[0])
        log.info("node %s ready: api %s, listening on %s", ready.peer_id, ready.api, " ".join(ready.addrs))
        task_status.started(ready)


def raise_open_files_limit(most: int = 65_536) -> None:
    """Let the node open as many files as the hard limit allows (up to ``most``), as Go programs do: each
    connection, stream and job holds some, and a soft limit of 1,024 ran out under a few hundred event
    streams (the API stopped answering, a docker job was lost)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = most if hard == resource.RLIM_INFINITY else min(hard, most)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


class PeerNoise(logging.Filter):
    """py-libp2p's records in the node's log, with its time and level: they printed bare (its loggers do not
    propagate, so Python's last resort wrote them). What it logs as an error, a network of peers does every
    day (a stream a peer reset, a message it cut short): a warning here. A failed dial it logged four times a
    second while a peer was down; the node logs its own ("dial to … failed")."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("libp2p"):
            return True
        if record.name == "libp2p.transport.tcp.tcp" and str(record.msg).startswith("Failed to open TCP stream"):
            return False
        if record.levelno > logging.WARNING:
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class OncePer(logging.Filter):
    """Lets one record through per ``interval`` seconds, as a warning without its traceback, saying how many
    it held back. Trio's accept loop logs a whole traceback every 0.1 s while the process is out of file
    descriptors: 40 in 4 s when 400 connections reached a node limited to 256, a disk filler for anyone
    who can open connections."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.interval, self.clock = interval, clock
        self._next, self._held = -math.inf, 0

    def filter(self, record: logging.LogRecord) -> bool:
        now = self.clock()
        if now < self._next:
            self._held += 1
            return False
        if self._held:
            record.msg = f"{record.msg} (and {self._held} times more in the last {self.interval:g} s)"
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info = record.exc_text = None
        self._next, self._held = now + self.interval, 0
        return True


def main(config: NodeConfig) -> None:
    """``shoal serve``: run until SIGINT or SIGTERM; print one READY line (JSON) once everything listens.

    A signal cancels the node's nursery: the API, the network and the roles stop at their next
    checkpoint, the store finishes the write in hand, and ``main`` returns normally. A second
    signal while that runs interrupts it (KeyboardInterrupt). Anything else that ends the node is
    a crash: logged with its traceback, then raised for the caller to report.
    """
    logging.basicConfig(level=config.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import libp2p  # noqa: F401 - its import sets its loggers apart (propagate off), which this undoes

    logging.getLogger("libp2p").propagate = True
    for handler in logging.getLogger().handlers:
        handler.addFilter(PeerNoise())
    for noisy in ("libp2p", "multiaddr", "hypercorn.access"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    logging.getLogger("trio.serve_listeners").addFilter(OncePer(10.0))
    raise_open_files_limit()

    async def _main() -> None:
        # The receiver is open before anything starts, so a signal during start-up is handled
        # the same way as later: no KeyboardInterrupt out of some half-started component.
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async with trio.open_nursery() as outer:
                node_scope = trio.CancelScope()
                outer.start_soon(_stop_on_signal, signals, node_scope)  # outside node_scope: sees a 2nd signal
                with node_scope:
                    async with trio.open_nursery() as nursery:
                        ready = await nursery.start(run_node, config)
                        print("READY " + json.dumps({"peer_id": ready.peer_id, "addrs": ready.addrs,
                                                     "api": ready.api}), flush=True)
                outer.cancel_scope.cancel()

    try:
        trio.run(_main)
    except BaseException as exc:
        if _only_interrupts(exc):
            log.info("node stopped")
            raise KeyboardInterrupt from None  # a second signal cut the shutdown short
        cause = exc
        while isinstance(cause, BaseExceptionGroup) and len(cause.exceptions) == 1:
            cause = cause.exceptions[0]
        if isinstance(cause, ShoalError):  # raised on purpose, saying why: the reason is enough
            log.error("node stopped: %s", cause)
        else:
            log.exception("node stopped by an error")  # the node log keeps the traceback; the CLI prints one line
        raise
    log.info("node stopped")


async def _stop_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    async for signum in signals:
        if scope.cancel_called:
            raise KeyboardInterrupt  # a second signal: stop waiting for a clean shutdown
        log.info("stopping on %s", signal.Signals(signum).name)
        scope.cancel()


def _only_interrupts(exc: BaseException) -> bool:
    """KeyboardInterrupt, or an exception group made of nothing else (trio wraps them)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(e) for e in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)
