"""The requester's job decisions as a pure machine: (job state, message, now) -> (reply, changes).

Nothing here awaits, sleeps, reads the store or talks to a peer: each entry point takes a job's
``Tracked`` state, one input, the time and ``Known`` (nodes, reputations), and returns the reply
and the ``JobChanges`` that ``requester.service`` performs. It strings into transitions the rules
of ``trust`` (what to believe of a peer, k-of-n results) and ``selection`` (which bids, which nodes).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass, field, replace
from types import SimpleNamespace

from jobs import Event, EventKind, Execution, ExecutionState, Job, JobSpec, JobState, Resources, RunResult
from jobs.events import ending
from jobs.messages import REPEAT_AT_LEAST_EVERY, Bid, Cancel, Decision, NodeInfo, Reply, Result
from jobs.spec import MIN_CPU, MIN_MEMORY
from requester import trust
from requester.selection import can_ever_run, candidates, never_runnable, waiting_reason

TICK = 0.25  # how often the services check deadlines, leases and re-announcements
ANNOUNCE_BACKOFF_FIRST = 1.0  # seconds to the second announcement of an attempt; doubles after each
ANNOUNCE_BACKOFF_MAX = 30.0  # while few jobs wait; with many, see REPEATS_PER_SECOND
# repeated announcements a requester sends each second, about, while up to 5,000 jobs wait (5,000 repeated every
# 30 s took 44 % of a requester's CPU); compute nodes keep what they had no room for, so repeats are for lost gossip
REPEATS_PER_SECOND = 50.0
RETRY_BACKOFF_FIRST = 1.0  # seconds before the first retry of a failed run (spec.retries); doubles after each
RETRY_BACKOFF_MAX = 60.0
MAX_REOFFERS = 5
WAKE_SPACING = 10.0  # seconds after a node joining had a job announced early before another may
CANDIDATE_SPARE = 1  # a first announcement asks one node more than the job needs
QUARANTINE_AFTER = 3  # rejected results after which a node's bids are refused
SMALLEST_JOB = Resources(cpu=MIN_CPU, memory=MIN_MEMORY, disk=0)  # what any job reserves at least
# what a failed run of a job that repeats exactly says, when it had retries left (JobSpec.repeats_exactly)
NOT_RETRIED = " (not retried: a deterministic job exits the same way on every run)"

Reputation = Mapping[str, trust.Standing]  # by peer


def announce_backoff(backoff: float, now: float, ceiling: float = ANNOUNCE_BACKOFF_MAX) -> tuple[float, float]:
    """(when to announce next, the backoff after that): jobs and sweeps repeat announcements alike."""
    return now + min(backoff, ceiling), min(backoff * 2, ceiling)


def repeat_ceiling(waiting: int) -> float:
    """The longest backoff between a waiting job's announcements when ``waiting`` jobs wait: 30 s, or longer
    to keep to REPEATS_PER_SECOND, but short enough that compute nodes keep the offer (``BACKLOG_STALE``)."""
    return min(max(ANNOUNCE_BACKOFF_MAX, waiting / REPEATS_PER_SECOND), REPEAT_AT_LEAST_EVERY)


def retry_delay(retry: int) -> float:
    """Seconds before retry number ``retry`` (1, 2, …) of a failed job or sweep index: 1, 2, 4, … 60."""
    return min(RETRY_BACKOFF_FIRST * 2 ** (retry - 1), RETRY_BACKOFF_MAX)


def retry_after(retried: int, spec: JobSpec, reason: str, result: RunResult | None) -> tuple[str, float | None]:
    """A failed run's reason, and the seconds before its job's (or sweep index's) next run: None when
    ``spec.retries`` are spent, or its spec repeats exactly and it exited non-zero (a retry would too)."""
    if retried >= spec.retries:
        return reason, None
    if result is not None and spec.repeats_exactly():
        return reason + NOT_RETRIED, None
    return reason, retry_delay(retried + 1)


@dataclass(frozen=True)
class Tracked:
    """A live job and what the requester needs to drive it (rebuilt from the store on restart)."""

    job: Job
    executions: Mapping[str, Execution] = field(default_factory=dict)
    secrets: Mapping[str, str] = field(default_factory=dict)  # the job's secret_env: only accepted nodes get it
    waiting_since: float = 0.0  # when the job last became short of nodes
    first_bid_at: float | None = None
    next_announce: float = 0.0
    announce_backoff: float = ANNOUNCE_BACKOFF_FIRST
    resumed_at: float = 0.0  # when a restarted requester took it up again: results are awaited a full deadline
    woken_at: float = -math.inf  # when a node joining last had it announced early (``to_wake``)

    def accepted_since(self, x: Execution) -> float:
        """Since when a result of ``x`` (accepted) is awaited: after a restart, a full deadline again, so the
        node's result, held for the requester, can arrive."""
        return max(x.updated_at, self.resumed_at)

    def held(self) -> int:
        return sum(1 for x in self.executions.values() if x.state.holds_slot)

    def needed(self) -> int:
        return self.slots() - self.held()

    def slots(self) -> int:
        """The nodes the job takes: its ``concurrency``; and while their results agree short of its
        ``confidence`` (k), one more, up to 2k - 1 in all, so that one liar among k nodes cannot fail the job."""
        deal = self.job.spec.deal
        if deal.confidence < 2:
            return deal.concurrency
        proposed = _proposals(self)
        if not deal.concurrency <= len(proposed) < 2 * deal.confidence - 1:
            return deal.concurrency
        return deal.concurrency if trust.verify(proposed, deal.confidence).verified else len(proposed) + 1

    def due(self) -> float:
        """When ``JobMachine.tick`` may next change the job with the clock alone: a deadline or an announcement
        (what the node table's changes decide waits for a pass over every job)."""
        if self.job.state.is_terminal:
            return math.inf
        spec, times = self.job.spec, []
        if spec.deal.min_bids and self.first_bid_at is not None and self.bidding():
            times.append(self.first_bid_at + spec.deadlines.min_bids)
        running = [self.accepted_since(x) for x in self.executions.values() if x.state is ExecutionState.ACCEPTED]
        if running:
            times.append(min(running) + spec.result_deadline())
        if self.needed() > 0:
            times += [self.waiting_since + spec.deadlines.bid_limit, self.next_announce]
        elif not running and _proposals(self):
            return 0.0  # every slot proposed and no verdict written: a restart came between them
        return min(times, default=math.inf)

    def bidding(self) -> list[Execution]:
        return [x for x in self.executions.values() if x.state is ExecutionState.BIDDING]

    def is_open(self) -> bool:
        """Still taking bids: an answer to a node asking whether its backlogged offer is worth keeping."""
        return not self.job.state.is_terminal and self.needed() > 0

    def with_executions(self, *executions: Execution) -> Tracked:
        return replace(self, executions={**self.executions, **{x.id: x for x in executions}})


def _holders(state: Tracked) -> set[str]:
    """The nodes holding a slot of the job: running it, or their result in."""
    return {x.node_id for x in state.executions.values() if x.state.holds_slot}


def _verified(spec: JobSpec) -> bool:
    """Whether a job's result is more than one node's word (``trust.quarantined``: work a node on probation takes)."""
    return spec.deal.confidence >= 2


def _proposals(state: Tracked) -> dict[str, str]:
    """The results proposed and not judged yet: execution id -> digest."""
    return {x.id: (x.result or RunResult()).digest() for x in state.executions.values()
            if x.state is ExecutionState.PROPOSED}


@dataclass(frozen=True)
class Known:
    """What the requester knows beyond one job, as of one decision."""

    nodes: Sequence[NodeInfo] = ()  # compute nodes heard from lately
    reputation: Reputation = field(default_factory=dict)
    complete: bool = True  # False: the node table dropped nodes lately, or is filling; no job fails for want of one
    waiting: int = 0  # jobs short of nodes on this requester, lately (``repeat_ceiling``)


@dataclass(frozen=True)
class Send:
    """A message to deliver to ``peer`` until it gets through (in the background)."""

    peer: str
    message: Decision | Cancel


@dataclass(eq=False)
class Changes:
    """What one decision asks of its service, in order: write, then send, then announce."""

    now: float
    writes: list = field(default_factory=list)  # each a transaction for the store: see ``save``
    sends: list[Send] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # counters to increment
    penalties: list[tuple[str, str]] = field(default_factory=list)  # (peer, why): refused messages held against it
    credits: list[str] = field(default_factory=list)  # peers whose results were verified: counted for them
    announce: bool = False  # announce now (after the writes)
    finished: bool = False  # it reached a terminal state: forget it

    def save(self, **write: object) -> None:
        """One transaction: ``write`` holds the store's ``save`` (or ``save_sweep``) keyword arguments."""
        self.writes.append(SimpleNamespace(**write))


@dataclass(frozen=True)
class AnnouncePlan:
    here: bool  # offer the job to this node's own compute role first
    ask: list[str]  # nodes to offer it to directly; empty: gossip


@dataclass(eq=False, kw_only=True)
class JobChanges(Changes):
    """A job decision's changes as they are made (each step sees the steps before it).

    ``writes`` pairs each write with the job's state once it is written; ``state`` is the job after them all.
    """

    state: Tracked
    known: Known
    node_id: str
    reputation: dict[str, tuple[int, int]] = field(default_factory=dict)  # (accepted, rejected) to add, per peer

    def event(self, kind: EventKind, message: str = "", ex: Execution | None = None) -> Event:
        return Event(job_id=self.state.job.id, at=self.now, kind=kind, execution_id=ex.id if ex else None,
                     node_id=ex.node_id if ex else self.node_id, message=message)

    def put(self, *executions: Execution) -> None:
        self.state = self.state.with_executions(*executions)

    def save(self, **write: object) -> None:
        self.writes.append((SimpleNamespace(**write), self.state))

    def cancel(self, x: Execution) -> None:
        self.sends.append(Send(x.node_id, Cancel(job_id=x.job_id, execution_id=x.id, reason=x.reason)))

    def judge(self, peer: str, ok: bool) -> None:
        """Count one of ``peer``'s results as accepted (``ok``) or rejected: a change, added to its counts
        when written (counts read now would be stale by then: other jobs' decisions judge it meanwhile)."""
        accepted, rejected = self.reputation.get(peer, (0, 0))
        self.reputation[peer] = (accepted + ok, rejected + (not ok))


@dataclass(frozen=True)
class Cached:
    """An earlier identical job's result, as the store has it."""

    source: str  # the job that produced it
    result: RunResult
    verified: bool
    mine: bool  # the source job is the same client's (another client's is never named)


class JobMachine:
    """The decisions about jobs of the requester ``node_id``."""

    def __init__(self, node_id: str, *, max_reoffers: int = MAX_REOFFERS, quarantine_after: int = QUARANTINE_AFTER,
                 rng: random.Random | None = None) -> None:
        self.node_id = node_id
        self.max_reoffers = max_reoffers
        self.quarantine_after = quarantine_after
        self.rng = rng or random.Random()

    # -- submit and announce ----------------------------------------------------------------------

    def admit(self, job: Job, nodes: Sequence[NodeInfo], cached: Cached | None) -> tuple[Job, list[Event]]:
        """A new job as it is first written: completed from the cache, failed at once, or waiting for bids."""
        event = JobChanges(now=job.created_at, state=Tracked(job=job), known=Known(), node_id=self.node_id).event
        events = [event(EventKind.CREATED)]
        impossible = never_runnable(job.spec, nodes)
        if cached is not None:
            if not cached.verified:  # one node's word: served to the client whose job it ran, and said so
                reason = (f"cached: the result of your identical job {cached.source}, run by one node and not "
                          "verified (--no-cache runs it again)")
            elif cached.mine:
                reason = f"cached: the verified result of job {cached.source}"
            else:
                reason = "cached: the verified result of an identical earlier job"
            job = job.model_copy(update={"state": JobState.COMPLETED, "reason": reason, "result": cached.result,
                                         "cached_from": cached.source if cached.mine else "another client's job"})
            events.append(event(EventKind.COMPLETED, reason))
        elif impossible:
            job = job.model_copy(update={"state": JobState.FAILED, "reason": impossible})
            events.append(event(EventKind.FAILED, impossible))
        else:
            job = job.model_copy(update={"reason": waiting_reason(job.spec, nodes, 0)})
            events.append(event(EventKind.ANNOUNCED))  # written with the job, announced right after
        return job, events

    def announce(self, state: Tracked, now: float, known: Known, own: NodeInfo | None) -> tuple[AnnouncePlan, Tracked]:
        """Whom to offer the job to now, and the job's announcement schedule after it.

        The first announcement of an attempt goes to a few named nodes (or to this node's own
        compute role alone, see ``may_run_here``); repeats are gossiped to everyone.
        """
        first = state.announce_backoff == ANNOUNCE_BACKOFF_FIRST
        next_at, backoff = announce_backoff(state.announce_backoff, now, repeat_ceiling(known.waiting))
        after = replace(state, next_announce=next_at, announce_backoff=backoff)
        here = first and self.may_run_here(state, own)
        spec = state.job.spec
        needed = max(state.needed(), spec.deal.min_bids)
        holders = _holders(state)  # they would pass (a re-offer, a tie's breaker): offers go to the others
        nodes = [info for info in known.nodes if info.peer_id not in holders] if holders else known.nodes
        ask = candidates(spec, nodes, needed, self.rng, spare=CANDIDATE_SPARE) if first else []
        if here:
            ask = [node for node in ask if node != self.node_id]  # it will have said no
        self.rng.shuffle(ask)  # offered in random order: the first bids win, and no node is always asked first
        return AnnouncePlan(here=here, ask=ask), after

    @staticmethod
    def may_run_here(state: Tracked, own: NodeInfo | None) -> bool:
        """Whether to offer a job to this node's own compute role before anyone else: one that needs one more
        node and no choice among bids, so nothing crosses the network (the 3-node throughput benchmark's CPU
        per job fell from 24 to 9 ms)."""
        spec = state.job.spec
        return state.needed() == 1 and spec.deal.min_bids <= 1 and own is not None and can_ever_run(spec, own) \
            and trust.bid_refusal(state.executions.values(), own.peer_id, state.job.attempt) is None

    @staticmethod
    def to_wake(states: Iterable[Tracked], info: NodeInfo, now: float) -> list[str]:
        """A node joined, or came back with an empty backlog: the waiting jobs it has room for, oldest first,
        to re-announce at the next tick rather than at their next backoff step (a retry's backoff stands). A job
        woken within WAKE_SPACING is left to its backoff: a peer gossiping a new boot every 0.25 s had every
        waiting job gossiped four times a second."""
        free, woken = info.free, []
        waiting = (s for s in states if s.is_open() and s.waiting_since <= now and now - s.woken_at >= WAKE_SPACING)
        for state in sorted(waiting, key=lambda s: s.waiting_since):
            spec = state.job.spec
            if spec.resources.fits_in(free) and can_ever_run(spec, info):
                free = free - spec.resources
                woken.append(state.job.id)
                if not SMALLEST_JOB.fits_in(free):  # full: the rest would only be looked at
                    break
        return woken

    # -- messages from compute nodes --------------------------------------------------------------

    def on_bid(self, state: Tracked, peer: str, bid: Bid, now: float, known: Known, *,
               room: int | None = None) -> tuple[Reply, JobChanges]:
        """A node's bid. ``room``: the verified work a node on probation may still take here (None: it is not
        on probation; see ``trust.PROBATION_WORK``)."""
        p = JobChanges(now=now, state=state, known=known, node_id=self.node_id)
        p.counts["bids"] += 1
        known_ex = state.executions.get(bid.execution_id)
        if known_ex is not None:  # a retried bid: answer what we decided
            if known_ex.node_id != peer:
                return Reply(ok=False, verdict="rejected", reason="not your execution"), p
            if known_ex.state is ExecutionState.ACCEPTED:
                return Reply(verdict="accepted", secret_env=dict(state.secrets)), p
            return Reply(verdict="pending" if known_ex.state is ExecutionState.BIDDING else "rejected"), p
        job = state.job
        # A refused bid leaves a counter, never a row: bids with fresh execution ids cannot grow the store.
        refusal = "the job no longer needs this bid" if job.state.is_terminal or bid.attempt != job.attempt else None
        standing = known.reputation.get(peer, trust.Standing())
        if refusal is None and trust.quarantined(standing, self.quarantine_after, now, verified=_verified(job.spec)):
            refusal = f"quarantined: {standing.rejected} results rejected, {standing.accepted} accepted" + (
                "; on probation, it takes jobs verified by other nodes only (confidence 2 or more)"
                if trust.on_probation(standing, self.quarantine_after, now) else "")
        if refusal is None and room is not None and room <= 0:
            refusal = (f"on probation: it takes {trust.PROBATION_WORK} verified job or sweep index at a time, and "
                       "holds that many")
        if refusal is None:  # a restarted node may not remember it ran the job
            refusal = trust.bid_refusal(state.executions.values(), peer, bid.attempt)
        if refusal is None and peer in (sat := trust.sitters(state.executions.values())) \
                and self._newcomer_able(p, besides=sat):
            refusal = "this node held the job past its result deadline: another node takes it"
        if refusal is None and state.needed() <= 0:
            refusal = "enough nodes already"
        if refusal is not None:
            p.counts["bids_rejected"] += 1
            return Reply(verdict="rejected", reason=refusal), p
        ex = Execution(id=bid.execution_id, job_id=job.id, node_id=peer, requester=self.node_id,
                       attempt=bid.attempt, created_at=now, updated_at=now, reason="bid received")
        events = [p.event(EventKind.BID, ex=ex)]
        p.state = replace(p.state, first_bid_at=state.first_bid_at or now)
        deal = job.spec.deal
        if deal.min_bids:
            p.put(ex)
            p.save(new_executions=(ex,), events=tuple(events))
            if len(state.bidding()) + 1 < deal.min_bids:
                return Reply(verdict="pending", reason=f"waiting for {deal.min_bids} bids"), p
            verdicts = self._decide(p)  # this bid completes the set: choose among all of them
            self._notify(p, verdicts, skip=ex.id)
            verdict = verdicts.get(ex.id, "rejected")
            return Reply(verdict=verdict, secret_env=dict(p.state.secrets) if verdict == "accepted" else {}), p
        ex = ex.model_copy(update={"state": ExecutionState.ACCEPTED, "reason": "running"})
        events.append(p.event(EventKind.BID_ACCEPTED, ex=ex))
        p.put(ex)
        p.save(new_executions=(ex,), job=self._job_after_accept(p), events=tuple(events))
        p.counts["bids_accepted"] += 1
        return Reply(verdict="accepted", secret_env=dict(p.state.secrets)), p

    def on_result(self, state: Tracked, peer: str, msg: Result, now: float, known: Known, *,
                  signed: bool) -> tuple[Reply, JobChanges]:
        """A node's result (``signed``: its signature is the node's own, checked by the caller)."""
        p = JobChanges(now=now, state=state, known=known, node_id=self.node_id)
        p.counts["results"] += 1
        ex = state.executions.get(msg.execution_id)
        if ex is None or ex.node_id != peer:
            return Reply(ok=False, verdict="rejected", reason="not an execution of yours"), p
        forged = None if signed else "the result's signature does not match the node key"
        if forged is None and msg.digest != msg.outcome():
            forged = "the result's fields do not match its signed digest"
        if forged is not None:
            return self._refuse_result(p, ex, forged), p
        if ex.state.is_terminal:  # a re-delivered result: same verdict as before
            return Reply(verdict="accepted" if ex.state in (ExecutionState.COMPLETED, ExecutionState.FAILED)
                         else "rejected", reason=ex.reason), p
        if ex.state is ExecutionState.PROPOSED:
            return Reply(verdict="pending", reason=ex.reason), p  # re-delivered; the verdict will follow
        if ex.state is not ExecutionState.ACCEPTED:
            # BIDDING: the node lost its bid (restart); forget it
            y = ex.transition(ExecutionState.FAILED, msg.error or "unexpected result", now)
            p.put(y)
            p.save(executions=(y,), events=(p.event(EventKind.ERROR, y.reason, y),))
            return Reply(verdict="accepted"), p
        if msg.error is not None:
            y = ex.transition(ExecutionState.FAILED, msg.error, now, error=msg.error, retryable=msg.retryable)
            p.put(y)
            witnessed = trust.timeout_witnessed(msg.error, state.job.spec, ex.updated_at, now,
                                              state.job.spec.deal.confidence)
            self._execution_failed(p, y, msg.retryable, [p.event(EventKind.ERROR, msg.error, y)], witnessed)
            return Reply(verdict="accepted"), p
        result = msg.result or RunResult()
        if state.job.spec.deal.confidence > 0:
            return self._on_proposal(p, ex, result), p
        y = ex.transition(ExecutionState.COMPLETED, "results accepted", now, result=result)
        events = [p.event(EventKind.RESULTS_PROPOSED, ex=y), p.event(EventKind.RESULTS_ACCEPTED, ex=y)]
        p.put(y)
        done = sum(1 for x in p.state.executions.values() if x.state is ExecutionState.COMPLETED)
        if result.exit_code != 0:
            self._fail(p, f"exit code {result.exit_code} on node {peer[-8:]}", [y], events, result=result)
        elif done >= state.job.spec.deal.concurrency:
            self._finish(p, JobState.COMPLETED, "completed", [y], events, result=result)
        else:
            p.save(executions=(y,), events=tuple(events))
        return Reply(verdict="accepted"), p

    def _refuse_result(self, p: JobChanges, ex: Execution, why: str) -> Reply:
        """A result its node did not vouch for: refused whole and counted against the node. Only the
        execution's own node can send it (the stream is authenticated), so its run is over: the node is
        told to stop and the slot is re-offered."""
        p.counts["results_refused"] += 1
        p.penalties.append((ex.node_id, f"{why} (execution {ex.id})"))
        if ex.state is ExecutionState.ACCEPTED:
            y = ex.transition(ExecutionState.FAILED, f"result refused: {why}", p.now, error=why, retryable=True)
            p.put(y)
            p.cancel(y)
            self._execution_failed(p, y, True, [p.event(EventKind.RESULTS_REJECTED, why, y)])
        return Reply(ok=False, verdict="rejected", reason=why)

    def _on_proposal(self, p: JobChanges, ex: Execution, result: RunResult) -> Reply:
        """A result of a job that asks for verification: hold it until every slot has proposed; when all have
        and they disagree short of a verdict, one more node runs the job while one may (``Tracked.slots``)."""
        slots = p.state.slots()
        y = ex.transition(ExecutionState.PROPOSED, "results proposed, waiting for the other nodes", p.now,
                          result=result)
        p.put(y)
        proposed = p.event(EventKind.RESULTS_PROPOSED, result.digest(), y)
        running = any(x.state is ExecutionState.ACCEPTED for x in p.state.executions.values())
        tie = not running and p.state.slots() > slots
        if tie and self._newcomer_able(p) and self._reoffers_left(p):
            seen = trust.verify(_proposals(p.state), p.state.job.spec.deal.confidence).reason
            # in the proposal's transaction: a restart between the two would offer the slot at the old attempt
            self._reoffer(p, f"re-offering: {seen.removeprefix('could not verify: ')}; one more node runs it",
                          [y], [proposed])
            return Reply(verdict="pending")
        p.save(executions=(y,), events=(proposed,))
        if running or (not tie and p.state.needed() > 0):
            return Reply(verdict="pending")
        verdicts = self._verify(p)
        self._notify(p, verdicts, skip=y.id)
        return Reply(verdict=verdicts[y.id], reason=p.state.executions[y.id].reason)  # type: ignore[arg-type]

    # -- the clock, lost nodes, the owner ---------------------------------------------------------

    def tick(self, state: Tracked, now: float, known: Known) -> JobChanges:
        """Deadlines: choose among bids whose wait ran out, fail executions past their time, fail a job
        no node took in time, announce again when it is due."""
        p = JobChanges(now=now, state=state, known=known, node_id=self.node_id)
        spec = state.job.spec
        if spec.deal.min_bids and state.bidding() and state.first_bid_at \
                and now - state.first_bid_at > spec.deadlines.min_bids:
            self._notify(p, self._decide(p))
        deadline = spec.result_deadline()
        for x in list(p.state.executions.values()):
            if x.state is ExecutionState.ACCEPTED and now - p.state.accepted_since(x) > deadline:
                why = f"{trust.NO_RESULT_IN_TIME} {deadline:g} s (its run timeout, {spec.timeout:g} s, with time to " \
                      "prepare and deliver)"
                # the node's failure, as a "retry elsewhere" error is (``trust.bid_refusal`` bounds its retakes)
                y = x.transition(ExecutionState.FAILED, why, now, error=why, retryable=True)
                p.put(y)
                p.cancel(y)
                self._execution_failed(p, y, True, [p.event(EventKind.ERROR, y.reason, y)])
                if p.finished:
                    return p
        running = any(x.state is ExecutionState.ACCEPTED for x in p.state.executions.values())
        if p.state.needed() <= 0:
            if _proposals(p.state) and not running:  # every slot proposed, and a restart came before the verdict
                self._notify(p, self._verify(p))
            return p
        if p.state.slots() > spec.deal.concurrency and not running and not self._newcomer_able(p):
            # a tie no node is left to break (the one it waited for left, or was quarantined)
            self._notify(p, self._verify(p))
            return p
        limit = spec.deadlines.bid_limit
        if now - p.state.waiting_since > limit:
            why = waiting_reason(spec, known.nodes, p.state.held(), barred=self.barred(p.state, known, p.now))
            self._finish(p, JobState.FAILED, f"no node took the job within {limit:g} s ({why})")
            return p
        impossible = never_runnable(spec, known.nodes) if known.complete else None
        if impossible:
            self._finish(p, JobState.FAILED, impossible)
            return p
        failed = [x for x in p.state.executions.values() if x.state is ExecutionState.FAILED and x.error is not None]
        if failed and known.complete and (able := self.able(spec, known, p.now)) \
                and not trust.nodes_left(p.state.executions.values(), able):
            # the nodes gave up on it while the node table was filling (no job fails for want of a node then)
            last = max(failed, key=lambda x: x.updated_at)
            self._fail(p, f"no known node may take the job any more; last error on node {last.node_id[-8:]}: "
                          f"{last.reason}", [], [])
            return p
        p.announce = now >= p.state.next_announce
        return p

    def able(self, spec: JobSpec, known: Known, now: float, *, verified: bool | None = None) -> set[str]:
        """The known nodes whose bids on the job would be taken: able to run it, not quarantined for it
        (``verified``: whether its results are, by default as its deal says)."""
        barred = self.quarantined(known, now, _verified(spec) if verified is None else verified)
        return {info.peer_id for info in known.nodes if can_ever_run(spec, info) and info.peer_id not in barred}

    def quarantined(self, known: Known, now: float, verified: bool) -> set[str]:
        """The known nodes whose bids and claims are refused (``trust.quarantined``), for verified work or not."""
        return {info.peer_id for info in known.nodes
                if trust.quarantined(known.reputation.get(info.peer_id, trust.Standing()), self.quarantine_after,
                                     now, verified=verified)}

    def barred(self, state: Tracked, known: Known, now: float) -> set[str]:
        """The known nodes whose bids on the job are refused: quarantined, or done with it (``trust.nodes_left``:
        a concurrency-3 job on three nodes, one of them failing it twice, said all three could run it)."""
        ids = {info.peer_id for info in known.nodes}
        return self.quarantined(known, now, _verified(state.job.spec)) \
            | (ids - trust.nodes_left(state.executions.values(), ids))

    def lose(self, state: Tracked, execution_id: str, reason: str, now: float, known: Known, *,
             silent: float | None = None) -> JobChanges:
        """An execution whose node forgot it, or has been ``silent`` longer than the job's
        ``deadlines.silence``: its slot is re-offered (or the job ends)."""
        p = JobChanges(now=now, state=state, known=known, node_id=self.node_id)
        current = state.executions.get(execution_id)
        if current is None or current.state is not ExecutionState.ACCEPTED \
                or (silent is not None and silent <= state.job.spec.deadlines.silence):
            return p
        # the node's failure, as a "retry elsewhere" error is (``trust.bid_refusal`` bounds its retakes)
        y = current.transition(ExecutionState.FAILED, reason, now, error=reason, retryable=True)
        p.put(y)
        self._execution_failed(p, y, True, [p.event(EventKind.ERROR, reason, y)])
        return p

    def finish(self, state: Tracked, end: JobState, reason: str, now: float, known: Known) -> JobChanges:
        """End the job (its owner cancelled it, or it cannot go on); what still runs is cancelled."""
        p = JobChanges(now=now, state=state, known=known, node_id=self.node_id)
        self._finish(p, end, reason)
        return p

    # -- the steps the entry points share ---------------------------------------------------------

    def _job_after_accept(self, p: JobChanges) -> Job | None:
        """The job with its newly accepted executions in ``p.state``: running, or still short of nodes."""
        job, held = p.state.job, p.state.held()
        reason = "running" if held >= job.spec.deal.concurrency else waiting_reason(
            job.spec, p.known.nodes, held, barred=self.barred(p.state, p.known, p.now))
        if job.state is JobState.RUNNING and job.reason == reason:
            return None
        p.state = replace(p.state, job=job.transition(JobState.RUNNING, reason, p.now))
        return p.state.job

    def _decide(self, p: JobChanges) -> dict[str, str]:
        """Choose among the pending bids (min_bids reached or its wait ran out); execution id -> verdict."""
        pending = p.state.bidding()
        verified = _verified(p.state.job.spec)
        # a node quarantined since it bid (its bid waited for the others) is not chosen
        barred = {x.id for x in pending if trust.quarantined(p.known.reputation.get(x.node_id, trust.Standing()),
                                                              self.quarantine_after, p.now, verified=verified)}
        order = [x.id for x in pending if x.id not in barred]
        self.rng.shuffle(order)  # accept at random, so no node is always first
        chosen = order[:max(p.state.needed(), 0)]
        updated, events, verdicts = [], [], {}
        for x in pending:
            if x.id in chosen:
                y = x.transition(ExecutionState.ACCEPTED, "running", p.now)
                events.append(p.event(EventKind.BID_ACCEPTED, ex=y))
                verdicts[x.id] = "accepted"
            else:
                why = "quarantined since it bid" if x.id in barred else "another node was chosen"
                y = x.transition(ExecutionState.REJECTED, why, p.now)
                events.append(p.event(EventKind.BID_REJECTED, y.reason, y))
                verdicts[x.id] = "rejected"
            updated.append(y)
        p.put(*updated)
        p.save(executions=tuple(updated), job=self._job_after_accept(p) if chosen else None, events=tuple(events))
        return verdicts

    @staticmethod
    def _notify(p: JobChanges, verdicts: Mapping[str, str], skip: str | None = None) -> None:
        """Tell each node its verdict (the one whose message led to it hears it in the reply)."""
        for eid, verdict in verdicts.items():
            if eid == skip:
                continue
            ex = p.state.executions[eid]
            run = ex.state is ExecutionState.ACCEPTED  # a bid accepted, not results: secrets go with it
            secrets = dict(p.state.secrets) if run else {}
            p.sends.append(Send(ex.node_id, Decision(job_id=ex.job_id, execution_id=eid, accepted=verdict == "accepted",
                                                     reason=ex.reason, secret_env=secrets)))

    def _verify(self, p: JobChanges) -> dict[str, str]:
        """Compare the proposed results, decide each, finish the job; returns execution id -> verdict."""
        proposed = [x for x in p.state.executions.values() if x.state is ExecutionState.PROPOSED]
        verdict = trust.verify(_proposals(p.state), p.state.job.spec.deal.confidence)
        updates, events, verdicts = [], [], {}
        for x in proposed:
            if x.id in verdict.accepted:
                y = x.transition(ExecutionState.COMPLETED, f"results accepted, {verdict.reason}", p.now)
                events.append(p.event(EventKind.RESULTS_ACCEPTED, ex=y))
                verdicts[x.id] = "accepted"
            else:
                why = "results differ from the verified ones" if verdict.verified else verdict.reason
                y = x.transition(ExecutionState.REJECTED, why, p.now)
                events.append(p.event(EventKind.RESULTS_REJECTED, why, y))
                verdicts[x.id] = "rejected"
            updates.append(y)
        if not verdict.verified:
            self._finish(p, JobState.FAILED, verdict.reason, updates, events)
            return verdicts
        if trust.credited(verdict.accepted, p.state.job.spec, outvoted=verdict.rejected):
            for y in updates:
                p.judge(y.node_id, y.state is ExecutionState.COMPLETED)
        result = next(x.result for x in proposed if x.id in verdict.accepted) or RunResult()
        if result.exit_code != 0:
            self._fail(p, f"exit code {result.exit_code} ({verdict.reason})", updates, events, result=result)
        else:
            self._finish(p, JobState.COMPLETED, f"completed, {verdict.reason}", updates, events, result=result)
        return verdicts

    def _execution_failed(self, p: JobChanges, failed: Execution, retryable: bool, events: list[Event],
                          witnessed: bool = False) -> None:
        """Record a failed execution (already in ``p.state``); re-offer its slot, or fail the job when that is
        pointless. A node's error fails the job only once confirmed (``trust.error_confirmed``) or
        ``witnessed`` (``trust.timeout_witnessed``): till then another able node gets the work."""
        job = p.state.job
        able = self.able(job.spec, p.known, p.now)
        last = f"node {failed.node_id[-8:]}: {failed.reason}"
        reporters = trust.error_reporters(p.state.executions.values()) | {failed.node_id}
        everyone = p.known.complete  # else a node not yet heard of may run it
        if not retryable and (witnessed or trust.error_confirmed(reporters, able, job.spec.deal.confidence,
                                                                  everyone=everyone)):
            why = f"{last} (reported by {len(reporters)} nodes)" if len(reporters) > 1 else last
        elif everyone and able and not trust.nodes_left(p.state.executions.values(), able):
            why = f"no known node may take the job any more; last error on {last}"
        elif job.attempt - job.first_attempt >= self.max_reoffers:
            why = f"gave up after {job.attempt - job.first_attempt} re-offers; last error on {last}"
        else:
            why = None
        if why is not None:
            return self._fail(p, why, [failed], events)
        self._reoffer(p, f"re-offering: node {failed.node_id[-8:]} failed: {failed.reason}", [failed], events)

    def _newcomer_able(self, p: JobChanges, *, besides: Set[str] = frozenset()) -> bool:
        """Whether a node that holds no slot of the job (nor is one of ``besides``) may still take one (one not
        heard of yet may, while the node table fills)."""
        job, executions = p.state.job, p.state.executions.values()
        return not p.known.complete or bool(trust.nodes_left(executions, self.able(job.spec, p.known, p.now))
                                            - _holders(p.state) - besides)

    def _reoffers_left(self, p: JobChanges) -> bool:
        return p.state.job.attempt - p.state.job.first_attempt < self.max_reoffers

    @staticmethod
    def _reoffer(p: JobChanges, reason: str, executions: Sequence[Execution] = (), events: Sequence[Event] = ()
                 ) -> None:
        """Offer the job's free slots again, as a new attempt (nodes that passed on the last one bid again)."""
        job = p.state.job
        state = JobState.RUNNING if p.state.held() > 0 else JobState.PENDING
        job = job.transition(state, reason, p.now, attempt=job.attempt + 1)
        # the next tick announces the new attempt, whose bids wait for min_bids afresh
        p.state = replace(p.state, job=job, waiting_since=p.now, announce_backoff=ANNOUNCE_BACKOFF_FIRST,
                          next_announce=p.now, first_bid_at=None)
        p.save(executions=tuple(executions), job=job, events=(*events, p.event(EventKind.REOFFERED, reason)))
        p.counts["reoffers"] += 1

    def _fail(self, p: JobChanges, reason: str, executions: Sequence[Execution], events: Sequence[Event], *,
              result: RunResult | None = None) -> None:
        """A run failed (a non-zero exit, or a node error that ends it): fail the job, or run it again when
        ``retry_after`` says, as a fresh attempt: the failed run's executions are left behind (stored, no
        longer tracked) and what still runs of it is cancelled, so its nodes may bid again and the re-offer
        budget and the queue timeout count afresh."""
        job = p.state.job
        reason, delay = retry_after(job.retried, job.spec, reason, result)
        if delay is None:
            return self._finish(p, JobState.FAILED, reason, executions, events, result=result)
        executions, events = self._cancel_rest(p, executions, "its run failed and is retried"), list(events)
        retry = job.retried + 1
        why = f"retry {retry} of {job.spec.retries} in {delay:g} s: {reason}"
        attempt = job.attempt + 1
        job = job.transition(JobState.PENDING, why, p.now, attempt=attempt, first_attempt=attempt, retried=retry)
        events.append(p.event(EventKind.RETRIED, why))
        start = p.now + delay  # announced then; the queue timeout counts from then
        p.state = Tracked(job=job, secrets=p.state.secrets, waiting_since=start, next_announce=start)
        p.save(executions=tuple(executions), job=job, events=tuple(events))
        p.counts["retries"] += 1

    def _finish(self, p: JobChanges, end: JobState, reason: str, executions: Sequence[Execution] = (),
                events: Sequence[Event] = (), *, result: RunResult | None = None) -> None:
        """Move the job to a terminal state and cancel what still runs; a completed deterministic job's result
        goes to the cache in the same transaction."""
        executions, events = self._cancel_rest(p, executions, f"job {end.value}"), list(events)
        job = p.state.job.transition(end, reason, p.now, result=result)
        events.append(p.event(ending(end), reason))
        key = job.spec.cache_key() if not p.state.secrets else None  # the stored spec has none: see submit
        cache = None
        if end is JobState.COMPLETED and result is not None:
            everything = {**p.state.executions, **{x.id: x for x in executions}}.values()
            corroborated = trust.corroborated(trust.agreeing_nodes(everything, result), self.node_id,
                                              pinned=bool(job.spec.selector))
            if key:
                cache = (key, job.id, result, corroborated)
            if corroborated:  # the job completed: their errors were wrong
                for node in trust.proven_wrong(everything, job.spec):
                    p.judge(node, False)
        # the store deletes the job's secrets in the transaction that ends it
        p.state = replace(p.state.with_executions(*executions), job=job, secrets={})
        p.save(job=job, executions=tuple(executions), events=tuple(events), cache=cache,
               reputation=dict(p.reputation) or None, judged_at=p.now)
        p.finished = True

    @staticmethod
    def _cancel_rest(p: JobChanges, executions: Sequence[Execution], why: str) -> list[Execution]:
        """``executions``, then every other live execution of the job, cancelled (its node is told)."""
        touched = {x.id for x in executions}
        rest = [x.transition(ExecutionState.CANCELLED, why, p.now) for x in p.state.executions.values()
                if x.id not in touched and not x.state.is_terminal]
        for y in rest:
            p.cancel(y)
        return [*executions, *rest]
