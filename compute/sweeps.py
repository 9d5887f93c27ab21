"""The compute side of sweeps: the tasks that run a claim's indexes and report their results.

What to claim, how many indexes to ask for and when to report are ``compute.claims``' decisions;
this module runs one worker per slot and one reporter per claim around them.

Claims are not written to the store: after a crash the requester's lease returns their indexes
to others. Published results are (``add_published``), so retention can unpin them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from compute.claims import Claim, ClaimBook
from compute.outbox import request_verdict, signed
from jobs import JobSpec, PeerError
from jobs.messages import Cancel, IndexResult, Peers, Reply, SweepAnnounce
from jobs.messages import Claim as ClaimMessage
from node.tasks import Spawner

if TYPE_CHECKING:
    from compute.capacity import CapacityTracker
    from compute.ports import ComputeStore
    from compute.runner import Runner

log = logging.getLogger("shoal.compute")


@dataclass
class _Signals:
    """The trio side of one claim."""

    scope: trio.CancelScope = field(default_factory=trio.CancelScope)  # the requester ended the claim
    wake: trio.Event = field(default_factory=trio.Event)  # the reporter has something to do
    work: trio.Event = field(default_factory=trio.Event)  # indexes arrived for the workers


class SweepClaims:
    def __init__(self, *, peers: Peers, store: ComputeStore, capacity: CapacityTracker, runner: Runner,
                 refusal: Callable[[JobSpec], str | None], released: Callable[[], None],
                 clock: Callable[[], float] = time.time) -> None:
        self.peers = peers
        self.store = store
        self.runner = runner
        self.released = released  # capacity came free: the node's backlog may go on
        self.clock = clock
        self.book = ClaimBook(capacity, refusal, lambda engine: runner.executors.get(engine).max_parallel)
        self._signals: dict[str, _Signals] = {}  # claim id -> its trio side
        self._tasks = Spawner("sweep claims")

    def start(self, nursery: trio.Nursery) -> None:
        self._tasks.attach(nursery)

    def running(self) -> int:
        return self.book.running()

    def on_announce(self, origin: str, ann: SweepAnnounce) -> None:
        claim = self.book.announce(origin, ann, self.clock())
        if claim is not None:
            self._start(claim)

    def retry_waiting(self) -> None:
        """Capacity may have come free: claim sweeps we passed over for lack of room."""
        for claim in self.book.retry_waiting(self.clock()):
            self._start(claim)

    def _start(self, claim: Claim) -> None:
        self._signals[claim.claim_id] = _Signals()
        self._tasks.spawn(self._run_claim, claim)

    async def cancel(self, peer: str, msg: Cancel) -> Reply | None:
        """The requester ended the sweep: stop this claim now. None: not one of our claims."""
        reply, claim = self.book.cancel(peer, msg)
        if claim is not None:
            self._signals[claim.claim_id].scope.cancel()
        return reply

    # -- one claim ------------------------------------------------------------------------------------

    async def _run_claim(self, claim: Claim) -> None:
        signals = self._signals[claim.claim_id]
        try:
            with signals.scope:
                async with trio.open_nursery() as nursery:
                    for _ in claim.slots:
                        nursery.start_soon(self._worker, claim, signals)
                    await self._reporter(claim, signals)
                    nursery.cancel_scope.cancel()
        finally:
            del self._signals[claim.claim_id]
            self.book.finish(claim)
            self.released()

    async def _worker(self, claim: Claim, signals: _Signals) -> None:
        while True:
            started = claim.start_next(self.peers.node_id, self.clock())
            if started is None:
                signals.wake.set()  # running dry: ask for more now
                signals.work = trio.Event() if signals.work.is_set() else signals.work
                await signals.work.wait()
                continue
            index, ex = started
            outcome = await self.runner.run(ex)
            claim.finished(IndexResult(index=index, result=outcome.result, error=outcome.error,
                                       retryable=outcome.retryable), self.clock())
            signals.wake.set()

    async def _reporter(self, claim: Claim, signals: _Signals) -> None:
        """Returns when the claim is over: the requester said stop, or there is nothing left to do."""
        heartbeat = claim.ann.spec.job.deadlines.silence / 3
        give_up = claim.ann.spec.job.deadlines.silence * 2
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
            try:
                reply = await self._send(claim, batch, want)
            except PeerError as e:
                claim.unsent(batch)
                if self.clock() - claim.last_answer > give_up:
                    log.info("giving up claim %s: requester unreachable (%s)", claim.claim_id, e)
                    return
                await trio.sleep(min(1.0, heartbeat))
                continue
            granted = claim.answered(reply, want, self.clock())
            if granted is None:
                log.debug("claim %s ended by the requester: %s", claim.claim_id, reply.reason)
                return
            if granted:
                signals.work.set()

    async def _send(self, claim: Claim, batch: list[IndexResult], want: int) -> Reply:
        cids = [r.result.cid for r in batch if r.result is not None and r.result.cid]
        if cids:  # before the requester hears of them: retention must be able to find them
            await self.store.add_published(cids, self.clock())
        ann = claim.ann
        msg = ClaimMessage(sweep_id=ann.sweep_id, claim_id=claim.claim_id, want=want, results=batch)
        return await request_verdict(self.peers, ann.requester, signed(msg, self.peers), addrs=ann.requester_addrs)
