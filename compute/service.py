"""The compute role's trio service: feeds ``ComputeMachine`` and carries out what it decides.

Each entry point asks the machine, then ``_apply``s the ``Changes``: stop runs, write to the store, then
start tasks and send. Every state change is written before it is acted on; a restarted node reports what
it lost so the requester can re-offer it, and re-delivers results it had not delivered. A sweep claim runs
one worker per slot and one reporter; claims are not stored (after a crash the requester's lease returns
their indexes to others), published results are.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import trio

from compute.capacity import CapacityTracker
from compute.claims import Claim
from compute.machine import BID_ANSWER_WINDOW, PENDING_BID_TIMEOUT, Changes, ComputeMachine, Write
from compute.output import send_output
from compute.runner import Runner
from executors import ExecutorRegistry, LiveOutput
from jobs import Event, EventKind, Execution, ExecutionSide, PeerError, StaleState, Unreachable
from jobs.messages import Bid, Cancel, IndexResult, NodeInfo, Reply, Result
from jobs.messages import Claim as ClaimMessage
from jobs.spec import MIN_SILENCE
from node.tasks import RunBlocking, Spawner, backoff, retry

if TYPE_CHECKING:
    from jobs.messages import Announce, Decision, Peers, StatusQuery, SweepAnnounce
    from storage import InputRegistry, Publisher

log = logging.getLogger("shoal.compute")

SIDE = ExecutionSide.COMPUTE
REQUEST_TIMEOUT = 5.0
DELIVERY_GIVE_UP = 3600.0  # stop retrying a result after an hour of the requester being unreachable
BACKLOG_TICK = 0.5
PRUNE_TIMEOUT = 2.0
NODE_INFO_INTERVAL = 10.0
TASK_LIMIT = 10_000  # background tasks at once; capacity keeps normal work far below, this bounds a burst
# Result deliveries have a pool of their own: a requester that never gives a verdict keeps each for an hour, and
# must hold up neither bids and runs nor, past its share, other requesters' deliveries
DELIVERY_LIMIT = 1_000
DELIVERIES_PER_REQUESTER = 50


class ComputeStore(Protocol):
    """What the compute role needs from the node's store; ``node.store.Store`` provides it."""

    async def save(self, *, side: ExecutionSide, new_executions: Sequence[Execution] = (),
                   executions: Sequence[Execution] = (), events: Sequence[Event] = ()) -> None:
        """Write it all in one transaction; an update whose stored revision moved raises ``StaleState``."""

    async def live_executions(self, side: ExecutionSide) -> list[Execution]:
        """Executions not in a terminal state: what a restarted node must report or re-deliver."""

    async def add_published(self, cids: Sequence[str], at: float) -> None:
        """Remember results published outside an execution record (sweep indexes), for retention."""


@dataclass
class _Signals:  # the trio side of one sweep claim
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # the requester ended the claim
    wake: trio.Event = field(default_factory=trio.Event)  # the reporter has something to do
    work: trio.Event = field(default_factory=trio.Event)  # indexes arrived for the workers


