"""The compute role's trio service: bids, runs executions, delivers results.

Every state change is written to the store before it is acted on; a restarted node reports
what it lost so the requester can re-offer it, and re-delivers results it had not delivered.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from compute.backlog import Backlog
from compute.bidding import engine_installed, first_refusal, inputs_fetchable, within_job_limits
from compute.capacity import CapacityTracker
from compute.runner import Runner
from compute.sweeps import SweepClaims
from executors import ExecutorRegistry
from jobs import Event, EventKind, Execution, ExecutionSide, ExecutionState, StaleState, Unreachable
from jobs.messages import (
    Announce,
    Bid,
    Cancel,
    Decision,
    NodeInfo,
    OpenQuery,
    Peers,
    Reply,
    Result,
    StatusQuery,
    SweepAnnounce,
)

if TYPE_CHECKING:
    from node.store import Store
    from storage import InputRegistry, Publisher

log = logging.getLogger("shoal.compute")

SIDE = ExecutionSide.COMPUTE
REQUEST_TIMEOUT = 5.0
DELIVERY_GIVE_UP = 3600.0  # stop retrying a result after an hour of the requester being unreachable
BACKLOG_TICK = 0.5
PRUNE_INTERVAL = 0.5  # at most this often, ask a requester which backlog jobs are still open
PRUNE_TIMEOUT = 2.0
NODE_INFO_INTERVAL = 10.0
RECENT_JOBS = 20_000  # (requester, job id) -> last attempt bid on; bounds memory while deduplicating
PENDING_BID_TIMEOUT = 120.0  # longest a bid answered "pending" holds capacity (``--pending-bid-timeout``)
PENDING_BID_GRACE = 10.0  # past the job's min_bids wait, for the requester's decision to arrive


class ComputeService:
    def __init__(
        self,
        *,
        peers: Peers,
        store: Store,
        executors: ExecutorRegistry,
        capacity: CapacityTracker,
        work_dir: Path,
        backlog_size: int = 10_000,
        pending_bid_timeout: float = PENDING_BID_TIMEOUT,
        inputs: InputRegistry | None = None,
        publisher: Publisher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.peers = peers
        self.store = store
        self.executors = executors
        self.capacity = capacity
        self.runner = Runner(executors, work_dir, inputs=inputs, publisher=publisher)
        self.backlog = Backlog(backlog_size)
        self.clock = clock
        self.pending_bid_timeout = pending_bid_timeout
        self.engines = executors.installed()
        self.boot = uuid.uuid4().hex
        self._checks = [engine_installed(self.engines), within_job_limits(capacity.max_per_job),
                        inputs_fetchable(self.runner.input_problems)]
        self._live: dict[str, Execution] = {}  # execution id -> live execution
        self._by_job: dict[tuple[str, str], str] = {}  # (requester, job id) -> live execution id
        self._recent: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._scopes: dict[str, trio.CancelScope] = {}
        self._secrets: dict[str, dict[str, str]] = {}  # execution id -> the job's secret_env: memory only, never stored
        self._nursery: trio.Nursery | None = None
        self._wake_backlog = trio.Event()
        self._pruned: dict[str, float] = {}  # requester -> when we last asked it which jobs are open
        self.sweeps = SweepClaims(peers=peers, store=store, capacity=capacity, runner=self.runner,
                                  refusal=lambda spec: first_refusal(self._checks, spec),
                                  released=lambda: self._wake_backlog.set(), clock=clock)

    # -- lifecycle -----------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self.sweeps.start(nursery)
            await trio.to_thread.run_sync(self.runner.remove_leftovers)
            await self._restore()
            nursery.start_soon(self._backlog_loop)
            nursery.start_soon(self._node_info_loop)
            task_status.started()

    async def _restore(self) -> None:
        """Executions a previous process left unfinished: report or re-deliver each."""
        for ex in await self.store.live_executions(SIDE):
            self._track(ex)
            if ex.state is ExecutionState.PROPOSED:
                self._spawn(self._deliver_result, ex.id)
                continue
            why = "node restarted before the bid was decided" if ex.state is ExecutionState.BIDDING else (
                "node restarted while running the job")
            ex = ex.transition(ExecutionState.PROPOSED, why, self.clock(), error=why, retryable=True)
            await self._save(ex, EventKind.ERROR, why)
            self._spawn(self._deliver_result, ex.id)

    def _spawn(self, fn, *args) -> None:
        assert self._nursery is not None, "ComputeService.run() is not running"
        self._nursery.start_soon(fn, *args)

    def _track(self, ex: Execution) -> None:
        if ex.state.is_terminal:
            self._live.pop(ex.id, None)
            if self._by_job.get(_job_key(ex)) == ex.id:
                del self._by_job[_job_key(ex)]
        else:
            self._live[ex.id] = ex
            self._by_job[_job_key(ex)] = ex.id

    async def _save(self, ex: Execution, kind: EventKind, message: str = "", *, new: bool = False) -> None:
        event = Event(job_id=ex.job_id, at=self.clock(), kind=kind, execution_id=ex.id,
                      node_id=self.peers.node_id, message=message)
        if new:
            await self.store.save(side=SIDE, new_executions=[ex], events=[event])
        else:
            await self.store.save(side=SIDE, executions=[ex], events=[event])
        self._track(ex)

    # -- announcements and bidding ---------------------------------------------------------------

    def on_announce(self, origin: str, ann: Announce) -> bool:
        """A job needs nodes. Cheap checks here; the bid itself runs in its own task.

        True when a bid for this announcement is on its way (a requester offering a job to its
        own node falls back to announcing it to everyone when this is False).
        """
        if origin != ann.requester:
            log.warning("dropping announcement of %s relayed as if from %s", ann.job_id, origin)
            return False
        now = self.clock()
        if ann.bid_deadline is not None and now > ann.bid_deadline:
            return False
        if ann.key in self._by_job or self._recent.get(ann.key, -1) >= ann.attempt:
            return False
        if ann.candidates and self.peers.node_id not in ann.candidates:
            return False  # other nodes were asked first; if they do not take it, it is announced to all
        refusal = first_refusal(self._checks, ann.spec)
        if refusal is not None:
            log.debug("passing over %s: %s", ann.job_id, refusal)
            return False
        if self._try_bid(ann):
            return True
        self.backlog.add(ann, now)
        return False

    def on_sweep_announce(self, origin: str, ann: SweepAnnounce) -> None:
        self.sweeps.on_announce(origin, ann)

    def _try_bid(self, ann: Announce) -> bool:
        if not ann.spec.resources.fits_in(self.capacity.free):  # before the id: most calls end here under load
            return False
        execution_id = f"e-{uuid.uuid4().hex}"
        if not self.capacity.try_reserve(execution_id, ann.spec.resources):
            return False
        self.backlog.discard(ann.key)
        self._recent[ann.key] = ann.attempt
        self._recent.move_to_end(ann.key)
        while len(self._recent) > RECENT_JOBS:
            self._recent.popitem(last=False)
        now = self.clock()
        ex = Execution(
            id=execution_id, job_id=ann.job_id, node_id=self.peers.node_id, requester=ann.requester,
            attempt=ann.attempt, created_at=now, updated_at=now, spec=ann.spec,
            requester_addrs=ann.requester_addrs, reason="bid sent, waiting for the requester's decision",
        )
        self._track(ex)  # before any await: a second announcement of this job sees it
        self._spawn(self._bid, ex, ann.bid_deadline)
        return True

    async def _bid(self, ex: Execution, deadline: float | None) -> None:
        try:
            await self._save(ex, EventKind.BID, new=True)
        except Exception:
            self._drop(ex)
            raise
        give_up = min(deadline or float("inf"), self.clock() + 60.0)
        bid = Bid(job_id=ex.job_id, execution_id=ex.id, attempt=ex.attempt)
        reply = await self._request_verdict(ex, bid, give_up)
        if reply is None:
            await self._end(ex.id, ExecutionState.FAILED, "the bid got no answer from the requester")
        elif reply.verdict == "accepted":
            await self._accepted(ex.id, reply.secret_env)
        elif reply.verdict == "rejected":
            await self._end(ex.id, ExecutionState.REJECTED, reply.reason or "bid rejected")
        else:  # "pending": a Decision message follows, or the bid expires and its capacity comes back
            wait = self.pending_wait(ex)
            await trio.sleep(wait)
            current = self._live.get(ex.id)
            if current is not None and current.state is ExecutionState.BIDDING:
                await self._end(ex.id, ExecutionState.REJECTED, f"no decision on the bid within {wait:g} s")

    def pending_wait(self, ex: Execution) -> float:
        """How long a bid answered "pending" may hold capacity: the job's wait for ``min_bids`` plus
        a grace, never more than the node's ``pending_bid_timeout`` (a requester picks the former)."""
        min_bids_wait = ex.spec.deadlines.min_bids if ex.spec is not None else 0.0
        return min(min_bids_wait + PENDING_BID_GRACE, self.pending_bid_timeout)

    def _drop(self, ex: Execution) -> None:
        self._secrets.pop(ex.id, None)
        self._live.pop(ex.id, None)
        if self._by_job.get(_job_key(ex)) == ex.id:
            del self._by_job[_job_key(ex)]
        if self.capacity.release(ex.id):
            self._wake_backlog.set()

    async def _end(self, execution_id: str, state: ExecutionState, reason: str) -> None:
        """Move a live execution to a terminal state, release what it holds, kick the backlog."""
        ex = self._live.get(execution_id)
        if ex is None or ex.state.is_terminal:
            return
        kind = {ExecutionState.REJECTED: EventKind.BID_REJECTED, ExecutionState.CANCELLED: EventKind.CANCELLED,
                ExecutionState.COMPLETED: EventKind.RESULTS_ACCEPTED}.get(state, EventKind.ERROR)
        if ex.state is ExecutionState.PROPOSED and state is ExecutionState.REJECTED:
            kind = EventKind.RESULTS_REJECTED
        ex = ex.transition(state, reason, self.clock())
        self._drop(ex)
        await self._save(ex, kind, reason)

    # -- running -------------------------------------------------------------------------------------

    async def _accepted(self, execution_id: str, secret_env: dict[str, str]) -> None:
        ex = self._live.get(execution_id)
        if ex is None or ex.state is not ExecutionState.BIDDING:
            return
        if secret_env:
            self._secrets[ex.id] = secret_env
        ex = ex.transition(ExecutionState.ACCEPTED, "running", self.clock())
        await self._save(ex, EventKind.BID_ACCEPTED)
        self._spawn(self._execute, ex.id)

    async def _execute(self, execution_id: str) -> None:
        ex = self._live.get(execution_id)
        if ex is None or ex.state is not ExecutionState.ACCEPTED:
            return  # cancelled between its acceptance and this task's start
        with trio.CancelScope() as scope:
            self._scopes[ex.id] = scope
            try:
                outcome = await self.runner.run(ex, self._secrets.get(ex.id, {}))
            finally:
                self._scopes.pop(ex.id, None)
                self._secrets.pop(ex.id, None)  # the run is over: no one needs them any more
        if scope.cancelled_caught:  # cancelled by the requester; _on_cancel recorded it
            return
        if self.capacity.release(ex.id):
            self._wake_backlog.set()
        ex = self._live.get(execution_id)
        if ex is None or ex.state is not ExecutionState.ACCEPTED:
            return
        result, error = outcome.result, outcome.error
        message = error or f"exit code {result.exit_code if result else '?'}"
        ex = ex.transition(ExecutionState.PROPOSED, message, self.clock(), result=result, error=error,
                           retryable=outcome.retryable)
        await self._save(ex, EventKind.RESULTS_PROPOSED if error is None else EventKind.ERROR, message)
        await self._deliver_result(ex.id)

    async def _deliver_result(self, execution_id: str) -> None:
        """Send the outcome until the requester answers; it may be restarting."""
        ex = self._live.get(execution_id)
        if ex is None or ex.state is not ExecutionState.PROPOSED:
            return  # ended meanwhile (cancelled, or its verdict came in another exchange)
        message = Result(job_id=ex.job_id, execution_id=ex.id, result=ex.result, error=ex.error,
                         retryable=ex.retryable)
        message = message.model_copy(update={"digest": message.outcome()})
        signature = base64.urlsafe_b64encode(self.peers.sign(message.statement())).decode()
        message = message.model_copy(update={"signature": signature})
        reply = await self._request_verdict(ex, message, self.clock() + DELIVERY_GIVE_UP)
        if reply is None:
            await self._end(ex.id, ExecutionState.FAILED, "could not deliver the result to the requester")
            return
        await self._apply_result_verdict(ex.id, reply.verdict, reply.reason)

    async def _apply_result_verdict(self, execution_id: str, verdict: str | None, reason: str) -> None:
        """'pending': the requester is verifying; its Decision will follow (and it answers a re-delivery)."""
        ex = self._live.get(execution_id)
        if ex is None or ex.state is not ExecutionState.PROPOSED or verdict == "pending":
            return
        if verdict == "accepted":
            final = ExecutionState.FAILED if ex.error else ExecutionState.COMPLETED
            await self._end(ex.id, final, ex.error or reason or "results accepted")
        else:
            await self._end(ex.id, ExecutionState.REJECTED, reason or "results rejected")

    async def _request_verdict(self, ex: Execution, message: Bid | Result, give_up: float) -> Reply | None:
        """Send until the requester gives a verdict; None when ``give_up`` (unix time) passes first.

        An answer without a verdict (the requester is still starting, or failed internally) is
        retried like silence: only the requester's explicit word ends the exchange.
        """
        delay = 0.1
        while True:
            try:
                reply = await self.peers.request(ex.requester, message, timeout=REQUEST_TIMEOUT,
                                                 addrs=ex.requester_addrs)
                if reply.verdict is not None:
                    return reply
                log.info("no verdict from %s on %s (%s); retrying", ex.requester[-8:], ex.id, reply.reason)
            except Unreachable:
                pass
            if self.clock() + delay > give_up:
                return None
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)

    # -- direct messages from requesters ----------------------------------------------------------

    async def handle(self, peer: str, message: Decision | Cancel | StatusQuery) -> Reply:
        if isinstance(message, StatusQuery):
            states = {}
            for eid in message.execution_ids:
                ex = self._live.get(eid)
                states[eid] = ex.state.value if ex is not None and ex.requester == peer else "unknown"
            return Reply(states=states)
        if isinstance(message, Cancel):
            reply = await self.sweeps.cancel(peer, message)
            if reply is not None:
                return reply
        ex = self._live.get(message.execution_id)
        if ex is None:
            return Reply(ok=False, reason="unknown or finished execution")
        if ex.requester != peer:
            log.warning("peer %s tried to %s execution %s of requester %s", peer, message.kind, ex.id, ex.requester)
            return Reply(ok=False, reason="only the job's requester may do that")
        if isinstance(message, Decision):
            if ex.state is ExecutionState.PROPOSED:  # the verdict on our results
                await self._apply_result_verdict(ex.id, "accepted" if message.accepted else "rejected",
                                                 message.reason)
            elif message.accepted:
                await self._accepted(ex.id, message.secret_env)
            else:
                await self._end(ex.id, ExecutionState.REJECTED, message.reason or "bid rejected")
            return Reply()
        await self._on_cancel(ex.id, message.reason or "cancelled by the requester")
        return Reply()

    async def _on_cancel(self, execution_id: str, reason: str) -> None:
        scope = self._scopes.get(execution_id)
        if scope is not None:
            scope.cancel()
        with contextlib.suppress(StaleState):
            await self._end(execution_id, ExecutionState.CANCELLED, reason)

    # -- backlog and advertising ---------------------------------------------------------------------

    async def _backlog_loop(self) -> None:
        while True:
            with trio.move_on_after(BACKLOG_TICK):
                await self._wake_backlog.wait()
            self._wake_backlog = trio.Event()
            now = self.clock()
            fitting = [a for a in self.backlog.pending(now) if a.spec.resources.fits_in(self.capacity.free)]
            if fitting:
                await self._forget_closed(fitting, now)
            for ann in fitting:  # what did not fit a moment ago does not fit now
                if ann.key not in self.backlog:
                    continue  # closed, or bid on meanwhile
                if ann.key in self._by_job:
                    self.backlog.discard(ann.key)
                else:
                    self._try_bid(ann)
            self.sweeps.retry_waiting()

    async def _forget_closed(self, entries: list[Announce], now: float) -> None:
        """Ask each requester which of these jobs still need nodes, and forget the others.

        Without this a busy node bids, once it has room, on every job another node took while it
        was full: a wasted round trip and two store writes each, and a backlog that grows with
        the traffic (measured: 38 % of a node's CPU in the throughput benchmark). One message
        per requester, at most every PRUNE_INTERVAL.
        """
        by_requester: dict[str, list[Announce]] = {}
        for ann in entries:
            by_requester.setdefault(ann.requester, []).append(ann)
        for requester, anns in by_requester.items():
            if now - self._pruned.get(requester, 0.0) < PRUNE_INTERVAL:
                continue
            self._pruned[requester] = now
            query = OpenQuery(job_ids=[a.job_id for a in anns[:10_000]])
            try:
                reply = await self.peers.request(requester, query, timeout=PRUNE_TIMEOUT, addrs=anns[0].requester_addrs)
            except Unreachable:
                continue
            for ann in anns:
                if reply.states.get(ann.job_id) == "closed":
                    self.backlog.discard(ann.key)

    def node_info(self) -> NodeInfo:
        return NodeInfo(
            peer_id=self.peers.node_id, addrs=self.peers.addrs(), engines=self.engines,
            max_per_job=self.capacity.max_per_job, total=self.capacity.total, free=self.capacity.free,
            running=len(self._scopes) + self.sweeps.running(), backlog=len(self.backlog), boot=self.boot,
        )

    async def _node_info_loop(self) -> None:
        delays = [0.3, 0.7, 1.0, 2.0]
        while True:
            await trio.sleep(delays.pop(0) if delays else NODE_INFO_INTERVAL)
            engines = await trio.to_thread.run_sync(self.executors.installed)  # e.g. dockerd came or went
            if engines != self.engines:
                log.info("engines now available: %s", ", ".join(engines) or "none")
                self.engines = engines
                self._checks[0] = engine_installed(engines)
            try:
                await self.peers.publish(self.node_info())
            except Exception:
                log.exception("could not publish node info")

    def statistics(self) -> dict[str, object]:
        return {"live": len(self._live), "running": len(self._scopes), "backlog": self.backlog.statistics(),
                "capacity": self.capacity.statistics()}


def _job_key(ex: Execution) -> tuple[str, str]:
    return (ex.requester, ex.job_id)
