"""The compute side of sweeps: claim ranges of indexes, run them, report results in batches.

One claim per sweep per node. It reserves as many slots (copies of the template's resources)
as fit, runs one index per slot, and keeps a short queue: each ``Claim`` message reports the
results gathered since the last one and asks for about as many indexes as the node finishes in
two report intervals, so fast indexes (noop) come in large ranges and slow ones one at a time
(an idle node can then pick up the tail). Messages go out when results are ready (at most every
REPORT_INTERVAL), when the queue runs dry, and as a heartbeat that keeps the claim's lease.

Claims are not written to the store: after a crash the requester's lease returns their indexes
to others. Published results are (``Store.add_published``), so retention can unpin them.
"""

from __future__ import annotations

import base64
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from jobs import Execution, JobSpec, Unreachable
from jobs.messages import Cancel, Claim, IndexResult, Peers, Reply, SweepAnnounce

if TYPE_CHECKING:
    from compute.capacity import CapacityTracker
    from compute.runner import Runner
    from node.store import Store

log = logging.getLogger("shoal.compute")

REPORT_INTERVAL = 0.25
BATCH_BYTES = 128 * 1024  # characters of output per Claim: even at 6 bytes each (JSON escapes) under 1 MiB
MAX_SLOTS = 64
REQUEST_TIMEOUT = 5.0
WAITING_TTL = 60.0  # a sweep we had no room for is retried this long after its last announcement


@dataclass
class _Claim:
    ann: SweepAnnounce
    claim_id: str
    slots: list[str]  # capacity reservations, one per worker
    queue: deque[int] = field(default_factory=deque)
    results: list[IndexResult] = field(default_factory=list)
    running: dict[int, trio.CancelScope] = field(default_factory=dict)
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    wake: trio.Event = field(default_factory=trio.Event)  # the reporter has something to do
    work: trio.Event = field(default_factory=trio.Event)  # indexes arrived for the workers
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)
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


