"""The requester role's trio service: announce, choose bids, collect results, keep deadlines.

Per job, the requester sends one announcement (direct offers to the nodes ``candidates`` names,
else gossip; repeated with backoff to everyone while the job is short of nodes) and then only
direct messages to the nodes that bid. A one-node job its own compute role has room for runs
there without any announcement.
Bid and result verdicts travel in the reply to the bid or result itself, so a job with
``concurrency=N`` costs N bids and N results, each one round trip.

State that matters is written to the store before it is acted on; a restarted requester
loads its live jobs and carries on (compute nodes keep re-delivering their results).
"""

from __future__ import annotations

import base64
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from jobs import (
    DuplicateKey,
    Event,
    EventKind,
    Execution,
    ExecutionSide,
    ExecutionState,
    Job,
    JobSpec,
    JobState,
    RunResult,
    Unreachable,
)
from jobs.messages import Announce, Bid, Cancel, Decision, NodeInfo, OpenQuery, Peers, Reply, Result, StatusQuery
from jobs.views import JobDescription, Phases
from requester.nodes import NodeTable
from requester.selection import can_ever_run, candidates, choose, never_runnable, waiting_reason
from requester.trust import (
    agreeing_nodes,
    bid_refusal,
    cache_verified,
    error_confirmed,
    error_reporters,
    nodes_left,
)
from requester.verify import verify

if TYPE_CHECKING:
    from node.store import Store

log = logging.getLogger("shoal.requester")

SIDE = ExecutionSide.REQUESTER
SWEEP_INTERVAL = 0.25  # how often deadlines and re-announcements are checked
LIVENESS_INTERVAL = 1.0  # how often nodes running our executions are asked whether they still are
LIVENESS_TIMEOUT = 2.0  # a node that cannot answer a status query this fast counts as silent for that round
REQUEST_TIMEOUT = 5.0
ANNOUNCE_BACKOFF_MAX = 30.0
NODE_INFO_TTL = 30.0  # a compute node not heard from for this long is forgotten
MAX_REOFFERS = 5
CANDIDATE_SPARE = 1  # a first announcement asks one node more than the job needs
QUARANTINE_AFTER = 3  # rejected results after which a node's bids are refused


class UnknownJob(KeyError):
    pass


class IdempotencyConflict(Exception):
    """The idempotency key was used before with another request body."""


@dataclass
class _Active:
    """A live job and what the requester needs to drive it (rebuilt from the store on restart)."""

    job: Job
    executions: dict[str, Execution] = field(default_factory=dict)
    lock: trio.Lock = field(default_factory=trio.Lock)
    done: trio.Event = field(default_factory=trio.Event)
    next_announce: float = 0.0
    announce_backoff: float = 1.0
    waiting_since: float = 0.0  # when the job last became short of nodes
    first_bid_at: float | None = None
    secrets: dict[str, str] = field(default_factory=dict)  # the job's secret_env: only accepted nodes get it

    def held(self) -> int:
        return sum(1 for x in self.executions.values() if x.state.holds_slot)

    def needed(self) -> int:
        return self.job.spec.deal.concurrency - self.held()

    def bidding(self) -> list[Execution]:
        return [x for x in self.executions.values() if x.state is ExecutionState.BIDDING]


