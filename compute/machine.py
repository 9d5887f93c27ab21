"""The compute node's decisions, with no I/O: what to bid on or claim, how each execution moves, what to send.

``ComputeMachine`` holds the node's live executions, sweep claims, capacity and backlog. Each method takes
a message or an outcome and the time, changes that state at once, and returns the ``Changes`` the
service must carry out. No trio, no store and no network here: unit tests drive it with plain values.
"""

from __future__ import annotations

import itertools
import logging
import math
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from compute.backlog import Backlog, spec_bytes
from compute.capacity import CapacityTracker
from compute.claims import Claim
from jobs import EventKind, Execution, ExecutionState, JobSpec, Resources, RunResult
from jobs.messages import (
    BACKLOG_STALE,
    Announce,
    Cancel,
    Decision,
    OpenQuery,
    Reply,
    Result,
    StatusQuery,
    SweepAnnounce,
    query_parts,
)

log = logging.getLogger("shoal.compute")

RECENT_JOBS = 20_000  # (requester, job id) -> last attempt bid on; bounds memory while deduplicating
PENDING_BID_TIMEOUT = 120.0  # longest a bid answered "pending" holds capacity (``--pending-bid-timeout``)
PENDING_BID_GRACE = 10.0  # past the job's min_bids wait, for the requester's decision to arrive
# Longest a bid is re-sent to a silent requester (less if the job's bid deadline is sooner), holding its room: short,
# or a peer that re-announces jobs it never answers keeps nodes full (a requester that restarts announces again)
BID_ANSWER_WINDOW = 10.0
SILENT_COOLDOWN = 60.0  # after a bid went unanswered, its requester's jobs wait in the backlog this long
KNOWN_REQUESTERS = 10_000  # requesters remembered as silent, or as ones whose bids we won (their jobs first)
NONE_FIT_RECHECK = 5.0  # a backlog in which nothing fitted is looked over again this soon, whatever else
PRUNE_INTERVAL = 0.5  # at most this often, ask a requester which backlog jobs are still open
MAX_SLOTS = 64  # runs at once in one sweep claim
WAITING_TTL = 60.0  # a sweep we had no room for is retried this long after its last announcement
MAX_WAITING_SWEEPS = 1000  # sweeps we had no room for, held at once (and compute.backlog.MAX_BYTES of them)
ENDED_KEPT = 1000  # recently ended claims remembered, to answer a late Cancel
ENGINE_GRACE = 60.0  # an engine that stops answering (dockerd restarting) is still offered this long


def _remember(known: OrderedDict[Any, Any], key: Any, value: Any, limit: int = KNOWN_REQUESTERS) -> None:
    """Keep ``key`` as the newest of ``known``, which forgets its oldest beyond ``limit``."""
    known[key] = value
    known.move_to_end(key)
    while len(known) > limit:
        known.popitem(last=False)


# the event a move to a terminal state writes (a rejection of proposed results has its own)
_END_EVENTS = {ExecutionState.REJECTED: EventKind.BID_REJECTED, ExecutionState.CANCELLED: EventKind.CANCELLED,
               ExecutionState.COMPLETED: EventKind.RESULTS_ACCEPTED}


@dataclass(frozen=True)
class Write:
    """Store ``execution`` (``new``: insert; else a revisioned update) with one event."""

    execution: Execution
    kind: EventKind
    message: str = ""
    new: bool = False


@dataclass
class Changes:
    """What the service carries out after a decision, in this order."""

    stop: list[str] = field(default_factory=list)  # cancel these executions' runs now
    writes: list[Write] = field(default_factory=list)  # then store these, one save each
    bids: list[tuple[Execution, float]] = field(default_factory=list)  # new: store, send until a verdict or then
    runs: list[str] = field(default_factory=list)  # accepted: start running
    deliveries: list[str] = field(default_factory=list)  # proposed: send the result until a verdict
    expire: list[tuple[str, float]] = field(default_factory=list)  # pending bids: ask expire_pending after (s)
    released: bool = False  # capacity came free: the backlog may bid again