class SweepClaims:
    def __init__(self, *, peers: Peers, store: Store, capacity: CapacityTracker, runner: Runner,
                 refusal: Callable[[JobSpec], str | None], released: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.peers = peers
        self.store = store
        self.capacity = capacity
        self.runner = runner
        self.refusal = refusal
        self.released = released  # capacity came free: the node's backlog may go on
        self.clock = clock
        self._claims: dict[str, _Claim] = {}  # sweep id -> our claim on it
        self._waiting: dict[str, tuple[SweepAnnounce, float]] = {}  # sweeps we had no room for
        self._ended: OrderedDict[str, int] = OrderedDict()  # recent claims ended by the requester -> stopped
        self._nursery: trio.Nursery | None = None

    def start(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    def running(self) -> int:
        return sum(len(c.running) for c in self._claims.values())

    def on_announce(self, origin: str, ann: SweepAnnounce) -> None:
        if origin != ann.requester:
            log.warning("dropping sweep announcement %s relayed as if from %s", ann.sweep_id, origin)
            return
        if ann.sweep_id in self._claims:
            return  # our claim asks for more by itself
        refusal = self.refusal(ann.spec.job)
        if refusal is not None:
            log.debug("passing over sweep %s: %s", ann.sweep_id, refusal)
            return
        if not self._try_claim(ann):
            self._waiting[ann.sweep_id] = (ann, self.clock())

    def retry_waiting(self) -> None:
        """Capacity may have come free: claim sweeps we passed over for lack of room."""
        now = self.clock()
        for sweep_id, (ann, seen) in list(self._waiting.items()):
            if now - seen > WAITING_TTL or sweep_id in self._claims or self._try_claim(ann):
                del self._waiting[sweep_id]

    def _try_claim(self, ann: SweepAnnounce) -> bool:
        claim_id = f"c-{uuid.uuid4().hex}"
        need = ann.spec.job.resources
        parallel = getattr(self.runner.executors.get(ann.spec.job.engine.name), "max_parallel", None) or MAX_SLOTS
        slots = []
        while len(slots) < min(MAX_SLOTS, parallel, max(1, ann.pending)):
            holder = f"{claim_id}/{len(slots)}"
            if not self.capacity.try_reserve(holder, need):
                break
            slots.append(holder)
        if not slots:
            return False
        assert self._nursery is not None, "SweepClaims.start() was not called"
        claim = _Claim(ann=ann, claim_id=claim_id, slots=slots)
        self._claims[ann.sweep_id] = claim
        self._nursery.start_soon(self._run_claim, claim)
        return True

    async def cancel(self, peer: str, msg: Cancel) -> Reply | None:
        """The requester ended the sweep: stop this claim now. None: not one of our claims."""
        claim = self._claims.get(msg.job_id)
        if claim is None or claim.claim_id != msg.execution_id:
            if msg.execution_id in self._ended:  # the reply to a report ended it first
                return Reply(stopped=self._ended[msg.execution_id])
            return None
        if claim.ann.requester != peer:
            return Reply(ok=False, reason="only the sweep's requester may do that")
        claim.stopped = len(claim.running)
        claim.scope.cancel()
        return Reply(stopped=claim.stopped)

    # -- one claim ------------------------------------------------------------------------------------

    async def _run_claim(self, claim: _Claim) -> None:
        try:
            with claim.scope:
                async with trio.open_nursery() as nursery:
                    for _ in claim.slots:
                        nursery.start_soon(self._worker, claim)
                    await self._reporter(claim)
                    nursery.cancel_scope.cancel()
        finally:
            del self._claims[claim.ann.sweep_id]
            self._ended[claim.claim_id] = claim.stopped
            while len(self._ended) > 1000:
                self._ended.popitem(last=False)
            for holder in claim.slots:
                self.capacity.release(holder)
            self.released()

    async def _worker(self, claim: _Claim) -> None:
        ann = claim.ann
        while True:
            if not claim.queue:
                claim.wake.set()  # running dry: ask for more now
                claim.work = trio.Event() if claim.work.is_set() else claim.work
                await claim.work.wait()
                continue
            index = claim.queue.popleft()
            now = self.clock()
            ex = Execution(id=f"{claim.claim_id}-{index}", job_id=ann.sweep_id, node_id=self.peers.node_id,
                           requester=ann.requester, created_at=now, updated_at=now, spec=ann.spec.job_for(index))
            with trio.CancelScope() as scope:
                claim.running[index] = scope
                try:
                    outcome = await self.runner.run(ex)
                finally:
                    del claim.running[index]
            if scope.cancelled_caught:
                continue
            claim.results.append(IndexResult(index=index, result=outcome.result, error=outcome.error,
                                             retryable=outcome.retryable))
            claim.finished_at.append(self.clock())
            claim.wake.set()

    async def _reporter(self, claim: _Claim) -> None:
        """Returns when the claim is over: the requester said stop, or there is nothing left to do."""
        heartbeat = claim.ann.spec.job.deadlines.silence / 3
        give_up = claim.ann.spec.job.deadlines.silence * 2
        claim.last_answer = self.clock()
        while True:
            now = self.clock()
            want = claim.want(now)
            starving = want > 0 and not claim.queue and not (claim.exhausted and claim.running)
            if claim.exhausted and not claim.queue and not claim.running and not claim.results:
                return  # nothing left for us
            due = starving or now - claim.last_sent >= heartbeat or \
                (claim.results and now - claim.last_sent >= REPORT_INTERVAL)
            if not due:
                wait = heartbeat - (now - claim.last_sent)
                if claim.results:
                    wait = min(wait, REPORT_INTERVAL - (now - claim.last_sent))
                claim.wake = trio.Event()
                with trio.move_on_after(max(0.0, wait)):
                    await claim.wake.wait()
                continue
            batch = _take_batch(claim)
            claim.last_sent = now
            try:
                reply = await self._send(claim, batch, want)
            except Unreachable as e:
                claim.results[:0] = batch  # keep them for the next attempt
                if self.clock() - claim.last_answer > give_up:
                    log.info("giving up claim %s: requester unreachable (%s)", claim.claim_id, e)
                    return
                await trio.sleep(min(1.0, heartbeat))
                continue
            claim.last_answer = self.clock()
            if reply.verdict == "rejected":
                log.debug("claim %s ended by the requester: %s", claim.claim_id, reply.reason)
                claim.stopped = len(claim.running)
                return
            granted = [i for start, end in reply.ranges for i in range(start, end)]
            claim.queue.extend(granted)
            claim.exhausted = want > 0 and not granted
            if granted:
                claim.work.set()

    async def _send(self, claim: _Claim, batch: list[IndexResult], want: int) -> Reply:
        cids = [r.result.cid for r in batch if r.result is not None and r.result.cid]
        if cids:  # before the requester hears of them: retention must be able to find them
            await self.store.add_published(cids, self.clock())
        ann = claim.ann
        msg = Claim(sweep_id=ann.sweep_id, claim_id=claim.claim_id, want=want, results=batch)
        signature = base64.urlsafe_b64encode(self.peers.sign(msg.statement())).decode()
        msg = msg.model_copy(update={"signature": signature})
        reply = await self.peers.request(ann.requester, msg, timeout=REQUEST_TIMEOUT, addrs=ann.requester_addrs)
        if reply.verdict is None:
            raise Unreachable(ann.requester, f"no verdict: {reply.reason}")
        return reply


def _take_batch(claim: _Claim) -> list[IndexResult]:
    """The results that fit in one message (each carries up to 64 KiB of stdout and of stderr)."""
    size, n = 0, 0
    for r in claim.results:
        size += 256 + (len(r.result.stdout) + len(r.result.stderr) if r.result else 0) + len(r.error or "")
        if n and size > BATCH_BYTES:
            break
        n += 1
    batch, claim.results = claim.results[:n], claim.results[n:]
    return batch