class RequesterService:
    def __init__(self, *, peers: Peers, store: Store, clock: Callable[[], float] = time.time,
                 max_reoffers: int = MAX_REOFFERS, quarantine_after: int = QUARANTINE_AFTER) -> None:
        self.peers = peers
        self.store = store
        self.clock = clock
        self.max_reoffers = max_reoffers
        self.quarantine_after = quarantine_after
        self.reputation: dict[str, tuple[int, int]] = {}  # peer -> (results accepted, results rejected)
        self.nodes = NodeTable(ttl=NODE_INFO_TTL)
        self._active: dict[str, _Active] = {}
        self._in_flight: dict[str, int] = {}  # owner -> live jobs (the API's jobs-in-flight quota)
        self._last_heard: dict[str, float] = {}  # node -> last time it answered or wrote to us
        self._started_at = clock()  # a restarted requester gives every node a full silence window
        self._checking: set[str] = set()
        self._nursery: trio.Nursery | None = None
        self._rng = random.Random()
        self.counters = {"bids": 0, "bids_accepted": 0, "bids_rejected": 0, "results": 0, "announcements": 0,
                         "offered_here": 0, "reoffers": 0, "results_refused": 0, "penalties": 0}
        self.latencies: list[float] = []  # submit -> terminal of recently finished jobs (bounded)

    # -- lifecycle -------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._started_at = self.clock()
            await self._restore()
            nursery.start_soon(self._sweep_loop)
            nursery.start_soon(self._liveness_loop)
            task_status.started()

    async def _restore(self) -> None:
        self.reputation = await self.store.reputations()
        now = self.clock()
        secrets = await self.store.live_secrets()
        for job in await self.store.live_jobs():
            aj = _Active(job=job, waiting_since=now, next_announce=now, secrets=secrets.get(job.id) or {})
            for ex in await self.store.executions_of(SIDE, job.id):
                aj.executions[ex.id] = ex
            self._track(aj)
            if job.id in secrets and secrets[job.id] is None:
                await self._finish(aj, JobState.FAILED, "its secret_env could not be read after a restart "
                                                        "(the store's key file is missing or another one)")
        if self._active:
            log.info("resuming %d live jobs", len(self._active))

    def known_nodes(self) -> list[NodeInfo]:
        return self.nodes.known(self.clock())

    def on_node_info(self, origin: str, info: NodeInfo) -> None:
        if origin != info.peer_id:
            return
        if self.nodes.update(info, self.clock()):  # new, or restarted
            self._wake_waiting_for(info)

    def _wake_waiting_for(self, info: NodeInfo) -> None:
        """A node joined, or came back with an empty backlog: re-announce the waiting jobs it has
        room for at the next sweep, oldest first, rather than at their next backoff step (up to
        ANNOUNCE_BACKOFF_MAX away; a concurrency-3 job on 3 nodes waits for a restarted one)."""
        free, now = info.free, self.clock()
        waiting = sorted((aj for aj in self._active.values() if not aj.job.state.is_terminal and aj.needed() > 0),
                         key=lambda aj: aj.waiting_since)
        for aj in waiting:
            spec = aj.job.spec
            if can_ever_run(spec, info) and spec.resources.fits_in(free):
                free = free - spec.resources
                aj.next_announce = min(aj.next_announce, now)

    def _event(self, job_id: str, kind: EventKind, message: str = "", ex: Execution | None = None) -> Event:
        return Event(job_id=job_id, at=self.clock(), kind=kind, execution_id=ex.id if ex else None,
                     node_id=ex.node_id if ex else self.peers.node_id, message=message)

    # -- submit, cancel, wait, describe ------------------------------------------------------------

    async def submit(self, spec: JobSpec, owner: str, idempotency_key: str | None = None, *,
                     use_cache: bool = True) -> tuple[Job, bool]:
        """Create and announce a job. Returns (job, created); an idempotent repeat returns the first job.

        A deterministic job whose result is cached completes at once, running nothing.
        """
        digest = spec.digest()
        if idempotency_key is not None:
            found = await self.store.find_idempotent(owner, idempotency_key)
            if found is not None:
                job, known_digest = found
                if known_digest != digest:
                    raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was used for another job spec")
                return job, False
        now = self.clock()
        secrets, spec = dict(spec.secret_env), spec.without_secrets()  # secrets go in their own table
        job = Job(id=f"j-{uuid.uuid4().hex}", owner=owner, spec=spec, requester=self.peers.node_id,
                  created_at=now, updated_at=now)
        events = [self._event(job.id, EventKind.CREATED)]
        nodes = self.known_nodes()
        impossible = never_runnable(spec, nodes)
        key = spec.cache_key() if spec.cache and use_cache and not secrets else None
        cached = await self.store.cached_result(key, owner) if key else None
        if cached is not None:
            source, result, verified = cached
            source_job = await self.store.get_job(source)
            mine = source_job is not None and source_job.owner == owner  # never reveal another client's job
            if not verified:  # one node's word: served to the client whose job it ran, and said so
                reason = (f"cached: the result of your identical job {source}, run by one node and not verified "
                          "(--no-cache runs it again)")
            elif mine:
                reason = f"cached: the verified result of job {source}"
            else:
                reason = "cached: the verified result of an identical earlier job"
            job = job.model_copy(update={"state": JobState.COMPLETED, "reason": reason, "result": result,
                                         "cached_from": source if mine else "another client's job"})
            events.append(self._event(job.id, EventKind.COMPLETED, reason))
        elif impossible:
            job = job.model_copy(update={"state": JobState.FAILED, "reason": impossible})
            events.append(self._event(job.id, EventKind.FAILED, impossible))
        else:
            job = job.model_copy(update={"reason": waiting_reason(spec, nodes, 0)})
            events.append(self._event(job.id, EventKind.ANNOUNCED))  # written with the job, announced right after
        try:
            await self.store.save(new_job=job, events=events, idempotency_key=idempotency_key, request_digest=digest,
                                  secrets=secrets)
        except DuplicateKey:  # a concurrent submit with the same key won the unique index
            if idempotency_key is not None:
                return await self.submit(spec.model_copy(update={"secret_env": secrets}), owner, idempotency_key)
            raise
        if not job.state.is_terminal:
            aj = _Active(job=job, waiting_since=now, secrets=secrets)
            self._track(aj)
            await self._announce(aj)
        return job, True

    async def _announce(self, aj: _Active) -> None:
        job = aj.job
        first = aj.announce_backoff == 1.0  # the first announcement of this attempt
        aj.next_announce = self.clock() + aj.announce_backoff
        aj.announce_backoff = min(aj.announce_backoff * 2, ANNOUNCE_BACKOFF_MAX)
        self.counters["announcements"] += 1
        here = first and self._may_run_here(aj)
        if here and await self._offer_here(self._announcement(aj, [self.peers.node_id])):
            return
        needed = max(aj.needed(), job.spec.deal.min_bids)
        ask = candidates(job.spec, self.known_nodes(), needed, self._rng, spare=CANDIDATE_SPARE) if first else []
        if here:
            ask = [node for node in ask if node != self.peers.node_id]  # it just said no
        ann = self._announcement(aj, ask)
        if ask:  # a few direct messages instead of gossip through the whole mesh (N nodes x its degree)
            for node in ask:
                self._spawn(self._offer, node, ann)
        else:
            await self.peers.publish(ann)

    def _announcement(self, aj: _Active, ask: list[str]) -> Announce:
        spec = aj.job.spec
        return Announce(job_id=aj.job.id, spec=spec, requester=self.peers.node_id,
                        requester_addrs=self.peers.addrs(), attempt=aj.job.attempt, candidates=ask,
                        bid_deadline=aj.waiting_since + spec.deadlines.bid_limit)

    def _may_run_here(self, aj: _Active) -> bool:
        """Whether to offer a job to this node's own compute role before anyone else.

        Only a job that needs one more node and no choice among bids. Then nothing is gossiped,
        bid or rejected by other nodes, and nothing crosses the network (measured in the 3-node
        throughput benchmark: the nodes' CPU per job fell from 24 to 9 ms). A node with no compute
        role publishes no node info, and one whose limits can never fit the job is not asked.
        """
        spec = aj.job.spec
        own = self.nodes.get(self.peers.node_id)
        return aj.needed() == 1 and spec.deal.min_bids <= 1 and own is not None and can_ever_run(spec, own)

    async def _offer_here(self, ann: Announce) -> bool:
        """Offer the job to this node's compute role; True if it is bidding (a Bid follows)."""
        try:
            reply = await self.peers.request(self.peers.node_id, ann, timeout=REQUEST_TIMEOUT)
        except Unreachable:
            return False
        if reply.verdict == "pending":
            self.counters["offered_here"] += 1
            return True
        return False

    async def _offer(self, node: str, ann: Announce) -> None:
        """Announce straight to one named node. Best effort, like gossip: if the nodes asked do not
        take the job, the next announcement goes to everyone."""
        info = self.nodes.get(node)
        try:
            await self.peers.request(node, ann, timeout=REQUEST_TIMEOUT, addrs=info.addrs if info else ())
        except Unreachable as e:
            log.debug("offering %s to %s: %s", ann.job_id, node, e)

    async def cancel(self, job_id: str, reason: str = "cancelled by its owner") -> Job:
        aj = self._active.get(job_id)
        if aj is None:
            job = await self.store.get_job(job_id)
            if job is None:
                raise UnknownJob(job_id)
            return job  # already terminal: cancelling is a no-op
        async with aj.lock:
            if aj.job.state.is_terminal:
                return aj.job
            await self._finish(aj, JobState.CANCELLED, reason)
            return aj.job

    async def wait(self, job_id: str, timeout: float) -> None:
        aj = self._active.get(job_id)
        if aj is not None:
            with trio.move_on_after(timeout):
                await aj.done.wait()

    def _track(self, aj: _Active) -> None:
        self._active[aj.job.id] = aj
        self._in_flight[aj.job.owner] = self._in_flight.get(aj.job.owner, 0) + 1

    def in_flight(self, owner: str) -> int:
        """How many of ``owner``'s jobs are live (neither completed, failed nor cancelled)."""
        return self._in_flight.get(owner, 0)

    def live_job(self, job_id: str) -> Job | None:
        aj = self._active.get(job_id)
        return aj.job if aj else None

    async def describe(self, job_id: str) -> JobDescription:
        aj = self._active.get(job_id)
        job = aj.job if aj else await self.store.get_job(job_id)
        if job is None:
            raise UnknownJob(job_id)
        executions = list(aj.executions.values()) if aj else await self.store.executions_of(SIDE, job_id)
        executions = [x.model_copy(update={"spec": None}) for x in executions]
        return JobDescription(job=job, executions=executions, phases=await self._phases(job, executions))

    async def _phases(self, job: Job, executions: list[Execution]) -> Phases:
        first: dict[EventKind, float] = {}
        for e in await self.store.events(job.id, limit=10_000):
            first.setdefault(e.kind, e.at)
        started = [x.result.started_at for x in executions if x.result and x.result.started_at]
        finished = next((first[k] for k in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)
                         if k in first), None)
        return Phases(submitted=first.get(EventKind.CREATED), announced=first.get(EventKind.ANNOUNCED),
                      first_bid=first.get(EventKind.BID), accepted=first.get(EventKind.BID_ACCEPTED),
                      started=min(started) if started else None, proposed=first.get(EventKind.RESULTS_PROPOSED),
                      finished=finished)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for aj in self._active.values():
            out[aj.job.state.value] = out.get(aj.job.state.value, 0) + 1
        return out

    # -- messages from compute nodes -------------------------------------------------------------

    async def handle(self, peer: str, message: Bid | Result | OpenQuery) -> Reply:
        self._last_heard[peer] = self.clock()
        if isinstance(message, OpenQuery):
            return Reply(states={job_id: "open" if (aj := self._active.get(job_id)) is not None
                                 and not aj.job.state.is_terminal and aj.needed() > 0 else "closed"
                                 for job_id in message.job_ids})
        aj = self._active.get(message.job_id)
        if aj is None:
            return Reply(ok=True, verdict="rejected", reason="the job is finished or unknown here")
        async with aj.lock:
            if isinstance(message, Bid):
                return await self._on_bid(aj, peer, message)
            return await self._on_result(aj, peer, message)

    async def _on_bid(self, aj: _Active, peer: str, bid: Bid) -> Reply:
        self.counters["bids"] += 1
        known = aj.executions.get(bid.execution_id)
        if known is not None:  # a retried bid: answer what we decided
            if known.node_id != peer:
                return Reply(ok=False, verdict="rejected", reason="not your execution")
            if known.state is ExecutionState.ACCEPTED:
                return Reply(verdict="accepted", secret_env=aj.secrets)
            return Reply(verdict="pending" if known.state is ExecutionState.BIDDING else "rejected")
        job = aj.job
        now = self.clock()
        # A refused bid leaves a counter, never a row: bids with fresh execution ids cannot grow the store.
        refusal = "the job no longer needs this bid" if job.state.is_terminal or bid.attempt != job.attempt else None
        if refusal is None and self.quarantined(peer):
            accepted, rejected = self.reputation[peer]
            refusal = f"quarantined: {rejected} results rejected, {accepted} accepted"
        if refusal is None:  # a restarted node may not remember it ran the job
            refusal = bid_refusal(aj.executions.values(), peer, bid.attempt)
        if refusal is None and aj.needed() <= 0:
            refusal = "enough nodes already"
        if refusal is not None:
            self.counters["bids_rejected"] += 1
            return Reply(verdict="rejected", reason=refusal)
        ex = Execution(id=bid.execution_id, job_id=job.id, node_id=peer, requester=self.peers.node_id,
                       attempt=bid.attempt, created_at=now, updated_at=now, reason="bid received")
        events = [self._event(job.id, EventKind.BID, ex=ex)]
        aj.first_bid_at = aj.first_bid_at or now
        deal = job.spec.deal
        if deal.min_bids and len(aj.bidding()) + 1 < deal.min_bids:
            await self.store.save(new_executions=[ex], events=events)
            aj.executions[ex.id] = ex
            return Reply(verdict="pending", reason=f"waiting for {deal.min_bids} bids")
        if deal.min_bids:  # this bid completes the set: choose among all of them
            await self.store.save(new_executions=[ex], events=events)
            aj.executions[ex.id] = ex
            verdicts = await self._decide(aj)
            self._notify_decisions(aj, verdicts, skip=ex.id)
            verdict = verdicts.get(ex.id, "rejected")
            return Reply(verdict=verdict, secret_env=aj.secrets if verdict == "accepted" else {})
        ex = ex.model_copy(update={"state": ExecutionState.ACCEPTED, "reason": "running"})
        events.append(self._event(job.id, EventKind.BID_ACCEPTED, ex=ex))
        job_update = self._job_after_accept(aj, 1)
        await self.store.save(new_executions=[ex], job=job_update, events=events)
        aj.executions[ex.id] = ex
        if job_update is not None:
            aj.job = job_update
        self.counters["bids_accepted"] += 1
        return Reply(verdict="accepted", secret_env=aj.secrets)

    def _job_after_accept(self, aj: _Active, newly: int) -> Job | None:
        job = aj.job
        held = aj.held() + newly
        need = job.spec.deal.concurrency
        reason = "running" if held >= need else waiting_reason(job.spec, self.known_nodes(), held)
        if job.state is JobState.RUNNING and job.reason == reason:
            return None
        return job.transition(JobState.RUNNING, reason, self.clock())

    async def _decide(self, aj: _Active) -> dict[str, str]:
        """Choose among the pending bids (min_bids reached or its wait ran out); tell the nodes."""
        pending = aj.bidding()
        chosen, _ = choose([x.id for x in pending], max(aj.needed(), 0), self._rng)
        now = self.clock()
        updated, events, verdicts = [], [], {}
        for x in pending:
            if x.id in chosen:
                y = x.transition(ExecutionState.ACCEPTED, "running", now)
                events.append(self._event(x.job_id, EventKind.BID_ACCEPTED, ex=y))
                verdicts[x.id] = "accepted"
            else:
                y = x.transition(ExecutionState.REJECTED, "another node was chosen", now)
                events.append(self._event(x.job_id, EventKind.BID_REJECTED, y.reason, y))
                verdicts[x.id] = "rejected"
            updated.append(y)
        job_update = self._job_after_accept(aj, len(chosen)) if chosen else None
        await self.store.save(executions=updated, job=job_update, events=events)
        for y in updated:
            aj.executions[y.id] = y
        if job_update is not None:
            aj.job = job_update
        return verdicts

    def _notify_decisions(self, aj: _Active, verdicts: dict[str, str], skip: str | None = None) -> None:
        for eid, verdict in verdicts.items():
            if eid == skip:
                continue
            ex = aj.executions[eid]
            accepted = verdict == "accepted"
            run = accepted and ex.state is ExecutionState.ACCEPTED  # a bid accepted, not results: secrets go with it
            msg = Decision(job_id=ex.job_id, execution_id=eid, accepted=accepted, reason=ex.reason,
                           secret_env=aj.secrets if run else {})
            self._spawn(self._send_reliably, ex.node_id, msg)

    async def _on_result(self, aj: _Active, peer: str, msg: Result) -> Reply:
        self.counters["results"] += 1
        ex = aj.executions.get(msg.execution_id)
        if ex is None or ex.node_id != peer:
            return Reply(ok=False, verdict="rejected", reason="not an execution of yours")
        forged = None if self._signed_by(peer, msg) else "the result's signature does not match the node key"
        if forged is None and msg.digest != msg.outcome():
            forged = "the result's fields do not match its signed digest"
        if forged is not None:
            return await self._refuse_result(aj, ex, forged)
        if ex.state.is_terminal:  # a re-delivered result: same verdict as before
            return Reply(verdict="accepted" if ex.state in (ExecutionState.COMPLETED, ExecutionState.FAILED)
                         else "rejected", reason=ex.reason)
        if ex.state is ExecutionState.PROPOSED:
            return Reply(verdict="pending", reason=ex.reason)  # re-delivered; the verdict will follow
        if ex.state is not ExecutionState.ACCEPTED:
            # BIDDING: the node lost its bid (restart); forget it
            y = ex.transition(ExecutionState.FAILED, msg.error or "unexpected result", self.clock())
            await self.store.save(executions=[y], events=[self._event(y.job_id, EventKind.ERROR, y.reason, y)])
            aj.executions[y.id] = y
            return Reply(verdict="accepted")
        now = self.clock()
        if msg.error is not None:
            y = ex.transition(ExecutionState.FAILED, msg.error, now, error=msg.error, retryable=msg.retryable)
            aj.executions[y.id] = y
            await self._execution_failed(aj, y, msg.retryable, [self._event(y.job_id, EventKind.ERROR, msg.error, y)])
            return Reply(verdict="accepted")
        result = msg.result or RunResult()
        if aj.job.spec.deal.confidence > 0:
            return await self._on_proposal(aj, ex, result)
        y = ex.transition(ExecutionState.COMPLETED, "results accepted", now, result=result)
        events = [self._event(y.job_id, EventKind.RESULTS_PROPOSED, ex=y),
                  self._event(y.job_id, EventKind.RESULTS_ACCEPTED, ex=y)]
        aj.executions[y.id] = y
        done = sum(1 for x in aj.executions.values() if x.state is ExecutionState.COMPLETED)
        if result.exit_code != 0:
            await self._finish(aj, JobState.FAILED, f"exit code {result.exit_code} on node {peer[-8:]}", [y], events,
                               result=result)
        elif done >= aj.job.spec.deal.concurrency:
            await self._finish(aj, JobState.COMPLETED, "completed", [y], events, result=result)
        else:
            await self.store.save(executions=[y], events=events)
        return Reply(verdict="accepted")

    async def _refuse_result(self, aj: _Active, ex: Execution, why: str) -> Reply:
        """A result its node did not vouch for: refused whole, nothing of it recorded, counted against
        the node. Only the execution's own node can send it (the stream is authenticated), so its run
        is over: the node is told to stop and the slot is re-offered at once (quarantine ends a node
        that keeps doing it)."""
        self.counters["results_refused"] += 1
        self.penalize(ex.node_id, f"{why} (execution {ex.id})")
        if ex.state is ExecutionState.ACCEPTED:
            y = ex.transition(ExecutionState.FAILED, f"result refused: {why}", self.clock(), retryable=True)
            aj.executions[y.id] = y
            self._spawn(self._send_reliably, y.node_id, Cancel(job_id=y.job_id, execution_id=y.id, reason=y.reason))
            await self._execution_failed(aj, y, True, [self._event(y.job_id, EventKind.RESULTS_REJECTED, why, y)])
        return Reply(ok=False, verdict="rejected", reason=why)

    def penalize(self, peer: str, reason: str) -> None:
        """Count a refused message against ``peer`` as a rejected result (quarantine follows)."""
        accepted, rejected = self.reputation.get(peer, (0, 0))
        self.reputation[peer] = (accepted, rejected + 1)
        self.counters["penalties"] += 1
        log.warning("refused from %s: %s", peer, reason)
        if self._nursery is not None:
            self._spawn(self._save_reputation, peer)

    async def _save_reputation(self, peer: str) -> None:
        await self.store.save(reputation={peer: self.reputation[peer]})  # the latest, whatever wrote before

    def _signed_by(self, peer: str, msg: Result) -> bool:
        try:
            signature = base64.urlsafe_b64decode(msg.signature)
        except ValueError:
            return False
        return self.peers.verify(peer, msg.statement(), signature)

    async def _on_proposal(self, aj: _Active, ex: Execution, result: RunResult) -> Reply:
        """A result of a job that asks for verification: hold it until every slot has proposed."""
        y = ex.transition(ExecutionState.PROPOSED, "results proposed, waiting for the other nodes", self.clock(),
                          result=result)
        aj.executions[y.id] = y
        events = [self._event(y.job_id, EventKind.RESULTS_PROPOSED, result.digest(), y)]
        await self.store.save(executions=[y], events=events)
        running = any(x.state is ExecutionState.ACCEPTED for x in aj.executions.values())
        if running or aj.needed() > 0:
            return Reply(verdict="pending")
        verdicts = await self._verify(aj, [])
        self._notify_decisions(aj, verdicts, skip=y.id)
        return Reply(verdict=verdicts[y.id], reason=aj.executions[y.id].reason)

    async def _verify(self, aj: _Active, events: list[Event]) -> dict[str, str]:
        """Compare the proposed results, decide each, finish the job; returns execution id -> verdict."""
        proposed = [x for x in aj.executions.values() if x.state is ExecutionState.PROPOSED]
        verdict = verify({x.id: (x.result or RunResult()).digest() for x in proposed}, aj.job.spec.deal.confidence)
        now = self.clock()
        updates, verdicts = [], {}
        for x in proposed:
            if x.id in verdict.accepted:
                y = x.transition(ExecutionState.COMPLETED, f"results accepted, {verdict.reason}", now)
                events.append(self._event(x.job_id, EventKind.RESULTS_ACCEPTED, ex=y))
                verdicts[x.id] = "accepted"
            else:
                why = "results differ from the verified ones" if verdict.verified else verdict.reason
                y = x.transition(ExecutionState.REJECTED, why, now)
                events.append(self._event(x.job_id, EventKind.RESULTS_REJECTED, why, y))
                verdicts[x.id] = "rejected"
            updates.append(y)
        if not verdict.verified:
            await self._finish(aj, JobState.FAILED, verdict.reason, updates, events)
            return verdicts
        reputation = {}
        for y in updates:
            accepted, rejected = self.reputation.get(y.node_id, (0, 0))
            ok = y.state is ExecutionState.COMPLETED
            reputation[y.node_id] = (accepted + ok, rejected + (not ok))
        self.reputation.update(reputation)
        result = next(x.result for x in proposed if x.id in verdict.accepted) or RunResult()
        if result.exit_code != 0:
            await self._finish(aj, JobState.FAILED, f"exit code {result.exit_code} ({verdict.reason})", updates,
                               events, result=result, reputation=reputation)
        else:
            await self._finish(aj, JobState.COMPLETED, f"completed, {verdict.reason}", updates, events,
                               result=result, reputation=reputation)
        return verdicts

    def quarantined(self, peer: str) -> bool:
        accepted, rejected = self.reputation.get(peer, (0, 0))
        return rejected >= self.quarantine_after and rejected > accepted // 10

    async def _execution_failed(self, aj: _Active, failed: Execution, retryable: bool, events: list[Event]) -> None:
        """Record a failed execution; re-offer its slot, or fail the job when that is pointless.

        A node's error fails the job only once it is confirmed (``trust.error_confirmed``): another
        node able to run the job gets the work first, while the re-offer budget lasts.
        """
        job = aj.job
        able = {info.peer_id for info in self.known_nodes() if can_ever_run(job.spec, info)}
        if not retryable:
            reporters = error_reporters(aj.executions.values()) | {failed.node_id}
            if error_confirmed(reporters, able, job.spec.deal.confidence):
                also = f" (reported by {len(reporters)} nodes)" if len(reporters) > 1 else ""
                await self._finish(aj, JobState.FAILED, f"node {failed.node_id[-8:]}: {failed.reason}{also}",
                                   [failed], events)
                return
        if able and not nodes_left(aj.executions.values(), able):
            await self._finish(aj, JobState.FAILED, f"no known node may take the job any more; last error on node "
                                                    f"{failed.node_id[-8:]}: {failed.reason}", [failed], events)
            return
        if job.attempt >= self.max_reoffers:
            await self._finish(aj, JobState.FAILED,
                               f"gave up after {job.attempt} re-offers; last error on node "
                               f"{failed.node_id[-8:]}: {failed.reason}", [failed], events)
            return
        now = self.clock()
        reason = f"re-offering: node {failed.node_id[-8:]} failed: {failed.reason}"
        state = JobState.RUNNING if aj.held() > 0 else JobState.PENDING
        job = job.transition(state, reason, now, attempt=job.attempt + 1)
        events.append(self._event(job.id, EventKind.REOFFERED, reason))
        await self.store.save(executions=[failed], job=job, events=events)
        aj.job = job
        aj.waiting_since = now
        aj.announce_backoff = 1.0
        aj.next_announce = now  # the sweep announces the new attempt
        self.counters["reoffers"] += 1

    async def _finish(self, aj: _Active, state: JobState, reason: str, executions: list[Execution] | None = None,
                      events: list[Event] | None = None, *, result: RunResult | None = None,
                      reputation: dict[str, tuple[int, int]] | None = None) -> None:
        """Move the job to a terminal state; cancel what still runs; forget it from memory.

        A deterministic job that completed with exit code 0 leaves its result in the cache,
        in the same transaction.
        """
        now = self.clock()
        executions = list(executions or [])
        events = list(events or [])
        touched = {x.id for x in executions}
        to_cancel = []
        for x in aj.executions.values():
            if x.id not in touched and not x.state.is_terminal:
                y = x.transition(ExecutionState.CANCELLED, f"job {state.value}", now)
                executions.append(y)
                to_cancel.append(y)
        kind = {JobState.COMPLETED: EventKind.COMPLETED, JobState.FAILED: EventKind.FAILED,
                JobState.CANCELLED: EventKind.CANCELLED}[state]
        job = aj.job.transition(state, reason, now, result=result)
        events.append(self._event(job.id, kind, reason))
        key = job.spec.cache_key() if not aj.secrets else None  # the stored spec has none: see submit
        cache = None
        if state is JobState.COMPLETED:
            everything = {**aj.executions, **{x.id: x for x in executions}}.values()
            if key and result:
                verified = cache_verified(agreeing_nodes(everything, result), self.peers.node_id)
                cache = (key, job.id, result, verified)
            reputation = {**(reputation or {}), **self._unconfirmed_errors(everything)}
        await self.store.save(job=job, executions=executions, events=events, cache=cache, reputation=reputation)
        aj.secrets = {}  # the store deleted its copy in that transaction
        for x in executions:
            aj.executions[x.id] = x
        aj.job = job
        for y in to_cancel:
            self._spawn(self._send_reliably, y.node_id, Cancel(job_id=y.job_id, execution_id=y.id, reason=y.reason))
        del self._active[job.id]
        left = self._in_flight.get(job.owner, 1) - 1
        if left > 0:
            self._in_flight[job.owner] = left
        else:
            self._in_flight.pop(job.owner, None)
        aj.done.set()
        self.latencies.append(now - job.created_at)
        if len(self.latencies) > 10_000:
            del self.latencies[:5_000]

    def _unconfirmed_errors(self, executions: Iterable[Execution]) -> dict[str, tuple[int, int]]:
        """A job that completed proves its nodes' errors wrong: each counts as a rejected result."""
        wrong = error_reporters(executions)
        for node in wrong:
            accepted, rejected = self.reputation.get(node, (0, 0))
            self.reputation[node] = (accepted, rejected + 1)
        return {node: self.reputation[node] for node in wrong}

    # -- deadlines, re-announcements, liveness ----------------------------------------------------

    def _spawn(self, fn, *args) -> None:
        assert self._nursery is not None, "RequesterService.run() is not running"
        self._nursery.start_soon(fn, *args)

    async def _send_reliably(self, peer: str, message: Decision | Cancel, attempts: int = 5) -> None:
        delay = 0.2
        for _ in range(attempts):
            try:
                await self.peers.request(peer, message, timeout=REQUEST_TIMEOUT)
                return
            except Unreachable:
                await trio.sleep(delay)
                delay *= 2
        log.info("gave up sending %s to %s", message.kind, peer)

    async def _sweep_loop(self) -> None:
        while True:
            await trio.sleep(SWEEP_INTERVAL)
            for aj in list(self._active.values()):
                try:
                    async with aj.lock:
                        if aj.job.state.is_terminal:
                            continue
                        await self._sweep(aj)
                except Exception:
                    log.exception("sweeping job %s", aj.job.id)

    async def _sweep(self, aj: _Active) -> None:
        now = self.clock()
        job = aj.job
        spec = job.spec
        if spec.deal.min_bids and aj.bidding() and aj.first_bid_at and now - aj.first_bid_at > spec.deadlines.min_bids:
            self._notify_decisions(aj, await self._decide(aj))
        for x in list(aj.executions.values()):
            if x.state is ExecutionState.ACCEPTED and now - x.updated_at > spec.timeout + spec.deadlines.result_grace:
                y = x.transition(ExecutionState.FAILED, f"no result within {spec.timeout:g} s plus grace", now)
                aj.executions[y.id] = y
                self._spawn(self._send_reliably, y.node_id, Cancel(job_id=y.job_id, execution_id=y.id,
                                                                   reason=y.reason))
                await self._execution_failed(aj, y, True, [self._event(job.id, EventKind.ERROR, y.reason, y)])
                if job.id not in self._active:
                    return
        if aj.needed() <= 0:
            return
        limit = spec.deadlines.bid_limit
        if now - aj.waiting_since > limit:
            why = waiting_reason(spec, self.known_nodes(), aj.held())
            await self._finish(aj, JobState.FAILED, f"no node took the job within {limit:g} s ({why})")
            return
        impossible = never_runnable(spec, self.known_nodes())
        if impossible:
            await self._finish(aj, JobState.FAILED, impossible)
            return
        if now >= aj.next_announce:
            await self._announce(aj)

    async def _liveness_loop(self) -> None:
        """Ask each node running our executions whether it still is; re-offer what a silent node held.

        One query per node (never per job), at most one in flight per node, each bounded by
        LIVENESS_TIMEOUT; silence is measured from the last time we heard from the node at all.
        """
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            by_node: dict[str, list[Execution]] = {}
            now = self.clock()
            for aj in self._active.values():
                for x in aj.executions.values():
                    if x.state is ExecutionState.ACCEPTED and x.node_id != self.peers.node_id \
                            and now - x.updated_at > LIVENESS_INTERVAL:
                        by_node.setdefault(x.node_id, []).append(x)
            for node, executions in by_node.items():
                if node not in self._checking:
                    self._checking.add(node)
                    self._spawn(self._check_node, node, executions)

    async def _check_node(self, node: str, executions: list[Execution]) -> None:
        try:
            reply = await self.peers.request(node, StatusQuery(execution_ids=[x.id for x in executions]),
                                             timeout=LIVENESS_TIMEOUT)
        except Unreachable:
            now = self.clock()
            heard = self._last_heard.get(node, self._started_at)
            lost = [x for x in executions if now - max(heard, x.updated_at) > self._job_silence(x)]
            if lost:
                silent = now - max(heard, min(x.updated_at for x in lost))
                await self._lose(lost, f"node {node[-8:]} silent for {silent:.0f} s")
            return
        finally:
            self._checking.discard(node)
        self._last_heard[node] = self.clock()
        await self._lose([x for x in executions if reply.states.get(x.id, "unknown") == "unknown"],
                         f"node {node[-8:]} no longer knows the execution")

    def _job_silence(self, x: Execution) -> float:
        aj = self._active.get(x.job_id)
        return aj.job.spec.deadlines.silence if aj else 0.0

    async def _lose(self, executions: list[Execution], reason: str) -> None:
        for x in executions:
            aj = self._active.get(x.job_id)
            if aj is None:
                continue
            async with aj.lock:
                current = aj.executions.get(x.id)
                if current is None or current.state is not ExecutionState.ACCEPTED or x.job_id not in self._active:
                    continue
                y = current.transition(ExecutionState.FAILED, reason, self.clock(), retryable=True)
                aj.executions[y.id] = y
                await self._execution_failed(aj, y, True, [self._event(y.job_id, EventKind.ERROR, reason, y)])
