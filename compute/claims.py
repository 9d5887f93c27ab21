"""A node's sweep claims as decisions with no I/O: what to claim, how much to ask for, when to report.

One claim per sweep per node. It reserves as many slots (copies of the template's resources)
as fit, runs one index per slot, and keeps a short queue: each report asks for about as many
indexes as the node finishes in two report intervals, so fast indexes (noop) come in large
ranges and slow ones one at a time (an idle node can then pick up the tail). Reports go out when
results are ready (at most every REPORT_INTERVAL), when the queue runs dry, and as a heartbeat
that keeps the claim's lease. ``compute/service.py`` runs the tasks around these decisions.
"""

from __future__ import annotations

import logging
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field

from compute.capacity import CapacityTracker
from jobs import Execution, JobSpec
from jobs.messages import Cancel, IndexResult, Reply, SweepAnnounce

log = logging.getLogger("shoal.compute")

REPORT_INTERVAL = 0.25
BATCH_BYTES = 128 * 1024  # characters of output per Claim: even at 6 bytes each (JSON escapes) under 1 MiB
MAX_SLOTS = 64
WAITING_TTL = 60.0  # a sweep we had no room for is retried this long after its last announcement
ENDED_KEPT = 1000  # recently ended claims remembered, to answer a late Cancel


@dataclass
class Claim:
    ann: SweepAnnounce
    claim_id: str
    slots: list[str]  # capacity reservations, one per worker
    queue: deque[int] = field(default_factory=deque)
    results: list[IndexResult] = field(default_factory=list)
    running: set[int] = field(default_factory=set)
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    exhausted: bool = False  # the requester had nothing left when we last asked
    stopped: int = 0  # running indexes stopped because the requester ended the claim
    last_sent: float = 0.0
    last_answer: float = 0.0

    def rate(self, now: float) -> float:
        """Indexes finished per second over the last second."""
        while self.finished_at and now - self.finished_at[0] > 1.0:
            self.finished_at.popleft()
        return len(self.finished_at)

    def want(self, now: float) -> int:
        """Enough to keep every slot busy for about two report intervals."""
        target = len(self.slots) + int(self.rate(now) * 2 * REPORT_INTERVAL)
        return max(0, target - len(self.queue) - len(self.running))

    def start_next(self, node_id: str, now: float) -> tuple[int, Execution] | None:
        """The next index to run and its execution (None: the queue is dry, ask for more)."""
        if not self.queue:
            return None
        index = self.queue.popleft()
        self.running.add(index)
        ann = self.ann
        return index, Execution(id=f"{self.claim_id}-{index}", job_id=ann.sweep_id, node_id=node_id,
                                requester=ann.requester, created_at=now, updated_at=now,
                                spec=ann.spec.job_for(index))

    def finished(self, result: IndexResult, now: float) -> None:
        self.running.discard(result.index)
        self.results.append(result)
        self.finished_at.append(now)

    def next_report(self, now: float, heartbeat: float) -> float | None:
        """Seconds until the next report is due (0: now; a finished index may make it sooner), or None
        when the claim is over: the requester has nothing left and we nothing to report."""
        if self.exhausted and not self.queue and not self.running and not self.results:
            return None
        starving = self.want(now) > 0 and not self.queue and not (self.exhausted and self.running)
        since = now - self.last_sent
        if starving or since >= heartbeat or (self.results and since >= REPORT_INTERVAL):
            return 0.0
        return min(heartbeat, REPORT_INTERVAL if self.results else heartbeat) - since

    def take_batch(self, now: float) -> list[IndexResult]:
        """The results that fit in one report (each carries up to 64 KiB of stdout and of stderr)."""
        self.last_sent = now
        size, n = 0, 0
        for r in self.results:
            size += 256 + (len(r.result.stdout) + len(r.result.stderr) if r.result else 0) + len(r.error or "")
            if n and size > BATCH_BYTES:
                break
            n += 1
        batch, self.results = self.results[:n], self.results[n:]
        return batch

    def unsent(self, batch: list[IndexResult]) -> None:
        """The report did not get through: keep its results for the next one."""
        self.results[:0] = batch

    def answered(self, reply: Reply, want: int, now: float) -> list[int] | None:
        """The requester's verdict on a report: the indexes it granted, or None when it ended the claim."""
        self.last_answer = now
        if reply.verdict == "rejected":
            self.stopped = len(self.running)
            return None
        granted = [i for start, end in reply.ranges for i in range(start, end)]
        self.queue.extend(granted)
        self.exhausted = want > 0 and not granted
        return granted


