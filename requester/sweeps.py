"""The requester's side of sweeps: record, announce, grant index ranges, collect results, end.

A sweep is announced on gossip as one message (repeated with backoff while indexes are
unclaimed). A compute node that can run its template sends ``Claim`` messages: each carries
the results of indexes it finished and how many more it wants; the reply grants ranges of
pending indexes. Messages grow with nodes and time, never with indexes.

A claim is a lease: a node that stays silent for the template's ``deadlines.silence`` loses
the indexes it held, and they are granted again. A claim's report counts only for indexes
granted to that claim and still held by it (``requester.sweep_rules``): anything else is
refused, named in the reply, counted, and held against the sender (``penalize``). An error
sends its index to another node; it fails the index only once another node confirms it.
"""

from __future__ import annotations

import base64
import heapq
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from jobs import DuplicateKey, Event, EventKind, JobState, RunResult, Unreachable
from jobs.messages import Cancel, Claim, IndexResult, NodeInfo, Peers, Reply, SweepAnnounce
from jobs.sweep import IndexRecord, Sweep, SweepSpec, compress, index_ranges
from jobs.views import SweepDescription
from requester.selection import never_runnable
from requester.service import IdempotencyConflict, UnknownJob
from requester.sweep_rules import ClaimCheck, ClaimView, check_claim, contradicted, error_confirmed, may_grant

if TYPE_CHECKING:
    from node.store import Store

log = logging.getLogger("shoal.requester")

TICK = 0.25  # how often leases and re-announcements are checked
ANNOUNCE_BACKOFF_MAX = 30.0
MAX_ATTEMPTS = 5  # runs of one index that failed for reasons of the node, before it fails for good
MAX_RANGES = 1000  # in one description; the rest is paged through the index list
CANCEL_TIMEOUT = 5.0
MAX_EXPIRED = 1000  # lapsed claim ids remembered per sweep: their late reports are refused, not held against them
MAX_REFUSAL_EVENTS = 20  # refusal events written per sweep; the rest only count (a liar cannot grow the store)


@dataclass
class _Claim:
    node: str
    addrs: list[str]
    indexes: set[int]  # granted and not reported yet
    heard: float
    reported: set[int] = field(default_factory=set)  # a batch re-sent after a lost reply repeats these


@dataclass
class _Live:
    """A sweep that is not finished, and what drives it (rebuilt from the store on restart)."""

    sweep: Sweep
    states: list[JobState]
    attempts: list[int]
    pending: list[int]  # a heap: the lowest indexes are granted first
    claims: dict[str, _Claim] = field(default_factory=dict)
    expired: OrderedDict[str, str] = field(default_factory=OrderedDict)  # claim id -> node, lease lapsed
    errors: dict[int, dict[str, bool]] = field(default_factory=dict)  # index -> node -> retryable, unfinished ones
    errored_at: dict[int, float] = field(default_factory=dict)  # index -> when it first errored
    refusal_events: int = 0
    lock: trio.Lock = field(default_factory=trio.Lock)
    done: trio.Event = field(default_factory=trio.Event)
    next_announce: float = 0.0
    backoff: float = 1.0

    def set_state(self, index: int, state: JobState) -> None:
        counts = dict(self.sweep.counts)
        old = self.states[index]
        counts[old] = counts.get(old, 0) - 1
        counts[state] = counts.get(state, 0) + 1
        self.states[index] = state
        self.sweep = self.sweep.model_copy(update={"counts": {k: v for k, v in counts.items() if v}})

    def unfinished(self) -> int:
        return self.sweep.counts.get(JobState.PENDING, 0) + self.sweep.counts.get(JobState.RUNNING, 0)