class ComputeService:
    def __init__(self, *, peers: Peers, store: ComputeStore, executors: ExecutorRegistry, capacity: CapacityTracker,
                 work_dir: Path, backlog_size: int = 10_000, pending_bid_timeout: float = PENDING_BID_TIMEOUT,
                 inputs: InputRegistry | None = None, publisher: Publisher | None = None,
                 clock: Callable[[], float] = time.time, run_blocking: RunBlocking = trio.to_thread.run_sync,
                 labels: Mapping[str, str] | None = None, network: bool = False,
                 max_output_entries: int | None = None) -> None:
        self.peers = peers
        self.store = store
        self.executors = executors
        self.capacity = capacity
        self.runner = Runner(executors, work_dir, inputs=inputs, publisher=publisher, limits=capacity.max_per_job,
                             max_output_entries=max_output_entries, run_blocking=run_blocking)
        self.clock = clock
        self.publisher = publisher
        self.storage_problem: str | None = None  # why results cannot be published now: no engine is offered
        self._run_blocking = run_blocking
        self.boot = uuid.uuid4().hex
        self.machine = ComputeMachine(node_id=peers.node_id, capacity=capacity, engines=executors.installed(),
                                      input_problems=self.runner.input_problems,
                                      parallel=lambda engine: executors.get(engine).max_parallel,
                                      backlog_size=backlog_size, pending_bid_timeout=pending_bid_timeout,
                                      labels=labels, network=network)
        self.backlog = self.machine.backlog
        self._scopes: dict[str, trio.CancelScope] = {}  # execution id -> its running executor
        self._tasks = Spawner("compute", limit=TASK_LIMIT)
        self._deliveries = Spawner("compute deliveries", limit=DELIVERY_LIMIT)
        self._delivering: dict[str, int] = {}  # requester -> its deliveries started
        self._undelivered: dict[str, deque[tuple[str, float]]] = {}  # requester -> (execution id, give up) waiting
        self._wake_backlog = trio.Event()
        self._signals: dict[str, _Signals] = {}  # claim id -> its trio side

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._tasks.attach(nursery)
            self._deliveries.attach(nursery)
            await self._run_blocking(self.runner.remove_leftovers)
            await self._apply(self.machine.restore(await self.store.live_executions(SIDE), self.clock()))
            nursery.start_soon(self._backlog_loop)
            nursery.start_soon(self._node_info_loop)
            task_status.started()

    async def _apply(self, changes: Changes) -> None:
        """Stop runs, write, then start what follows: a message or task never runs ahead of the store."""
        for execution_id in changes.stop:
            if (scope := self._scopes.get(execution_id)) is not None:
                scope.cancel()
        if changes.released:
            self._wake_backlog.set()
        for write in changes.writes:
            await self._write(write)
        self._start(changes)

    def _start(self, changes: Changes) -> None:
        for ex, give_up in changes.bids:  # each bid is stored by its own task, before it is sent
            self._tasks.spawn(self._bid, ex, give_up)
        for execution_id in changes.runs:
            self._tasks.spawn(self._execute, execution_id)
        for execution_id in changes.deliveries:
            if (ex := self.machine.live.get(execution_id)) is not None:
                give_up = self.clock() + DELIVERY_GIVE_UP  # from now, waiting included: unanswered results drain
                self._undelivered.setdefault(ex.requester, deque()).append((execution_id, give_up))
                self._next_deliveries(ex.requester)
        for execution_id, wait in changes.expire:
            self._tasks.spawn(self._expire_pending, execution_id, wait)

    async def _write(self, write: Write) -> None:
        ex = write.execution
        event = Event(job_id=ex.job_id, at=self.clock(), kind=write.kind, execution_id=ex.id,
                      node_id=self.peers.node_id, message=write.message)
        await self.store.save(side=SIDE, new_executions=[ex] if write.new else [],
                              executions=[] if write.new else [ex], events=[event])

    # -- announcements and bidding ---------------------------------------------------------------

    def on_announce(self, origin: str, ann: Announce) -> bool:
        """A job needs nodes: True when a bid is on its way, in its own task (a requester offering a
        job to its own node falls back to announcing it to everyone when this is False)."""
        bidding, changes = self.machine.announce(origin, ann, self.clock())
        self._start(changes)
        return bidding

    def on_sweep_announce(self, origin: str, ann: SweepAnnounce) -> None:
        self._claim(self.machine.announce_sweep(origin, ann, self.clock()))

    async def _bid(self, ex: Execution, give_up: float) -> None:
        try:
            await self._write(Write(ex, EventKind.BID, new=True))
        except Exception:
            if self.machine.drop(ex):
                self._wake_backlog.set()
            raise
        reply = await self._until_verdict(ex, Bid(job_id=ex.job_id, execution_id=ex.id, attempt=ex.attempt), give_up)
        await self._apply(self.machine.bid_answered(ex.id, reply, self.clock()))

    async def _expire_pending(self, execution_id: str, wait: float) -> None:
        await trio.sleep(wait)
        await self._apply(self.machine.expire_pending(execution_id, wait, self.clock()))

    async def _until_verdict(self, to: Execution | SweepAnnounce, message: Bid | Result | ClaimMessage,
                             give_up: float | None = None) -> Reply | None:
        """Send ``message`` to ``to``'s requester until it gives a verdict: None when ``give_up`` (unix time;
        None: after one try) passes first. An answer without a verdict (the requester is starting, or
        failed internally) counts as silence: only the requester's explicit word ends the exchange."""
        async def once() -> Reply:
            reply = await self.peers.request(to.requester, message, timeout=REQUEST_TIMEOUT, addrs=to.requester_addrs)
            if reply.verdict is None:
                log.info("no verdict from %s on %s (%s)", to.requester[-8:], message.kind, reply.reason)
                raise Unreachable(to.requester, f"no verdict: {reply.reason}")
            return reply

        delays = () if give_up is None else backoff(0.1, cap=5.0, give_up=give_up, clock=self.clock)
        try:
            return await retry(once, delays)
        except PeerError as e:
            log.debug("no verdict from %s on %s: %s", to.requester[-8:], message.kind, e)
            return None

    # -- running -------------------------------------------------------------------------------------

    async def _execute(self, execution_id: str) -> None:
        if (start := self.machine.to_run(execution_id)) is None:
            return  # cancelled between its acceptance and this task's start
        ex, secret_env = start
        with trio.CancelScope() as scope:
            self._scopes[ex.id] = scope
            try:
                async with trio.open_nursery() as nursery:  # Runner.run returns every failure as an Outcome
                    live = LiveOutput()
                    nursery.start_soon(send_output, self.peers, ex, live)
                    outcome = await self.runner.run(ex, secret_env, live)
                    nursery.cancel_scope.cancel()
            finally:
                self._scopes.pop(ex.id, None)
        if scope.cancelled_caught:  # cancelled by the requester; the machine recorded it
            return
        await self._apply(self.machine.run_over(ex.id, outcome.result, outcome.error, outcome.retryable, self.clock()))

    def _next_deliveries(self, requester: str) -> None:
        """Start ``requester``'s waiting deliveries while it has fewer than its share going."""
        waiting = self._undelivered.get(requester, deque())
        while waiting and self._delivering.get(requester, 0) < DELIVERIES_PER_REQUESTER:
            self._delivering[requester] = self._delivering.get(requester, 0) + 1
            self._deliveries.spawn(self._deliver_result, requester, *waiting.popleft())
        if not waiting:
            self._undelivered.pop(requester, None)

    async def _deliver_result(self, requester: str, execution_id: str, give_up: float) -> None:
        """Send the outcome until the requester answers; it may be restarting."""
        try:
            if (delivery := self.machine.to_deliver(execution_id)) is None:
                return  # ended meanwhile (cancelled, or its verdict came in another exchange)
            ex, message = delivery
            reply = await self._until_verdict(ex, message.signed(self.peers), give_up)
            await self._apply(self.machine.result_answered(execution_id, reply, self.clock()))
        finally:
            self._delivering[requester] -= 1
            if not self._delivering[requester]:
                del self._delivering[requester]
            self._next_deliveries(requester)

    # -- direct messages from requesters ----------------------------------------------------------

    async def handle(self, peer: str, message: Decision | Cancel | StatusQuery) -> Reply:
        if isinstance(message, Cancel):  # the requester ended a sweep: stop our claim on it now
            reply, claim = self.machine.cancel_claim(peer, message)
            if claim is not None:
                self._signals[claim.claim_id].scope.cancel()
            if reply is not None:
                return reply
        reply, changes = self.machine.handle(peer, message, self.clock())
        try:
            await self._apply(changes)
        except StaleState:
            if not isinstance(message, Cancel):  # a cancel may race the execution's own end
                raise
        return reply

    # -- backlog and advertising ---------------------------------------------------------------------

    async def _backlog_loop(self) -> None:
        while True:
            with trio.move_on_after(BACKLOG_TICK):
                await self._wake_backlog.wait()
            self._wake_backlog = trio.Event()
            try:  # the backlog holds what peers announced: a round that fails must not end the node
                await self._bid_from_backlog()
            except Exception:
                log.exception("bidding from the backlog")

    async def _bid_from_backlog(self) -> None:
        now = self.clock()
        fitting = self.machine.backlog_fitting(now)
        for query, anns in self.machine.open_queries(fitting, now):  # forget jobs no longer open
            with contextlib.suppress(PeerError):
                reply = await self.peers.request(anns[0].requester, query, timeout=PRUNE_TIMEOUT,
                                                 addrs=anns[0].requester_addrs)
                self.machine.forget_closed(anns, reply)
        await self._apply(self.machine.bid_from_backlog(fitting, now))
        self._claim(*self.machine.retry_waiting(self.clock()))

    def node_info(self) -> NodeInfo:
        indexes = sum(len(claim.running) for claim in self.machine.claims.values())
        return NodeInfo(peer_id=self.peers.node_id, addrs=self.peers.addrs(), engines=self.machine.engines,
                        max_per_job=self.capacity.max_per_job, total=self.capacity.total, free=self.capacity.free,
                        running=len(self._scopes) + indexes, backlog=len(self.backlog), boot=self.boot,
                        labels=self.machine.labels, network=self.machine.network)

    async def _node_info_loop(self) -> None:
        delays = [0.3, 0.7, 1.0, 2.0]
        answering = self.machine.engines
        while True:
            await trio.sleep(delays.pop(0) if delays else NODE_INFO_INTERVAL)
            installed = await self._run_blocking(self.executors.installed)  # e.g. dockerd came or went
            if await self._storage_down():
                installed = []  # a job taken now would run, then fail for want of somewhere to put its results
            if installed != answering:
                log.info("engines answering now: %s", ", ".join(installed) or "none")
                answering = installed
            if self.machine.engines_answering(installed, self.clock()):
                self._wake_backlog.set()
            try:
                await self.peers.publish(self.node_info())
            except Exception:
                log.exception("could not publish node info")

    async def _storage_down(self) -> bool:
        """Whether the publisher cannot be reached now; logs once when it goes down, once when it is back."""
        problem = await self.publisher.problem() if self.publisher is not None else None
        if problem is not None and self.storage_problem is None:
            log.warning("results cannot be stored (%s): no engine is offered until they can", problem)
        elif problem is None and self.storage_problem is not None:
            log.info("results can be stored again")
        self.storage_problem = problem
        return problem is not None

    # -- sweep claims ----------------------------------------------------------------------------------

    def _claim(self, *claims: Claim | None) -> None:
        for claim in claims:
            if claim is not None:
                self._signals[claim.claim_id] = signals = _Signals()
                self._tasks.spawn(self._run_claim, claim, signals)

    async def _run_claim(self, claim: Claim, signals: _Signals) -> None:
        try:
            with signals.scope:
                async with trio.open_nursery() as nursery:
                    for _ in claim.slots:
                        nursery.start_soon(self._worker, claim, signals)
                    await self._reporter(claim, signals)
                    nursery.cancel_scope.cancel()
        finally:
            del self._signals[claim.claim_id]
            self.machine.finish_claim(claim)
            self._wake_backlog.set()  # capacity came free

    async def _worker(self, claim: Claim, signals: _Signals) -> None:
        while True:
            started = claim.start_next(self.peers.node_id, self.clock())
            if started is None:
                signals.wake.set()  # running dry: ask for more now
                signals.work = trio.Event() if signals.work.is_set() else signals.work
                await signals.work.wait()
                continue
            index, ex = started
            outcome = await self.runner.run(ex, sweep=True)
            claim.finished(IndexResult(index=index, result=outcome.result, error=outcome.error,
                                       retryable=outcome.retryable), self.clock())
            self._release_idle(claim)
            signals.wake.set()

    async def _reporter(self, claim: Claim, signals: _Signals) -> None:
        """Returns when the claim is over: the requester said stop, or there is nothing left to do."""
        # the announcing peer chose the silence: a tiny one must not make us report in a tight loop, nor an
        # endless one hold our slots for ever
        silence = claim.ann.spec.job.deadlines.silence
        heartbeat = max(silence, MIN_SILENCE) / 3
        give_up = min(silence * 2, DELIVERY_GIVE_UP)
        claim.last_answer = self.clock()
        while True:
            now = self.clock()
            wait = claim.next_report(now, heartbeat)
            if wait is None:
                return  # nothing left for us
            if wait:
                signals.wake = trio.Event()
                with trio.move_on_after(wait):
                    await signals.wake.wait()
                continue
            want, batch = claim.want(now), claim.take_batch(now)
            reply = await self._report(claim, batch, want)
            if reply is None:
                claim.unsent(batch)
                if self.clock() - claim.last_answer > (give_up if claim.ever_answered else BID_ANSWER_WINDOW):
                    log.info("giving up claim %s: requester unreachable", claim.claim_id)
                    if not claim.ever_answered:  # like an unanswered bid: its slots were held for nothing
                        self.machine.requester_silent(claim.ann.requester, self.clock())
                    return
                await trio.sleep(min(1.0, heartbeat))
                continue
            granted = claim.answered(reply, want, self.clock())
            if granted is None:
                log.debug("claim %s ended by the requester: %s", claim.claim_id, reply.reason)
                return
            self._release_idle(claim)
            if granted:
                signals.work.set()

    def _release_idle(self, claim: Claim) -> None:
        if self.machine.release_idle(claim):
            self._wake_backlog.set()  # capacity came free

    async def _report(self, claim: Claim, batch: list[IndexResult], want: int) -> Reply | None:
        cids = [r.result.cid for r in batch if r.result is not None and r.result.cid]
        if cids:  # before the requester hears of them: retention must be able to find them
            await self.store.add_published(cids, self.clock())
        msg = ClaimMessage(sweep_id=claim.ann.sweep_id, claim_id=claim.claim_id, want=want, results=batch)
        return await self._until_verdict(claim.ann, msg.signed(self.peers))