class ClaimBook:
    """Which sweeps this node claims, which wait for room, and which claims the requester ended.

    Args:
        capacity: slots are reserved here, one holder per slot.
        refusal: why the node could never run the sweep's template (None: it could).
        parallel: runs worth starting at once for an engine (None: as many as fit).
    """

    def __init__(self, capacity: CapacityTracker, refusal: Callable[[JobSpec], str | None],
                 parallel: Callable[[str], int | None]) -> None:
        self.capacity = capacity
        self.refusal = refusal
        self.parallel = parallel
        self.claims: dict[str, Claim] = {}  # sweep id -> our claim on it
        self._waiting: dict[str, tuple[SweepAnnounce, float]] = {}  # sweeps we had no room for
        self._ended: OrderedDict[str, int] = OrderedDict()  # recent claims ended by the requester -> stopped

    def running(self) -> int:
        return sum(len(c.running) for c in self.claims.values())

    def announce(self, origin: str, ann: SweepAnnounce, now: float) -> Claim | None:
        """A sweep needs nodes: the claim to start, if any (no room now: it waits for some)."""
        if origin != ann.requester:
            log.warning("dropping sweep announcement %s relayed as if from %s", ann.sweep_id, origin)
            return None
        if ann.sweep_id in self.claims:
            return None  # our claim asks for more by itself
        refusal = self.refusal(ann.spec.job)
        if refusal is not None:
            log.debug("passing over sweep %s: %s", ann.sweep_id, refusal)
            return None
        claim = self._try_claim(ann)
        if claim is None:
            self._waiting[ann.sweep_id] = (ann, now)
        return claim

    def retry_waiting(self, now: float) -> list[Claim]:
        """Capacity may have come free: claim sweeps we passed over for lack of room."""
        started = []
        for sweep_id, (ann, seen) in list(self._waiting.items()):
            if now - seen > WAITING_TTL or sweep_id in self.claims:
                del self._waiting[sweep_id]
            elif (claim := self._try_claim(ann)) is not None:
                del self._waiting[sweep_id]
                started.append(claim)
        return started

    def _try_claim(self, ann: SweepAnnounce) -> Claim | None:
        claim_id = f"c-{uuid.uuid4().hex}"
        need = ann.spec.job.resources
        parallel = self.parallel(ann.spec.job.engine.name) or MAX_SLOTS
        slots: list[str] = []
        while len(slots) < min(MAX_SLOTS, parallel, max(1, ann.pending)):
            holder = f"{claim_id}/{len(slots)}"
            if not self.capacity.try_reserve(holder, need):
                break
            slots.append(holder)
        if not slots:
            return None
        claim = Claim(ann=ann, claim_id=claim_id, slots=slots)
        self.claims[ann.sweep_id] = claim
        return claim

    def cancel(self, peer: str, msg: Cancel) -> tuple[Reply | None, Claim | None]:
        """The requester ended the sweep: the reply, and the claim to stop now (None: not one of ours)."""
        claim = self.claims.get(msg.job_id)
        if claim is None or claim.claim_id != msg.execution_id:
            if msg.execution_id in self._ended:  # the reply to a report ended it first
                return Reply(stopped=self._ended[msg.execution_id]), None
            return None, None
        if claim.ann.requester != peer:
            return Reply(ok=False, reason="only the sweep's requester may do that"), None
        claim.stopped = len(claim.running)
        return Reply(stopped=claim.stopped), claim

    def finish(self, claim: Claim) -> None:
        """The claim is over: forget it, remember how it ended, give back its slots."""
        del self.claims[claim.ann.sweep_id]
        self._ended[claim.claim_id] = claim.stopped
        while len(self._ended) > ENDED_KEPT:
            self._ended.popitem(last=False)
        for holder in claim.slots:
            self.capacity.release(holder)