class SweepService:
    def __init__(self, *, peers: Peers, store: Store, known_nodes: Callable[[], list[NodeInfo]],
                 clock: Callable[[], float] = time.time,
                 penalize: Callable[[str, str], None] = lambda peer, reason: None,
                 quarantined: Callable[[str], bool] = lambda peer: False) -> None:
        self.peers = peers
        self.store = store
        self.known_nodes = known_nodes
        self.clock = clock
        self.penalize = penalize  # (peer, why): a refused report or a contradicted error counts against it
        self.quarantined = quarantined  # a quarantined peer gets no indexes
        self._live: dict[str, _Live] = {}
        self._nursery: trio.Nursery | None = None
        self.counters = {"claims": 0, "announcements": 0, "results": 0, "late_results": 0,
                         "refused_results": 0, "refused_claims": 0, "repeated_results": 0, "penalties": 0,
                         "errors_run_again": 0, "errors_confirmed": 0, "errors_contradicted": 0,
                         "quarantined_claims": 0}

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            await self._restore()
            nursery.start_soon(self._tick_loop)
            task_status.started()

    async def _restore(self) -> None:
        """Indexes that were running stay with their node for one lease: it may still report them."""
        now = self.clock()
        for sweep in await self.store.live_sweeps():
            rows = await self.store.index_states(sweep.id)
            live = _Live(sweep=sweep, states=[r[1] for r in rows], attempts=[r[3] for r in rows],
                         pending=[r[0] for r in rows if r[1] is JobState.PENDING], next_announce=now)
            for index, state, _, _, node in rows:
                if state is JobState.RUNNING and node:
                    live.claims.setdefault(f"restored:{node}", _Claim(node, [], set(), now)).indexes.add(index)
            self._live[sweep.id] = live
        if self._live:
            log.info("resuming %d live sweeps", len(self._live))

    def _event(self, sweep_id: str, kind: EventKind, message: str = "", node: str | None = None) -> Event:
        return Event(job_id=sweep_id, at=self.clock(), kind=kind, node_id=node or self.peers.node_id,
                     message=message)

    # -- API side --------------------------------------------------------------------------------

    async def submit(self, spec: SweepSpec, owner: str, idempotency_key: str | None = None) -> tuple[Sweep, bool]:
        """Record and announce a sweep; the same idempotency key returns the sweep made first."""
        digest = spec.digest()
        if idempotency_key is not None:
            found = await self.store.find_idempotent_sweep(owner, idempotency_key)
            if found is not None:
                sweep, known = found
                if known != digest:
                    raise IdempotencyConflict(f"idempotency key {idempotency_key!r} was used for another sweep")
                return sweep, False
        now = self.clock()
        count = spec.count
        sweep = Sweep(id=f"s-{uuid.uuid4().hex}", owner=owner, spec=spec, count=count, requester=self.peers.node_id,
                      counts={JobState.PENDING: count}, created_at=now, updated_at=now)
        events = [self._event(sweep.id, EventKind.CREATED, f"{count} indexes")]
        impossible = never_runnable(spec.job, self.known_nodes())
        if impossible:
            sweep = sweep.model_copy(update={"state": JobState.FAILED, "reason": impossible,
                                             "counts": {JobState.FAILED: count}})
            events.append(self._event(sweep.id, EventKind.FAILED, impossible))
        else:
            events.append(self._event(sweep.id, EventKind.ANNOUNCED))
        try:
            await self.store.save_sweep(new_sweep=sweep, events=events, idempotency_key=idempotency_key,
                                        request_digest=digest)
        except DuplicateKey:  # a concurrent submit with the same key won the unique index
            if idempotency_key is not None:
                return await self.submit(spec, owner, idempotency_key)
            raise
        if not sweep.state.is_terminal:
            live = _Live(sweep=sweep, states=[JobState.PENDING] * count, attempts=[0] * count,
                         pending=list(range(count)))
            self._live[sweep.id] = live
            await self._announce(live)
        return sweep, True

    async def get(self, sweep_id: str) -> Sweep:
        live = self._live.get(sweep_id)
        sweep = live.sweep if live else await self.store.get_sweep(sweep_id)
        if sweep is None:
            raise UnknownJob(sweep_id)
        return sweep

    async def describe(self, sweep_id: str) -> SweepDescription:
        sweep = await self.get(sweep_id)
        rows = await self.store.index_states(sweep_id)
        ranges = index_ranges((i, s, r) for i, s, r, _, _ in rows)
        return SweepDescription(sweep=sweep, ranges=ranges[:MAX_RANGES], ranges_truncated=len(ranges) > MAX_RANGES)

    async def wait(self, sweep_id: str, timeout: float) -> None:
        live = self._live.get(sweep_id)
        if live is not None:
            with trio.move_on_after(timeout):
                await live.done.wait()

    async def cancel(self, sweep_id: str, reason: str = "cancelled by its owner") -> Sweep:
        live = self._live.get(sweep_id)
        if live is None:
            return await self.get(sweep_id)
        async with live.lock:
            if not live.sweep.state.is_terminal:
                await self._finish(live, JobState.CANCELLED, reason, [], [])
            return live.sweep

    async def retry(self, sweep_id: str) -> Sweep:
        """Put failed indexes back to run (attempts start again); a failed sweep runs again."""
        live = self._live.get(sweep_id)
        if live is None:
            sweep = await self.get(sweep_id)
            if sweep.state is not JobState.FAILED or not sweep.counts.get(JobState.FAILED):
                return sweep
            rows = await self.store.index_states(sweep_id)
            live = _Live(sweep=sweep, states=[r[1] for r in rows], attempts=[r[3] for r in rows], pending=[])
            self._live[sweep_id] = live
        async with live.lock:
            failed = [i for i, s in enumerate(live.states) if s is JobState.FAILED]
            if not failed:
                return live.sweep
            now = self.clock()
            records = []
            for i in failed:
                live.set_state(i, JobState.PENDING)
                live.attempts[i] = 0
                heapq.heappush(live.pending, i)
                records.append(IndexRecord(index=i, state=JobState.PENDING, reason="retried", updated_at=now))
            message = f"{len(failed)} failed indexes put back to run"
            sweep = live.sweep
            if sweep.state is JobState.FAILED:
                sweep = sweep.transition(JobState.RUNNING, message, now)
            else:
                sweep = sweep.model_copy(update={"updated_at": now, "revision": sweep.revision + 1})
            await self.store.save_sweep(sweep=sweep, indexes=records,
                                        events=[self._event(sweep_id, EventKind.RETRIED, message)])
            live.sweep = sweep
            live.backoff, live.next_announce = 1.0, now
            return sweep

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for live in self._live.values():
            out[live.sweep.state.value] = out.get(live.sweep.state.value, 0) + 1
        return out

    # -- claims from compute nodes ----------------------------------------------------------------

    async def handle(self, peer: str, msg: Claim) -> Reply:
        live = self._live.get(msg.sweep_id)
        if live is None:
            return Reply(verdict="rejected", reason="the sweep is finished or unknown here")
        if not self._signed_by(peer, msg):
            log.warning("claim %s from %s has a bad signature", msg.claim_id, peer)
            return Reply(ok=False, verdict="rejected", reason="the claim's signature does not match the node key")
        async with live.lock:
            if live.sweep.state.is_terminal:
                return Reply(verdict="rejected", reason=f"the sweep is {live.sweep.state.value}")
            return await self._on_claim(live, peer, msg)

    def _signed_by(self, peer: str, msg: Claim) -> bool:
        try:
            signature = base64.urlsafe_b64decode(msg.signature)
        except ValueError:
            return False
        return self.peers.verify(peer, msg.statement(), signature)

    async def _on_claim(self, live: _Live, peer: str, msg: Claim) -> Reply:
        self.counters["claims"] += 1
        now = self.clock()
        if self.quarantined(peer):
            return await self._quarantined(live, peer, msg, now)
        view, restored = self._view(live, peer, msg)
        check = check_claim(peer, msg, view)
        events: list[Event] = []
        if check.refused or check.whole:
            events += self._refused(live, peer, msg, check)
        if check.whole:
            if events:
                await self.store.save_sweep(events=events)
            return Reply(ok=not check.against_sender, verdict="rejected", reason=check.whole)
        claim = live.claims.get(msg.claim_id)
        if claim is None:  # a new claim, or our restart forgot it: it adopts what its node held then
            claim = _Claim(peer, [], set(), now)
            if restored is not None:
                claim.indexes |= live.claims.pop(restored).indexes
            live.claims[msg.claim_id] = claim
        claim.heard = now
        self.counters["repeated_results"] += check.repeated
        spec = live.sweep.spec
        able = self._able(spec)
        records: list[IndexRecord] = []
        winner = None
        for r in check.results:
            claim.indexes.discard(r.index)
            claim.reported.add(r.index)
            self.counters["results"] += 1
            if live.states[r.index].is_terminal:  # held indexes are running; kept for safety
                self.counters["late_results"] += 1
                continue
            record = self._outcome(live, r, peer, able, now)
            records.append(record)
            if record.state is JobState.COMPLETED and spec.success == "any" and winner is None \
                    and spec.is_hit(record.result or RunResult()):
                winner = r.index
        for i in check.released:
            claim.indexes.discard(i)
            if live.states[i] is JobState.RUNNING:
                records.append(self._back_to_pending(live, i, "given back unrun", now))
        if winner is not None:
            await self._finish(live, JobState.COMPLETED, f"index {winner} succeeded first", records, events,
                               winner=winner)
            return Reply(verdict="rejected", reason="the sweep is completed")
        if live.unfinished() == 0:
            await self._finish_all_done(live, records, events)
            return Reply(verdict="rejected", reason=f"the sweep is {live.sweep.state.value}")
        granted, passed = [], []
        share = max(1, -(-len(live.pending) // max(1, len(able))))  # guided self-scheduling
        want = 0 if check.against_sender else msg.want  # a message that lied gets no new work
        while len(granted) < min(want, share) and live.pending:
            i = heapq.heappop(live.pending)
            if live.states[i] is not JobState.PENDING:
                continue
            if i in live.errors and not may_grant(peer, live.errors[i], able, now - live.errored_at[i]):
                passed.append(i)  # it errored on this node: another one runs it
            else:
                granted.append(i)
        for i in passed:
            heapq.heappush(live.pending, i)
        granted.sort()
        for i in granted:
            live.set_state(i, JobState.RUNNING)
            live.attempts[i] += 1
            claim.indexes.add(i)
            records.append(IndexRecord(index=i, state=JobState.RUNNING, node_id=peer, attempts=live.attempts[i],
                                       reason=f"running on node {peer[-8:]}", updated_at=now))
        ranges = compress(granted)
        if granted:
            events.append(self._event(live.sweep.id, EventKind.CLAIMED,
                                      f"{len(granted)} indexes: " + ", ".join(
                                          f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in ranges[:20]), peer))
        sweep = live.sweep
        if sweep.state is JobState.PENDING and granted:
            sweep = sweep.transition(JobState.RUNNING, "running", now)
        elif records:
            sweep = sweep.model_copy(update={"updated_at": now, "revision": sweep.revision + 1})
        if sweep is not live.sweep or events:
            await self.store.save_sweep(sweep=sweep if sweep is not live.sweep else None, indexes=records,
                                        events=events)
            live.sweep = sweep
        if not claim.indexes and not claim.reported:
            del live.claims[msg.claim_id]  # held nothing, reported nothing: nothing to remember
        return Reply(verdict="accepted", ranges=ranges, reason=check.reason())

    def _view(self, live: _Live, peer: str, msg: Claim) -> tuple[ClaimView, str | None]:
        """The claim a message names, as the rules see it; and the restored claim it would adopt."""
        claim = live.claims.get(msg.claim_id)
        if claim is not None:
            return ClaimView(holder=claim.node, held=claim.indexes, reported=claim.reported), None
        if msg.claim_id in live.expired:
            return ClaimView(holder=live.expired[msg.claim_id], expired=True), None
        restored = f"restored:{peer}"
        if restored in live.claims:
            return ClaimView(held=live.claims[restored].indexes), restored
        # the claim it held when we restarted lapsed before it reached us again
        return ClaimView(expired=bool(msg.results) and restored in live.expired), None

    def _refused(self, live: _Live, peer: str, msg: Claim, check: ClaimCheck) -> list[Event]:
        """Count a refusal, hold it against the sender when it is evidence, and describe the first few."""
        self.counters["refused_results"] += len(check.refused)
        self.counters["refused_claims"] += bool(check.whole)
        text = f"claim {msg.claim_id[:40]} of node {peer[-8:]}: {check.reason()}"
        log.info("sweep %s: %s", live.sweep.id, text)  # penalize() warns when it is held against the node
        if check.against_sender:
            self.counters["penalties"] += 1
            self.penalize(peer, f"sweep {live.sweep.id}: {text}")
        if live.refusal_events >= MAX_REFUSAL_EVENTS:
            return []
        live.refusal_events += 1
        return [self._event(live.sweep.id, EventKind.RESULTS_REJECTED, text, peer)]

    async def _quarantined(self, live: _Live, peer: str, msg: Claim, now: float) -> Reply:
        """A quarantined node gets nothing more; a claim it holds ends and its indexes run elsewhere."""
        self.counters["quarantined_claims"] += 1
        claim = live.claims.get(msg.claim_id)
        if claim is not None and claim.node == peer:
            del live.claims[msg.claim_id]
            records = self._take_back(live, claim, f"node {peer[-8:]} is quarantined", now)
            await self._save_taken_back(live, records, now)
        return Reply(verdict="rejected", reason="quarantined: too many of its reports were refused")

    def _able(self, spec: SweepSpec) -> set[str]:
        """Known nodes that could run the sweep's indexes: no claim takes more than its share."""
        job = spec.job
        return {n.peer_id for n in self.known_nodes() if job.engine.name in n.engines
                and job.resources.fits_in(n.max_per_job) and not self.quarantined(n.peer_id)}

    def _outcome(self, live: _Live, r: IndexResult, peer: str, able: set[str], now: float) -> IndexRecord:
        """The index's new record for a reported outcome (updates the in-memory state)."""
        i = r.index
        reports = live.errors.get(i, {})
        if r.result is not None and r.error is None:
            for node in contradicted(reports, peer):
                self.counters["errors_contradicted"] += 1
                self.penalize(node, f"sweep {live.sweep.id}: reported an error for index {i}, "
                                    f"which node {peer[-8:]} ran to a result")
            self._forget_errors(live, i)
            state = JobState.COMPLETED if r.result.exit_code == 0 else JobState.FAILED
            reason = "completed" if state is JobState.COMPLETED else f"exit code {r.result.exit_code}"
            live.set_state(i, state)
            return IndexRecord(index=i, state=state, node_id=peer, reason=reason, attempts=live.attempts[i],
                               result=r.result, updated_at=now)
        error = r.error or "no result"
        reports = live.errors.setdefault(i, {})
        reports[peer] = r.retryable
        live.errored_at.setdefault(i, now)
        if error_confirmed(reports, able):
            self.counters["errors_confirmed"] += 1
            return self._failed(live, i, peer, error, now)
        self.counters["errors_run_again"] += 1
        return self._run_again_or_fail(live, i, peer, f"node {peer[-8:]}: {error}", now)

    def _run_again_or_fail(self, live: _Live, i: int, node: str, why: str, now: float) -> IndexRecord:
        """An index lost for reasons of its node: back to pending, unless it has had its attempts."""
        if live.attempts[i] < MAX_ATTEMPTS:
            return self._back_to_pending(live, i, f"{why}; will run again", now)
        return self._failed(live, i, node, f"gave up after {live.attempts[i]} attempts: {why}", now)

    @staticmethod
    def _forget_errors(live: _Live, i: int) -> None:
        live.errors.pop(i, None)
        live.errored_at.pop(i, None)

    def _failed(self, live: _Live, i: int, node: str, reason: str, now: float) -> IndexRecord:
        live.set_state(i, JobState.FAILED)
        self._forget_errors(live, i)
        return IndexRecord(index=i, state=JobState.FAILED, node_id=node, reason=reason, attempts=live.attempts[i],
                           updated_at=now)

    def _back_to_pending(self, live: _Live, i: int, reason: str, now: float) -> IndexRecord:
        live.set_state(i, JobState.PENDING)
        heapq.heappush(live.pending, i)
        live.backoff = 1.0
        live.next_announce = min(live.next_announce, now + TICK)
        return IndexRecord(index=i, state=JobState.PENDING, reason=reason, attempts=live.attempts[i], updated_at=now)

    async def _finish_all_done(self, live: _Live, records: list[IndexRecord], events: list[Event]) -> None:
        counts = live.sweep.counts
        failed, completed = counts.get(JobState.FAILED, 0), counts.get(JobState.COMPLETED, 0)
        spec = live.sweep.spec
        if spec.success == "any":
            check = f" with a non-empty output {spec.success_output!r}" if spec.success_output else ""
            reason = f"no index succeeded{check}: {completed} completed without it, {failed} failed"
            await self._finish(live, JobState.FAILED, reason, records, events)
        elif failed:
            await self._finish(live, JobState.FAILED, f"{failed} of {live.sweep.count} indexes failed", records,
                               events)
        else:
            await self._finish(live, JobState.COMPLETED, f"all {live.sweep.count} indexes completed", records, events)

    async def _finish(self, live: _Live, state: JobState, reason: str, records: list[IndexRecord],
                      events: list[Event], *, winner: int | None = None) -> None:
        """End the sweep: what has not finished is cancelled, here and on every node holding a claim."""
        now = self.clock()
        unfinished = live.unfinished()
        end = (JobState.CANCELLED, f"sweep {state.value}") if unfinished else None
        counts = dict(live.sweep.counts)
        if unfinished:
            counts.pop(JobState.PENDING, None)
            counts.pop(JobState.RUNNING, None)
            counts[JobState.CANCELLED] = counts.get(JobState.CANCELLED, 0) + unfinished
        sweep = live.sweep.model_copy(update={"counts": counts}).transition(state, reason, now, winner=winner)
        kind = {JobState.COMPLETED: EventKind.COMPLETED, JobState.FAILED: EventKind.FAILED,
                JobState.CANCELLED: EventKind.CANCELLED}[state]
        events = [*events, self._event(sweep.id, kind, reason)]
        await self.store.save_sweep(sweep=sweep, indexes=records, events=events, end_unfinished=end)
        live.sweep = sweep
        claims = [(cid, c) for cid, c in live.claims.items() if c.indexes and not cid.startswith("restored:")]
        live.claims.clear()
        del self._live[sweep.id]
        live.done.set()
        for claim_id, claim in claims:
            self._spawn(self._cancel_claim, sweep.id, claim_id, claim, now)

    async def _cancel_claim(self, sweep_id: str, claim_id: str, claim: _Claim, since: float) -> None:
        """Tell a node to stop its claim; record how long that took to reach it and what it stopped."""
        message = Cancel(job_id=sweep_id, execution_id=claim_id, reason="the sweep has ended")
        for delay in (0.0, 0.2, 0.5, 1.0):
            await trio.sleep(delay)
            try:
                reply = await self.peers.request(claim.node, message, timeout=CANCEL_TIMEOUT, addrs=claim.addrs)
            except Unreachable:
                continue
            took = (self.clock() - since) * 1000
            text = f"cancel reached node {claim.node[-8:]} after {took:.0f} ms; {reply.stopped} running indexes stopped"
            await self.store.save_sweep(events=[self._event(sweep_id, EventKind.CANCELLED, text, claim.node)])
            return
        log.info("could not cancel claim %s on %s; its lease ends it", claim_id, claim.node)

    # -- announcements and leases ------------------------------------------------------------------

    def _spawn(self, fn, *args) -> None:
        assert self._nursery is not None, "SweepService.run() is not running"
        self._nursery.start_soon(fn, *args)

    async def _announce(self, live: _Live) -> None:
        ann = SweepAnnounce(sweep_id=live.sweep.id, spec=live.sweep.spec, requester=self.peers.node_id,
                            requester_addrs=self.peers.addrs(), pending=len(live.pending))
        live.next_announce = self.clock() + live.backoff
        live.backoff = min(live.backoff * 2, ANNOUNCE_BACKOFF_MAX)
        self.counters["announcements"] += 1
        await self.peers.publish(ann)

    async def _tick_loop(self) -> None:
        while True:
            await trio.sleep(TICK)
            for live in list(self._live.values()):
                try:
                    async with live.lock:
                        if not live.sweep.state.is_terminal:
                            await self._tick(live)
                except Exception:
                    log.exception("sweep %s", live.sweep.id)

    async def _tick(self, live: _Live) -> None:
        now = self.clock()
        silence = live.sweep.spec.job.deadlines.silence
        records = []
        for claim_id, claim in list(live.claims.items()):
            if now - claim.heard <= silence:
                continue
            del live.claims[claim_id]
            live.expired[claim_id] = claim.node
            while len(live.expired) > MAX_EXPIRED:
                live.expired.popitem(last=False)
            records += self._take_back(live, claim, f"node {claim.node[-8:]} silent for {now - claim.heard:.0f} s",
                                       now)
        if records and await self._save_taken_back(live, records, now):
            return
        if live.pending and now >= live.next_announce:
            await self._announce(live)

    def _take_back(self, live: _Live, claim: _Claim, why: str, now: float) -> list[IndexRecord]:
        return [self._run_again_or_fail(live, i, claim.node, why, now)
                for i in sorted(claim.indexes) if live.states[i] is JobState.RUNNING]

    async def _save_taken_back(self, live: _Live, records: list[IndexRecord], now: float) -> bool:
        """Record indexes taken back from a claim; True when that ended the sweep."""
        if not records:
            return False
        if live.unfinished() == 0:
            await self._finish_all_done(live, records, [])
            return True
        sweep = live.sweep.model_copy(update={"updated_at": now, "revision": live.sweep.revision + 1})
        await self.store.save_sweep(sweep=sweep, indexes=records)
        live.sweep = sweep
        return False
