"""A sweep's decisions with no I/O: grant index ranges, record reports, take back lapsed leases, end.

``SweepMachine`` holds one live sweep; its index states can be many, so they change in place rather
than being copied per message. Each entry point takes one input and the time and returns the reply
and the ``Changes`` that ``requester.sweeps`` performs; ``requester.sweep_rules`` judges a claim.
"""

from __future__ import annotations

import heapq
import logging
from collections import Counter, OrderedDict
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

from jobs import Event, EventKind, JobState, RunResult
from jobs.events import ending
from jobs.messages import Cancel, Claim, IndexResult, NodeInfo, Reply
from jobs.sweep import IndexRecord, Sweep, compress
from requester import sweep_rules, trust
from requester.machine import ANNOUNCE_BACKOFF_FIRST, TICK, Changes, Send, announce_backoff, retry_after
from requester.selection import never_runnable
from requester.sweep_rules import ClaimCheck, ClaimView, check_claim, contradicted, error_confirmed, may_grant, report

log = logging.getLogger("shoal.requester")

MAX_ATTEMPTS = 5  # runs of one index that failed for reasons of the node, before it fails for good
MAX_EXPIRED = 1000  # lapsed claim ids remembered per sweep: their late reports are refused, not held against them
MAX_KIND_EVENTS = 20  # refusal, or error, events written per sweep; the rest only count (a liar cannot grow the store)
RESTORED = "restored:"  # the claim id under which a restarted requester keeps what a node was running
IndexRow = tuple[int, JobState, str, int, "str | None", int]  # store: index, state, reason, attempts, node, retries


@dataclass
class Lease:
    """A claim: the indexes one node was granted and has not reported yet."""

    node: str
    indexes: set[int]  # granted and not reported yet
    heard: float
    progressed: float  # when it was made, or last reported an index or was granted one
    reported: set[int] = field(default_factory=set)  # a batch re-sent after a lost reply repeats these