_HOLDING_ROOM = (ExecutionState.BIDDING, ExecutionState.ACCEPTED)  # a finished run gave its room back


class ComputeMachine:
    """The compute role's state and rules: bidding, the execution lifecycle, the backlog, sweep claims.

    ``engines`` (installed here, kept current by the service), the node's ``labels`` (which job selectors
    match), the per-job limits and ``input_problems`` (why the job's inputs could not be staged here) make
    the ``refusal``; a bid reserves capacity on behalf of its execution id, a claim one copy of the
    template's resources per slot. Runs of an engine with a ``parallel`` (runs worth starting at once; None:
    as many as fit) are held to it, executions and slots together: the python and wasm engines take a whole
    core whatever CPU a job states, so more at once only slow them all and the node.
    """

    def __init__(self, *, node_id: str, capacity: CapacityTracker, engines: Sequence[str],
                 input_problems: Callable[[JobSpec], list[str]] = lambda spec: [],
                 parallel: Callable[[str], int | None] = lambda engine: None, backlog_size: int = 10_000,
                 pending_bid_timeout: float = PENDING_BID_TIMEOUT, labels: Mapping[str, str] | None = None,
                 network: bool = False) -> None:
        self.node_id = node_id
        self.capacity = capacity
        self.engines = list(engines)
        self._silent_engines: dict[str, float] = {}  # offered engines that stopped answering -> since when
        self.labels = dict(labels or {})
        self.network = network  # jobs that ask for network get it (shoal serve --allow-network)
        self.input_problems = input_problems
        self.parallel = parallel
        self.backlog_size = backlog_size
        self.pending_bid_timeout = pending_bid_timeout
        self.live: dict[str, Execution] = {}  # execution id -> live execution
        self.secrets: dict[str, dict[str, str]] = {}  # execution id -> the job's secret_env: memory only
        # jobs with no room when announced, in arrival order, by (requester, job id): no requester shadows another's
        self.backlog: Backlog[tuple[Announce, float]] = Backlog(backlog_size)
        self._by_job: dict[tuple[str, str], str] = {}  # (requester, job id) -> live execution id
        self._recent: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._pruned: dict[str, float] = {}  # requester -> when we last asked it which jobs are open
        self.claims: dict[tuple[str, str], Claim] = {}  # (requester, sweep id) -> our claim on it
        self._waiting: Backlog[tuple[SweepAnnounce, float]] = Backlog(MAX_WAITING_SWEEPS)  # sweeps we had no room for
        # (requester, claim id) -> indexes stopped, for recent claims the requester ended
        self._ended: OrderedDict[tuple[str, str], int] = OrderedDict()
        # Requesters that left a bid unanswered (until when we bid on none of theirs), and those that accepted
        # one (first in each turn of the backlog): fresh identities that never answer cost a bid window once,
        # and those who gave us work before are not queued behind a crowd of strangers.
        self._silent: OrderedDict[str, float] = OrderedDict()
        self._served: OrderedDict[str, None] = OrderedDict()
        self._granted: OrderedDict[str, float] = OrderedDict()  # requester -> when we last bid on one of its jobs
        self._none_fit: tuple[Resources, int, float] | None = None  # see ``backlog_fitting``

    def engines_answering(self, installed: Sequence[str], now: float) -> bool:
        """The engines that answer now; True when one came back. One that stopped answering is still offered
        for ENGINE_GRACE (else requesters fail its jobs at once, e.g. over a 2 s dockerd restart), but nothing
        of it is bid on or claimed meanwhile: its jobs wait in the backlog."""
        back = any(engine in installed for engine in self._silent_engines)
        silent = {engine: self._silent_engines.get(engine, now) for engine in self.engines if engine not in installed}
        self._silent_engines = {engine: since for engine, since in silent.items() if now - since < ENGINE_GRACE}
        self.engines = sorted({*installed, *self._silent_engines})
        return back

    def _track(self, ex: Execution) -> Execution:
        """Keep a live execution (terminal ones leave through ``drop``)."""
        self.live[ex.id] = ex
        self._by_job[(ex.requester, ex.job_id)] = ex.id
        return ex

    def drop(self, ex: Execution) -> bool:
        """Forget ``ex`` and give back its capacity; True when capacity came free."""
        self.secrets.pop(ex.id, None)
        self.live.pop(ex.id, None)
        if self._by_job.get(key := (ex.requester, ex.job_id)) == ex.id:
            del self._by_job[key]
        return self.capacity.release(ex.id)

    def _live_in(self, execution_id: str, state: ExecutionState) -> Execution | None:
        """The live execution if it is still in ``state`` (None: it moved on, or ended, meanwhile)."""
        ex = self.live.get(execution_id)
        return ex if ex is not None and ex.state is state else None

    def _move(self, ex: Execution, state: ExecutionState, reason: str, now: float, kind: EventKind,
              message: str = "", **changes: object) -> Write:
        """A move to a live state (``end`` makes the terminal ones)."""
        return Write(self._track(ex.transition(state, reason, now, **changes)), kind, message)

    def restore(self, executions: Iterable[Execution], now: float) -> Changes:
        """Executions a previous process left unfinished: each is reported (as lost) or re-delivered."""
        out = Changes()
        for ex in executions:
            self._track(ex)
            if ex.state is not ExecutionState.PROPOSED:
                why = "node restarted before the bid was decided" if ex.state is ExecutionState.BIDDING else (
                    "node restarted while running the job")
                out.writes.append(self._move(ex, ExecutionState.PROPOSED, why, now, EventKind.ERROR, why,
                                             error=why, retryable=True))
            out.deliveries.append(ex.id)
        return out

    # -- announcements and bidding ------------------------------------------------------------------

    @property
    def max_per_job(self) -> Resources:
        return self.capacity.max_per_job

    def refusal(self, spec: JobSpec) -> str | None:
        """Why this node could never run ``spec`` (None: it could); such a job is passed over for good."""
        if why := spec.refusal_by(self):
            return why
        problems = self.input_problems(spec)
        return f"cannot fetch its inputs: {'; '.join(problems)}" if problems else None

    def announce(self, origin: str, ann: Announce, now: float) -> tuple[bool, Changes]:
        """A job needs nodes. True when a bid is on its way; a job with no room now goes to the backlog."""
        if origin != ann.requester:
            log.warning("dropping announcement of %s relayed as if from %s", ann.job_id, origin)
            return False, Changes()
        late = ann.bid_deadline is not None and now > ann.bid_deadline
        seen = ann.key in self._by_job or self._recent.get(ann.key, -1) >= ann.attempt
        others_first = ann.candidates and self.node_id not in ann.candidates  # if they decline, all are asked
        if late or seen or others_first:
            return False, Changes()
        if (refusal := self.refusal(ann.spec)) is not None:
            log.debug("passing over %s: %s", ann.job_id, refusal)
            return False, Changes()
        if (bid := self._try_bid(ann, now)) is not None:
            return True, Changes(bids=[bid])
        if not self.backlog.offer(ann.key, (ann, now), spec_bytes(ann.spec)):  # a refresh keeps its place
            log.debug("backlog full (%d offers, %d bytes): passing over %s", len(self.backlog), self.backlog.bytes,
                      ann.job_id)
        return False, Changes()

    def _room_for_runs(self, engine: str) -> int | None:
        """How many more runs of ``engine`` may start now (None: as many as capacity allows)."""
        limit = self.parallel(engine)
        if limit is None:
            return None
        executions = sum(1 for x in self.live.values() if x.state in _HOLDING_ROOM and x.spec is not None
                         and x.spec.engine.executor == engine)
        slots = sum(len(c.slots) for c in self.claims.values() if c.ann.spec.job.engine.executor == engine)
        return max(0, limit - executions - slots)

    def _try_bid(self, ann: Announce, now: float) -> tuple[Execution, float] | None:
        """Reserve room and open an execution; with the time to stop asking for a verdict on the bid."""
        engine = ann.spec.engine.executor
        if (not ann.spec.resources.fits_in(self.capacity.free)  # first, before the id: most calls end here under load
                or self._silent.get(ann.requester, 0.0) > now  # it waits in the backlog (stale if they stay away)
                or engine in self._silent_engines or self._room_for_runs(engine) == 0):
            return None
        execution_id = f"e-{uuid.uuid4().hex}"
        if not self.capacity.try_reserve(execution_id, ann.spec.resources):
            return None
        self.backlog.pop(ann.key, None)
        _remember(self._recent, ann.key, ann.attempt, RECENT_JOBS)
        _remember(self._granted, ann.requester, now)
        ex = Execution(id=execution_id, job_id=ann.job_id, node_id=self.node_id, requester=ann.requester,
                       attempt=ann.attempt, created_at=now, updated_at=now, spec=ann.spec,
                       requester_addrs=ann.requester_addrs, reason="bid sent, waiting for the requester's decision")
        self._track(ex)  # a second announcement of this job sees it
        return ex, min(ann.bid_deadline or float("inf"), now + BID_ANSWER_WINDOW)

    def bid_answered(self, execution_id: str, reply: Reply | None, now: float) -> Changes:
        """The requester's verdict on our bid (None: it never gave one before the bid's deadline). On
        "pending" a Decision follows, or the bid expires after the job's wait for ``min_bids`` plus a
        grace, never later than the node's ``pending_bid_timeout`` (a requester picks the former).
        A verdict on a bid decided already (a Decision and the bid's reply both came) changes nothing."""
        if (ex := self._live_in(execution_id, ExecutionState.BIDDING)) is None:
            return Changes()
        if reply is None:
            self.requester_silent(ex.requester, now)
            return self.end(execution_id, ExecutionState.FAILED, "the bid got no answer from the requester", now)
        if reply.verdict != "pending":  # a "pending" promises a Decision: only one ends the requester's silence
            self._silent.pop(ex.requester, None)
        if reply.verdict == "accepted":
            return self.accept(execution_id, reply.secret_env, now)
        if reply.verdict == "rejected":
            return self.end(execution_id, ExecutionState.REJECTED, reply.reason or "bid rejected", now)
        min_bids_wait = ex.spec.deadlines.min_bids if ex.spec is not None else 0.0
        return Changes(expire=[(execution_id, min(min_bids_wait + PENDING_BID_GRACE, self.pending_bid_timeout))])

    def requester_silent(self, requester: str, now: float) -> None:
        """``requester`` left a bid or a new claim unanswered: none of its jobs or sweeps is bid on or
        claimed for SILENT_COOLDOWN, and its jobs no longer come first (one cheap job accepted put them so)."""
        _remember(self._silent, requester, now + SILENT_COOLDOWN)
        self._served.pop(requester, None)

    def expire_pending(self, execution_id: str, waited: float, now: float) -> Changes:
        """A pending bid's wait is over: if still undecided, it ends and its capacity comes back. When the wait
        was the one the job promised (its ``min_bids`` wait and a grace), its requester is as silent as one that
        never answered, or answering "pending" and never deciding would hold our room a bid at a time; a wait
        cut shorter by this node's ``pending_bid_timeout`` is not held against it."""
        if (ex := self._live_in(execution_id, ExecutionState.BIDDING)) is None:
            return Changes()
        if waited >= (ex.spec.deadlines.min_bids if ex.spec is not None else 0.0) + PENDING_BID_GRACE:
            self.requester_silent(ex.requester, now)
        return self.end(execution_id, ExecutionState.REJECTED, f"no decision on the bid within {waited:g} s", now)

    def end(self, execution_id: str, state: ExecutionState, reason: str, now: float) -> Changes:
        """Move a live execution to a terminal state and release what it holds."""
        ex = self.live.get(execution_id)
        if ex is None or ex.state.is_terminal:
            return Changes()
        kind = _END_EVENTS.get(state, EventKind.ERROR)
        if ex.state is ExecutionState.PROPOSED and state is ExecutionState.REJECTED:
            kind = EventKind.RESULTS_REJECTED
        unrun = ex.state is ExecutionState.BIDDING
        ex = ex.transition(state, reason, now)
        if unrun:  # a bid that ended is kept without its spec: any requester may make a node bid on a megabyte one
            ex = ex.model_copy(update={"spec": None})
        return Changes(writes=[Write(ex, kind, reason)], released=self.drop(ex))

    # -- running ------------------------------------------------------------------------------------

    def accept(self, execution_id: str, secret_env: Mapping[str, str], now: float) -> Changes:
        """Our bid won: run it (``secret_env`` is kept in memory for the run only)."""
        if (ex := self._live_in(execution_id, ExecutionState.BIDDING)) is None:
            return Changes()
        if secret_env:
            self.secrets[ex.id] = dict(secret_env)
        _remember(self._served, ex.requester, None)
        return Changes(writes=[self._move(ex, ExecutionState.ACCEPTED, "running", now, EventKind.BID_ACCEPTED)],
                       runs=[ex.id])

    def to_run(self, execution_id: str) -> tuple[Execution, dict[str, str]] | None:
        """The execution to start and its secret env, which the run takes with it (None: it ended meanwhile)."""
        if (ex := self._live_in(execution_id, ExecutionState.ACCEPTED)) is None:
            return None
        return ex, self.secrets.pop(ex.id, {})

    def run_over(self, execution_id: str, result: RunResult | None, error: str | None, retryable: bool,
                 now: float) -> Changes:
        """The run finished (not cancelled): free its capacity, propose its outcome, deliver it."""
        released = self.capacity.release(execution_id)
        if (ex := self._live_in(execution_id, ExecutionState.ACCEPTED)) is None:
            return Changes(released=released)
        message = error or f"exit code {result.exit_code if result else '?'}"
        write = self._move(ex, ExecutionState.PROPOSED, message, now,
                           EventKind.RESULTS_PROPOSED if error is None else EventKind.ERROR, message,
                           result=result, error=error, retryable=retryable)
        return Changes(writes=[write], deliveries=[execution_id], released=released)

    def to_deliver(self, execution_id: str) -> tuple[Execution, Result] | None:
        """The execution and its result message (digest set, not signed), or None if it ended meanwhile."""
        if (ex := self._live_in(execution_id, ExecutionState.PROPOSED)) is None:
            return None
        message = Result(job_id=ex.job_id, execution_id=ex.id, result=ex.result, error=ex.error, retryable=ex.retryable)
        return ex, message.model_copy(update={"digest": message.outcome()})

    def result_answered(self, execution_id: str, reply: Reply | None, now: float) -> Changes:
        """The requester's verdict on our result (None: it could not be delivered). On "pending" the
        requester is verifying; its Decision will follow (and it answers a re-delivery)."""
        if reply is None:
            return self.end(execution_id, ExecutionState.FAILED, "could not deliver the result to the requester", now)
        ex = self._live_in(execution_id, ExecutionState.PROPOSED)
        if ex is None or reply.verdict == "pending":
            return Changes()
        if reply.verdict == "accepted":
            final = ExecutionState.FAILED if ex.error else ExecutionState.COMPLETED
            return self.end(ex.id, final, ex.error or reply.reason or "results accepted", now)
        return self.end(ex.id, ExecutionState.REJECTED, reply.reason or "results rejected", now)

    # -- direct messages from requesters -----------------------------------------------------------

    def handle(self, peer: str, message: Decision | Cancel | StatusQuery, now: float) -> tuple[Reply, Changes]:
        """A requester's status query, or its word on an execution (only the job's requester's counts)."""
        if isinstance(message, StatusQuery):
            states = {}
            for eid in message.execution_ids:
                ex = self.live.get(eid)
                states[eid] = ex.state.value if ex is not None and ex.requester == peer else "unknown"
            return Reply(states=states), Changes()
        ex = self.live.get(message.execution_id)
        if ex is None:
            return Reply(ok=False, reason="unknown or finished execution"), Changes()
        if ex.requester != peer:
            log.warning("peer %s tried to %s execution %s of requester %s", peer, message.kind, ex.id, ex.requester)
            return Reply(ok=False, reason="only the job's requester may do that"), Changes()
        if isinstance(message, Cancel):  # end the execution, and stop its run if there is one
            out = self.end(ex.id, ExecutionState.CANCELLED, message.reason or "cancelled by the requester", now)
            out.stop.append(ex.id)
            return Reply(), out
        verdict = Reply(verdict="accepted" if message.accepted else "rejected", reason=message.reason,
                        secret_env=message.secret_env)
        if ex.state is ExecutionState.PROPOSED:  # the verdict on our results
            return Reply(), self.result_answered(ex.id, verdict, now)
        return Reply(), self.bid_answered(ex.id, verdict, now)

    # -- the backlog ----------------------------------------------------------------------------------

    def backlog_fitting(self, now: float) -> list[Announce]:
        """Backlog entries that fit in what is free now, none of a requester in its silent cooldown, in turns so
        that one busy requester does not starve the others: each requester's oldest, then each one's next, and so
        on. In each turn, requesters whose bids we won come first, then the one we bid for longest ago (by first
        arrival if never), so one that takes our room and gives it back unused does not lead every turn. Expired
        entries leave the backlog. A scan that found nothing is not repeated while it could find nothing either
        (no more room in any dimension, no new entry) for NONE_FIT_RECHECK seconds at most (a cooldown ends,
        entries go stale): rescanning a large backlog that never fits, every tick and job's end, costs throughput."""
        free = self.capacity.free
        if self._none_fit is not None:
            was, added, until = self._none_fit
            if free.fits_in(was) and added == self.backlog.added and now < until:
                return []
        for key, (ann, seen) in list(self.backlog.items()):
            if (ann.bid_deadline is not None and now > ann.bid_deadline) or now - seen > BACKLOG_STALE:
                del self.backlog[key]
        fitting = [ann for ann, _ in self.backlog.values() if ann.spec.resources.fits_in(free)
                   and self._silent.get(ann.requester, 0.0) <= now]  # nor are a silent one's asked about
        self._none_fit = None if fitting else (free, self.backlog.added, now + NONE_FIT_RECHECK)
        queues: dict[str, list[Announce]] = {}
        for ann in fitting:
            queues.setdefault(ann.requester, []).append(ann)
        order = sorted(queues, key=lambda r: (r not in self._served, self._granted.get(r, -math.inf)))
        return [ann for turn in itertools.zip_longest(*(queues[r] for r in order)) for ann in turn if ann is not None]

    def open_queries(self, entries: Iterable[Announce], now: float) -> list[tuple[OpenQuery, list[Announce]]]:
        """Which of these jobs to ask their requesters about (one query each, at most every PRUNE_INTERVAL), so
        that a node with room again does not bid on every job others took while it was full (a round trip and
        two store writes each, and a backlog that grows with the traffic)."""
        by_requester: dict[str, list[Announce]] = {}
        for ann in entries:
            by_requester.setdefault(ann.requester, []).append(ann)
        out = []
        for requester, anns in by_requester.items():
            if now - self._pruned.get(requester, 0.0) < PRUNE_INTERVAL:
                continue
            self._pruned[requester] = now
            ids = [a.job_id for a in anns]
            out.append((OpenQuery(job_ids=ids[next(query_parts(ids))]), anns))  # the rest at the next round
        return out

    def forget_closed(self, anns: Iterable[Announce], reply: Reply) -> None:
        """The requester's answer to an OpenQuery: jobs it has closed leave the backlog."""
        for ann in anns:
            if reply.states.get(ann.job_id) == "closed":
                self.backlog.pop(ann.key, None)

    def bid_from_backlog(self, fitting: Iterable[Announce], now: float) -> Changes:
        """Bid on what still waits in the backlog and fits (what did not fit a moment ago does not fit now)."""
        out = Changes()
        for ann in fitting:
            if ann.key not in self.backlog:
                continue  # closed, or bid on meanwhile
            if ann.key in self._by_job:
                del self.backlog[ann.key]
            elif (bid := self._try_bid(ann, now)) is not None:
                out.bids.append(bid)
        return out

    # -- sweep claims ---------------------------------------------------------------------------------

    def announce_sweep(self, origin: str, ann: SweepAnnounce, now: float) -> Claim | None:
        """A sweep needs nodes: the claim to start, if any (no room now: it waits for some)."""
        if origin != ann.requester:
            log.warning("dropping sweep announcement %s relayed as if from %s", ann.sweep_id, origin)
            return None
        if ann.key in self.claims:
            return None  # our claim asks for more by itself
        if self._silent.get(ann.requester, 0.0) > now:
            return None  # it announces again while it has indexes left
        if (refusal := self.refusal(ann.spec.job)) is not None:
            log.debug("passing over sweep %s: %s", ann.sweep_id, refusal)
            return None
        claim = self._try_claim(ann)
        if claim is None:
            self._waiting.offer(ann.key, (ann, now), spec_bytes(ann.spec))
        return claim

    def retry_waiting(self, now: float) -> list[Claim]:
        """Capacity may have come free: claim sweeps we passed over for lack of room."""
        started = []
        for key, (ann, seen) in list(self._waiting.items()):
            if now - seen > WAITING_TTL or key in self.claims or self._silent.get(ann.requester, 0.0) > now:
                del self._waiting[key]
            elif (claim := self._try_claim(ann)) is not None:
                del self._waiting[key]
                started.append(claim)
        return started

    def _try_claim(self, ann: SweepAnnounce) -> Claim | None:
        if ann.spec.job.engine.executor in self._silent_engines:
            return None
        claim_id = f"c-{uuid.uuid4().hex}"
        room = self._room_for_runs(ann.spec.job.engine.executor)
        slots: list[str] = []
        while len(slots) < min(MAX_SLOTS, MAX_SLOTS if room is None else room, max(1, ann.pending)):
            holder = f"{claim_id}/{len(slots)}"
            if not self.capacity.try_reserve(holder, ann.spec.job.resources):
                break
            slots.append(holder)
        if not slots:
            return None
        self.claims[ann.key] = claim = Claim(ann=ann, claim_id=claim_id, slots=slots)
        return claim

    def cancel_claim(self, peer: str, msg: Cancel) -> tuple[Reply | None, Claim | None]:
        """The requester ended the sweep: the reply, and the claim to stop now (None: not one of ours).
        Only the sweep's requester finds its claims: to another peer they do not exist."""
        claim = self.claims.get((peer, msg.job_id))
        if claim is None or claim.claim_id != msg.execution_id:
            if (peer, msg.execution_id) in self._ended:  # the reply to a report ended it first
                return Reply(stopped=self._ended[(peer, msg.execution_id)]), None
            return None, None
        claim.stopped = len(claim.running)
        return Reply(stopped=claim.stopped), claim

    def release_idle(self, claim: Claim) -> bool:
        """The requester had nothing more for ``claim``: give back the slots no queued or running index
        needs (one stays while it has results to report), or one long index would hold them all while it
        runs; True when capacity came free. A claim never takes slots back: later grants run on those left."""
        if not claim.exhausted:
            return False
        keep = max(1, len(claim.running) + len(claim.queue))
        idle, claim.slots = claim.slots[keep:], claim.slots[:keep]
        for holder in idle:
            self.capacity.release(holder)
        return bool(idle)

    def finish_claim(self, claim: Claim) -> None:
        del self.claims[claim.ann.key]
        _remember(self._ended, (claim.ann.requester, claim.claim_id), claim.stopped, ENDED_KEPT)
        for holder in claim.slots:
            self.capacity.release(holder)