class SweepMachine:
    """One sweep that is not finished, and the decisions that drive it (rebuilt from the store on restart)."""

    def __init__(self, sweep: Sweep, node_id: str, *, states: list[JobState], attempts: list[int],
                 pending: list[int], retries: list[int] | None = None, next_announce: float = 0.0) -> None:
        self.sweep = sweep
        self.node_id = node_id
        self.states = states
        self.attempts = attempts
        self.retries = retries or [0] * len(states)  # runs after a failure (the template's ``retries``)
        self.not_before: dict[int, float] = {}  # index -> when its retry may run (not kept over a restart)
        self.granted_at: dict[int, float] = {}  # index -> when a node was last granted it (not kept either)
        self.pending = pending  # a heap: the lowest indexes are granted first
        heapq.heapify(self.pending)
        self.claims: dict[str, Lease] = {}
        self.expired: OrderedDict[str, str] = OrderedDict()  # claim id -> node, lease lapsed
        self.errors: dict[int, tuple[float, dict[str, str | None]]] = {}  # index -> (last error at, node -> report)
        self.lost: dict[int, Counter[str]] = {}  # index -> node -> runs of it the node lost (not kept over a restart)
        # index -> node -> its result's digest, until ``confidence`` nodes agree (not kept over a restart)
        self.proposals: dict[int, dict[str, str]] = {}
        # indexes whose results await other nodes' runs, in heaps by the nodes that ran them: a claim
        # draws from the heaps of others only, never scanning past its own node's (one may be thousands)
        self.awaiting: dict[frozenset[str], list[int]] = {}
        self.bounded_events: Counter[EventKind] = Counter()  # of each kind MAX_KIND_EVENTS bounds
        self.next_announce = next_announce
        self.backoff = ANNOUNCE_BACKOFF_FIRST
        self.restored_at: float | None = None  # when a restarted requester rebuilt it from the store

    @classmethod
    def new(cls, sweep: Sweep, node_id: str) -> SweepMachine:
        return cls(sweep, node_id, states=[JobState.PENDING] * sweep.count, attempts=[0] * sweep.count,
                   pending=list(range(sweep.count)))

    @classmethod
    def restored(cls, sweep: Sweep, node_id: str, rows: Sequence[IndexRow], now: float, *,
                 restarted: bool = False) -> SweepMachine:
        """From the store's index rows (after a ``restarted`` requester's start, or to retry an ended sweep):
        indexes that were running stay with their node for one lease, as it may still report them."""
        machine = cls(sweep, node_id, states=[r[1] for r in rows], attempts=[r[3] for r in rows],
                      retries=[r[5] for r in rows], pending=[r[0] for r in rows if r[1] is JobState.PENDING],
                      next_announce=now)
        machine.restored_at = now if restarted else None
        for index, state, _, _, node, _ in rows:
            if state is JobState.RUNNING and node:
                machine.claims.setdefault(f"{RESTORED}{node}", Lease(node, set(), now, now)).indexes.add(index)
        return machine

    def admit(self, nodes: Sequence[NodeInfo]) -> list[Event]:
        """A new sweep as it is first written: failed at once when no known node could run it."""
        at = self.sweep.created_at
        impossible = never_runnable(self.sweep.spec.job, nodes)
        if impossible:
            self.sweep = self.sweep.model_copy(update={"state": JobState.FAILED, "reason": impossible,
                                                       "counts": {JobState.FAILED: self.sweep.count}})
        return [self.event(at, EventKind.CREATED, f"{self.sweep.count} indexes"),
                self.event(at, EventKind.FAILED if impossible else EventKind.ANNOUNCED, impossible or "")]

    def event(self, at: float, kind: EventKind, message: str = "", node: str | None = None) -> Event:
        return Event(job_id=self.sweep.id, at=at, kind=kind, node_id=node or self.node_id, message=message)

    def _move(self, i: int, state: JobState, reason: str, now: float, node: str | None = None,
              result: RunResult | None = None) -> IndexRecord:
        """Move index ``i`` to ``state`` (the sweep's counts follow); its record as the store keeps it."""
        counts = Counter(self.sweep.counts)
        counts[self.states[i]] -= 1
        counts[state] += 1
        self.states[i] = state
        self.sweep = self.sweep.model_copy(update={"counts": {k: v for k, v in counts.items() if v}})
        return IndexRecord(index=i, state=state, node_id=node, reason=reason, attempts=self.attempts[i],
                           retries=self.retries[i], result=result, updated_at=now)

    def _touched(self, now: float) -> Sweep:
        """The sweep as it is written when only its indexes changed."""
        return self.sweep.model_copy(update={"updated_at": now, "revision": self.sweep.revision + 1})

    def held_by(self, peer: str) -> int:
        """The indexes ``peer`` holds: granted to its claims and not reported, or its result awaiting others'."""
        granted = sum(len(c.indexes) for c in self.claims.values() if c.node == peer)
        return granted + sum(1 for nodes in self.proposals.values() if peer in nodes)

    def unclaimed(self) -> int:
        """Pending indexes, about (a heap may still hold an index that has moved on)."""
        return len(self.pending) + sum(map(len, self.awaiting.values()))

    def unfinished(self) -> int:
        return self.sweep.counts.get(JobState.PENDING, 0) + self.sweep.counts.get(JobState.RUNNING, 0)

    def announced(self, now: float) -> None:
        self.next_announce, self.backoff = announce_backoff(self.backoff, now)

    # -- the owner -------------------------------------------------------------------------------

    def cancel(self, reason: str, now: float) -> Changes:
        p = Changes(now)
        self._finish(p, JobState.CANCELLED, reason, [], [])
        return p

    def retry(self, now: float) -> Changes:
        """Put failed indexes back to run (attempts and retries start again), and a cancelled sweep's cancelled
        ones: a failed sweep runs again, a cancelled one resumes."""
        p = Changes(now)
        ended = {JobState.FAILED} | ({JobState.CANCELLED} if self.sweep.state is JobState.CANCELLED else set())
        failed = [i for i, s in enumerate(self.states) if s in ended]
        if not failed:
            return p
        for i in failed:
            self.attempts[i] = self.retries[i] = 0  # its proposals went when it failed
        records = [self._back_to_pending(i, "retried", now) for i in failed]
        message = f"{len(failed)} {' or '.join(sorted(s.value for s in ended))} indexes put back to run"
        again = self.sweep.state in (JobState.FAILED, JobState.CANCELLED)
        self.sweep = self.sweep.transition(JobState.RUNNING, message, now) if again else self._touched(now)
        p.save(sweep=self.sweep, indexes=records, events=[self.event(now, EventKind.RETRIED, message)])
        self.backoff, self.next_announce = ANNOUNCE_BACKOFF_FIRST, now
        return p

    # -- claims from compute nodes ----------------------------------------------------------------

    def claim(self, peer: str, msg: Claim, now: float, *, able: Collection[str],
              quarantined: bool, room: int | None = None) -> tuple[Reply, Changes]:
        """A node's claim (signature already checked): record its reports, grant it more indexes. ``able``: the
        known nodes that could run the sweep's indexes (no claim takes more than its share); ``quarantined``:
        the sender's reports were refused too often, it gets nothing more; ``room``: on probation, how many
        more it may hold (``trust.PROBATION_WORK``), counted before this claim's reports."""
        p = Changes(now)
        p.counts["claims"] += 1
        if quarantined:
            return self._quarantined(p, peer, msg), p
        view, restored = self._view(peer, msg, now)
        check = check_claim(peer, msg, view)
        events = self._refused(p, peer, msg, check) if check.refused or check.whole else []
        if check.whole:
            if events:
                p.save(events=events)
            return Reply(ok=not check.against_sender, verdict="rejected", reason=check.whole), p
        claim = self.claims.get(msg.claim_id)
        if claim is None:  # a new claim, or our restart forgot it: it adopts what its node held then
            held = self.claims.pop(restored).indexes if restored is not None else set()
            claim = self.claims[msg.claim_id] = Lease(peer, held, now, now)
        claim.heard = now
        if check.results:
            claim.progressed = now
        p.counts["repeated_results"] += check.repeated
        spec = self.sweep.spec
        records: list[IndexRecord] = []
        winner = None
        for r in check.results:
            claim.indexes.discard(r.index)
            claim.reported.add(r.index)
            p.counts["results"] += 1
            if self.states[r.index].is_terminal:  # held indexes are running; kept for safety
                p.counts["late_results"] += 1
                continue
            record = self._outcome(p, r, peer, able, events)
            records.append(record)
            if record.state is JobState.COMPLETED and spec.success == "any" and winner is None \
                    and spec.is_hit(record.result or RunResult()):
                winner = r.index
        for i in check.released:
            claim.indexes.discard(i)
            if self.states[i] is JobState.RUNNING:
                # not an attempt (a node giving back and claiming again must not spend an index's attempts unrun);
                # another node gets it first, so one node cannot churn it either (each round is two writes)
                self.attempts[i] = max(0, self.attempts[i] - 1)
                self._reported(i, peer, now)
                records.append(self._back_to_pending(i, "given back unrun", now))
        if winner is not None:
            self._finish(p, JobState.COMPLETED, f"index {winner} succeeded first", records, events, winner=winner)
            return Reply(verdict="rejected", reason="the sweep is completed"), p
        if self._end_if_done(p, records, events):
            return Reply(verdict="rejected", reason=f"the sweep is {self.sweep.state.value}"), p
        want = 0 if check.against_sender else msg.want  # a liar gets none
        if room is not None:  # what it gave back or reported now is freed, unless its result awaits others'
            freed = len(check.released) + sum(1 for r in check.results if peer not in self.proposals.get(r.index, ()))
            want = min(want, room + freed)
        granted = self._grant(peer, claim, want, able, now)
        records += [self._move(i, JobState.RUNNING, f"running on node {peer[-8:]}", now, peer) for i in granted]
        ranges = compress(granted)
        if granted:
            named = sweep_rules.listed(ranges, 20)
            events.append(self.event(now, EventKind.CLAIMED, f"{len(granted)} indexes: {named}", peer))
        if self.sweep.state is JobState.PENDING and granted:
            self.sweep = self.sweep.transition(JobState.RUNNING, "running", now)
        elif records:
            self.sweep = self._touched(now)
        if records or events:  # granted indexes have records too
            p.save(sweep=self.sweep if records else None, indexes=records, events=events)
        if not claim.indexes and not claim.reported:
            del self.claims[msg.claim_id]  # held nothing, reported nothing: nothing to remember
        return Reply(verdict="accepted", ranges=ranges, reason=check.reason()), p

    def _grant(self, peer: str, claim: Lease, want: int, able: Collection[str], now: float) -> list[int]:
        """Pending indexes for ``claim``, lowest first, at most its share (guided self-scheduling); the caller
        moves them to running."""
        granted, passed = [], []
        heaps = [heap for ran, heap in self.awaiting.items() if peer not in ran] + [self.pending]
        # a node's share counts all its claims: opening claim after claim gets it no more
        held = sum(len(c.indexes) for c in self.claims.values() if c.node == peer and c is not claim)
        share = max(1, -(-self.unclaimed() // max(1, len(able)))) - held
        # the other able nodes running indexes of this sweep: a claim that holds none (a heartbeat) waits for nothing
        running = {c.node for c in self.claims.values() if c.indexes and c.node in able} - {peer}
        while len(granted) < min(want, share) and (heap := min(filter(None, heaps), key=lambda h: h[0], default=None)):
            i = heapq.heappop(heap)
            if self.states[i] is not JobState.PENDING:
                continue
            errored_here = i in self.errors and not may_grant(
                peer, self.errors[i][1], able, now - self.errors[i][0], lost=self.lost.get(i, Counter())[peer],
                others_claiming=bool(running - self.errors[i][1].keys() - self.proposals.get(i, {}).keys()))
            # passed over: it errored on this node (another one runs it), it is a retry waiting out its backoff,
            # or this node's result for it awaits another node's
            if errored_here or self.not_before.get(i, now) > now or peer in self.proposals.get(i, ()):
                passed.append((heap, i))
            else:
                granted.append(i)
        for heap, i in passed:
            heapq.heappush(heap, i)
        self.awaiting = {ran: heap for ran, heap in self.awaiting.items() if heap}
        granted.sort()
        for i in granted:
            self.not_before.pop(i, None)
            self.granted_at[i] = now
            self.attempts[i] += 1
            claim.indexes.add(i)
        if granted:
            claim.progressed = now
        return granted

    def _view(self, peer: str, msg: Claim, now: float) -> tuple[ClaimView, str | None]:
        """The claim a message names, as the rules see it; and the restored claim it would adopt."""
        claim = self.claims.get(msg.claim_id)
        if claim is not None:
            return ClaimView(holder=claim.node, held=claim.indexes, reported=claim.reported), None
        if msg.claim_id in self.expired:
            return ClaimView(holder=self.expired[msg.claim_id], expired=True), None
        # a claim we do not know within two leases of our restart may be one we forgot, or whose batch we wrote
        # and could not answer: its refusals are forgiven
        forgiven = self.restored_at is not None and now - self.restored_at <= 2 * self.sweep.spec.job.deadlines.silence
        restored = f"{RESTORED}{peer}"
        if restored in self.claims:
            return ClaimView(held=self.claims[restored].indexes, forgiven=forgiven), restored
        # the claim it held when we restarted lapsed before it reached us again
        return ClaimView(expired=bool(msg.results) and restored in self.expired, forgiven=forgiven), None

    def _refused(self, p: Changes, peer: str, msg: Claim, check: ClaimCheck) -> list[Event]:
        """Count a refusal, hold it against the sender when it is evidence, and describe the first few."""
        p.counts["refused_results"] += len(check.refused)
        p.counts["refused_claims"] += bool(check.whole)
        text = f"claim {msg.claim_id[:40]} of node {peer[-8:]}: {check.reason()}"
        log.info("sweep %s: %s", self.sweep.id, text)  # penalize() warns when it is held against the node
        if check.against_sender:
            p.counts["penalties"] += 1
            p.penalties.append((peer, f"sweep {self.sweep.id}: {text}"))
        return self._bounded_event(p.now, EventKind.RESULTS_REJECTED, text, peer)

    def _bounded_event(self, now: float, kind: EventKind, text: str, peer: str) -> list[Event]:
        """A refused or outvoted report's event, or a node's error: only the first MAX_KIND_EVENTS of a kind."""
        if self.bounded_events[kind] >= MAX_KIND_EVENTS:
            return []
        self.bounded_events[kind] += 1
        return [self.event(now, kind, text, peer)]

    def _quarantined(self, p: Changes, peer: str, msg: Claim) -> Reply:
        """A quarantined node gets nothing more; a claim it holds ends and its indexes run elsewhere."""
        p.counts["quarantined_claims"] += 1
        claim = self.claims.get(msg.claim_id)
        if claim is not None and claim.node == peer:
            del self.claims[msg.claim_id]
            events: list[Event] = []
            records = self._take_back(claim, f"node {peer[-8:]} is quarantined", p.now, events)
            self._save_taken_back(p, records, events)
        return Reply(verdict="rejected", reason="quarantined: too many of its reports were refused")

    def _outcome(self, p: Changes, r: IndexResult, peer: str, able: Collection[str],
                 events: list[Event]) -> IndexRecord:
        """The index's new record for a reported outcome (updates the in-memory state)."""
        i, now = r.index, p.now
        if r.result is not None and r.error is None:
            verified = self._verified(p, i, peer, r.result, able, events)
            if isinstance(verified, IndexRecord):
                return verified
            words, agreeing = verified
            _, reports = self.errors.pop(i, (now, {}))
            self.lost.pop(i, None)
            if trust.corroborated(agreeing, self.node_id, pinned=bool(self.sweep.spec.job.selector)):
                for node in contradicted(reports, peer, self.sweep.spec.job):
                    p.counts["errors_contradicted"] += 1
                    p.penalties.append((node, f"sweep {self.sweep.id}: reported an error for index {i}, "
                                              f"which node {peer[-8:]} ran to a result"))
            if r.result.exit_code != 0:
                return self._fail_or_retry(i, peer, f"exit code {r.result.exit_code}{words}", now, r.result)
            return self._move(i, JobState.COMPLETED, f"completed{words}", now, peer, r.result)
        error = r.error or "no result"
        reports = self._reported(i, peer, now)
        reports[peer] = report(error, r.retryable, self.sweep.spec.job)
        witnessed = trust.timeout_witnessed(r.error, self.sweep.spec.job, self.granted_at.get(i, now), now,
                                            self.sweep.spec.confidence)
        if witnessed or error_confirmed(reports, able, self.sweep.spec.confidence):
            p.counts["errors_confirmed"] += 1
            record = self._fail_or_retry(i, peer, error, now)
        else:
            p.counts["errors_run_again"] += 1
            record = self._run_again_or_fail(i, peer, f"node {peer[-8:]}: {error}", now)
        # the record's reason is overwritten once the index runs again: the event keeps what happened
        events += self._bounded_event(now, EventKind.ERROR, f"index {i}: {record.reason}", peer)
        return record

    def _verified(self, p: Changes, i: int, peer: str, result: RunResult, able: Collection[str],
                  events: list[Event]) -> tuple[str, set[str]] | IndexRecord:
        """Whether ``peer``'s result for index ``i`` counts: with the sweep's ``confidence`` k, once k distinct
        nodes' results agree (``trust.verify``). Returns the words its reason adds and the agreeing nodes, else
        the index's record: pending, for a node that has not run it, or failed once 2k - 1 nodes, or every
        ``able`` one, disagreed. A node outvoted by the verified result is held to account as a job's would be."""
        k = self.sweep.spec.confidence
        if k <= 1:
            return "", {peer}
        proposed = self.proposals.setdefault(i, {})
        proposed[peer] = result.digest()
        verdict = trust.verify(proposed, k)
        if verdict.verified:
            del self.proposals[i]
            credited = trust.credited(verdict.accepted, self.sweep.spec.job, outvoted=verdict.rejected)
            if credited:
                p.credits += verdict.accepted
            for node in verdict.rejected:
                text = f"index {i}: its result differs from the one {len(verdict.accepted)} nodes agreed on"
                p.counts["results_outvoted"] += 1
                if credited:
                    p.penalties.append((node, f"sweep {self.sweep.id}: {text}"))
                events += self._bounded_event(p.now, EventKind.RESULTS_REJECTED, f"node {node[-8:]}: {text}", node)
            return f", {verdict.reason}", set(verdict.accepted)
        if len(proposed) < 2 * k - 1 and not (len(proposed) > 1 and set(able) <= proposed.keys()):
            agreeing = max(Counter(proposed.values()).values())
            return self._back_to_pending(i, f"{agreeing} of the {k} agreeing results it needs; another node "
                                            "runs it", p.now, awaiting=frozenset(proposed))
        del self.proposals[i]
        agreed = len(set(proposed.values())) == 1  # every able node ran it, and they are fewer than k
        reason = f"could not verify: the {len(proposed)} nodes able to run it agree, and it needs {k}" if agreed \
            else verdict.reason
        return self._fail_or_retry(i, peer, reason, p.now)

    def _run_again_or_fail(self, i: int, node: str, why: str, now: float) -> IndexRecord:
        """An index lost for reasons of its node: back to pending, unless it has had its attempts (runs
        that proposed a result awaiting others are not counted). Each loss makes the node wait longer before it
        may run the index again (``may_grant``)."""
        self.lost.setdefault(i, Counter())[node] += 1
        if self.attempts[i] - len(self.proposals.get(i, ())) < MAX_ATTEMPTS:
            return self._back_to_pending(i, f"{why}; will run again", now)
        return self._fail_or_retry(i, node, f"gave up after {self.attempts[i]} attempts: {why}", now)

    def _fail_or_retry(self, i: int, node: str, reason: str, now: float, result: RunResult | None = None
                       ) -> IndexRecord:
        """An index whose run failed (a non-zero exit, a confirmed error, its attempts spent): failed, or back
        to pending when ``retry_after`` says, its attempts and the errors nodes reported for it counted afresh."""
        self.errors.pop(i, None)
        self.lost.pop(i, None)
        self.proposals.pop(i, None)
        reason, delay = retry_after(self.retries[i], self.sweep.spec.job, reason, result)
        if delay is None:
            return self._move(i, JobState.FAILED, reason, now, node, result)
        self.retries[i] += 1
        self.attempts[i] = 0
        self.not_before[i] = now + delay
        retries = f"retry {self.retries[i]} of {self.sweep.spec.job.retries} in {delay:g} s"
        return self._back_to_pending(i, f"{reason} on node {node[-8:]}; {retries}", now, due=now + delay)

    def _back_to_pending(self, i: int, reason: str, now: float, *, due: float | None = None,
                         awaiting: frozenset[str] | None = None) -> IndexRecord:
        """``due``: when it may run again (a retry's backoff); the next announcement is then at the latest.
        ``awaiting``: the nodes whose results for it await confirmation, none of which may run it again."""
        heapq.heappush(self.pending if awaiting is None else self.awaiting.setdefault(awaiting, []), i)
        self.backoff = ANNOUNCE_BACKOFF_FIRST
        self.next_announce = min(self.next_announce, now + TICK if due is None else due)
        return self._move(i, JobState.PENDING, reason, now)

    # -- the clock and the end --------------------------------------------------------------------

    def tick(self, now: float) -> Changes:
        """Leases: a claim silent for the template's ``deadlines.silence``, or reporting none of the indexes it
        holds within one index's ``result_deadline`` (a live lease must not hold them for good), loses them."""
        p = Changes(now)
        silence, deadline = self.sweep.spec.job.deadlines.silence, self.sweep.spec.job.result_deadline()
        records, events = [], []
        for claim_id, claim in list(self.claims.items()):
            if now - claim.heard > silence:
                why = f"node {claim.node[-8:]} silent for {now - claim.heard:.0f} s"
            elif claim.indexes and now - claim.progressed > deadline:
                why = f"node {claim.node[-8:]} reported none of its {len(claim.indexes)} indexes within {deadline:g} s"
            else:
                continue
            del self.claims[claim_id]
            self.expired[claim_id] = claim.node
            while len(self.expired) > MAX_EXPIRED:
                self.expired.popitem(last=False)
            records += self._take_back(claim, why, now, events)
        self._save_taken_back(p, records, events)
        p.announce = not p.finished and self.unclaimed() > 0 and now >= self.next_announce
        return p

    def _take_back(self, claim: Lease, why: str, now: float, events: list[Event]) -> list[IndexRecord]:
        """The indexes of a lapsed claim, each lost as a retryable error of its node is: another node runs it
        next (``may_grant``), or one node claiming and falling silent five times failed it alone."""
        records = []
        for i in sorted(claim.indexes):
            if self.states[i] is JobState.RUNNING:
                self._reported(i, claim.node, now)
                records.append(self._run_again_or_fail(i, claim.node, why, now))
        if records:
            named = sweep_rules.listed(compress(r.index for r in records), 20)
            taken = f"{why}; {len(records)} indexes taken back: {named}"
            events += self._bounded_event(now, EventKind.ERROR, taken, claim.node)
        return records

    def _reported(self, i: int, node: str, now: float) -> dict[str, str | None]:
        """``node`` gave index ``i`` up (an error, or it lapsed there or was given back): another node runs it
        first (``may_grant``), whose patience counts from this, the last report. Returns the reports so far."""
        reports = self.errors[i][1] if i in self.errors else {}
        reports.setdefault(node, None)
        self.errors[i] = (now, reports)
        return reports

    def _save_taken_back(self, p: Changes, records: list[IndexRecord], events: list[Event]) -> None:
        """Record indexes taken back from a claim (ending the sweep if that was all it waited for)."""
        if records and not self._end_if_done(p, records, events):
            self.sweep = self._touched(p.now)
            p.save(sweep=self.sweep, indexes=records, events=events)

    def _end_if_done(self, p: Changes, records: list[IndexRecord], events: list[Event]) -> bool:
        """End the sweep when every index has ended, or more failed than ``max_failures`` lets it go on with."""
        counts, spec, unfinished = self.sweep.counts, self.sweep.spec, self.unfinished()
        failed, completed = counts.get(JobState.FAILED, 0), counts.get(JobState.COMPLETED, 0)
        too_many = spec.max_failures is not None and failed > spec.max_failures
        if unfinished and not too_many:
            return False
        if unfinished:
            reason = (f"stopped once {failed} indexes had failed (max_failures {spec.max_failures}); "
                      f"{completed} completed, {unfinished} not run")
            self._finish(p, JobState.FAILED, reason, records, events)
        elif spec.success == "any":
            check = f" with a non-empty output {spec.success_output!r}" if spec.success_output else ""
            reason = f"no index succeeded{check}: {completed} completed without it, {failed} failed"
            self._finish(p, JobState.FAILED, reason, records, events)
        elif failed:
            self._finish(p, JobState.FAILED, f"{failed} of {self.sweep.count} indexes failed", records, events)
        else:
            self._finish(p, JobState.COMPLETED, f"all {self.sweep.count} indexes completed", records, events)
        return True

    def _finish(self, p: Changes, end: JobState, reason: str, records: list[IndexRecord], events: list[Event], *,
                winner: int | None = None) -> None:
        """End the sweep: what has not finished is cancelled, here and on every node holding a claim."""
        unfinished = self.unfinished()
        counts = {s: n for s, n in self.sweep.counts.items() if s not in (JobState.PENDING, JobState.RUNNING)}
        if unfinished:
            counts[JobState.CANCELLED] = counts.get(JobState.CANCELLED, 0) + unfinished
        sweep = self.sweep.model_copy(update={"counts": counts}).transition(end, reason, p.now, winner=winner)
        p.save(sweep=sweep, indexes=records, events=[*events, self.event(p.now, ending(end), reason)],
               end_unfinished=(JobState.CANCELLED, f"sweep {end.value}") if unfinished else None)
        self.sweep = sweep
        p.sends += [Send(claim.node, Cancel(job_id=self.sweep.id, execution_id=claim_id, reason="the sweep has ended"))
                    for claim_id, claim in self.claims.items() if claim.indexes and not claim_id.startswith(RESTORED)]
        self.claims.clear()
        p.finished = True
