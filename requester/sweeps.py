"""The requester's side of sweeps: record, announce, grant index ranges, collect results, end.

A sweep is announced on gossip as one message (repeated with backoff while indexes are unclaimed). A
compute node that can run its template sends ``Claim`` messages, each with the results of indexes it
finished and how many more it wants; the reply grants ranges of pending indexes, so messages grow with
nodes and time, never with indexes. A claim is a lease (``requester.sweep_rules``). ``requester.sweep_machine``
decides; this shell takes the sweep's lock, asks the machine, writes and sends what it says.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from functools import cached_property

import trio

from jobs import Event, EventKind, JobState
from jobs.messages import Claim, Peers, Reply, SweepAnnounce
from jobs.sweep import Sweep, SweepSpec, index_ranges
from jobs.views import SweepDescription
from requester.common import Driver, InFlight, Live, UnknownJob, deliver, submit_once
from requester.machine import Changes, Send
from requester.ports import NodeJudge, RequesterStore
from requester.sweep_machine import SweepMachine

log = logging.getLogger("shoal.requester")

MAX_RANGES = 1000  # in one description; the rest is paged through the index list
CANCEL_DELAYS = (0.2, 0.5, 1.0)  # between the tries to stop a claim when its sweep ends


@dataclass(eq=False)
class _Live(Live):
    """A live sweep: its machine, behind the lock its decisions take."""

    machine: SweepMachine

    @property
    def sweep(self) -> Sweep:
        return self.machine.sweep

    @cached_property
    def spec_bytes(self) -> int:
        return len(self.sweep.spec.model_dump_json())


class SweepService(Driver[_Live]):
    def __init__(self, *, peers: Peers, store: RequesterStore, judge: NodeJudge,
                 clock: Callable[[], float] = time.time) -> None:
        super().__init__("sweep", peers, store, clock, "claims announcements results late_results refused_results "
                         "refused_claims repeated_results penalties errors_run_again errors_confirmed "
                         "errors_contradicted quarantined_claims results_outvoted")
        self.judge = judge
        self.penalize, self.credit = judge.penalize, judge.credit  # see Driver._tally
        self._reviving = trio.Lock()  # an ended sweep is made live by one retry at a time

    def in_flight(self, owner: str) -> InFlight:
        mine = [live.spec_bytes for live in self._live.values() if live.sweep.owner == owner]
        return InFlight(len(mine), sum(mine))

    async def _restore(self) -> None:
        now = self.clock()
        for sweep in await self.store.live_sweeps():
            rows = await self.store.index_states(sweep.id)
            self._live[sweep.id] = _Live(SweepMachine.restored(sweep, self.peers.node_id, rows, now, restarted=True))

    # -- performing the machine's changes --------------------------------------------------------

    async def _apply(self, live: _Live, changes: Changes) -> None:
        for write in changes.writes:
            await self.store.save_sweep(**vars(write))
        await self._tally(changes)
        if changes.finished:
            del self._live[live.sweep.id]
            live.done.set()
            for send in changes.sends:
                self._tasks.spawn(self._stop, send, live.sweep.updated_at)
        elif changes.announce:
            await self._announce(live)

    async def _stop(self, stop: Send, since: float) -> None:
        """Tell a node to stop its claim; record how long that took to reach it and what it stopped."""
        reply = await deliver(self.peers, stop.peer, stop.message, delays=CANCEL_DELAYS)
        if reply is None:
            log.info("could not cancel claim %s on %s; its lease ends it", stop.message.execution_id, stop.peer)
            return
        took = (self.clock() - since) * 1000
        text = f"cancel reached node {stop.peer[-8:]} after {took:.0f} ms; {reply.stopped} running indexes stopped"
        await self.store.save_sweep(events=[Event(job_id=stop.message.job_id, at=self.clock(),
                                                  kind=EventKind.CANCELLED, node_id=stop.peer, message=text)])

    async def _announce(self, live: _Live) -> None:
        machine = live.machine
        ann = SweepAnnounce(sweep_id=machine.sweep.id, spec=machine.sweep.spec, requester=self.peers.node_id,
                            requester_addrs=self.peers.addrs(), pending=machine.unclaimed())
        machine.announced(self.clock())
        self.counters["announcements"] += 1
        await self.peers.publish(ann)

    async def _tick(self, live: _Live) -> None:
        await self._apply(live, live.machine.tick(self.clock()))

    # -- API side --------------------------------------------------------------------------------

    async def submit(self, spec: SweepSpec, owner: str, idempotency_key: str | None = None, *,
                     counted: Callable[[], None] = lambda: None) -> tuple[Sweep, bool]:
        """Record and announce a sweep; the same idempotency key returns the sweep made first. ``counted``: as
        ``RequesterService.submit``'s."""
        digest = spec.digest()

        async def create() -> Sweep:
            now = self.clock()
            sweep = Sweep(id=f"s-{uuid.uuid4().hex}", owner=owner, spec=spec, count=spec.count,
                          requester=self.peers.node_id, counts={JobState.PENDING: spec.count}, created_at=now,
                          updated_at=now)
            live = _Live(SweepMachine.new(sweep, self.peers.node_id))
            events = live.machine.admit(self.judge.nodes_for_refusal())
            await self.store.save_sweep(new_sweep=live.sweep, events=events, idempotency_key=idempotency_key,
                                        request_digest=digest)
            if not live.sweep.state.is_terminal:
                self._live[sweep.id] = live
                counted()
                await self._announce(live)
            return live.sweep

        return await submit_once(self.store.find_idempotent_sweep, create, owner=owner, key=idempotency_key,
                                 digest=digest, what="sweep")

    async def get(self, sweep_id: str) -> Sweep:
        live = self._live.get(sweep_id)
        sweep = live.sweep if live else await self.store.get_sweep(sweep_id)
        if sweep is None:
            raise UnknownJob(sweep_id)
        return sweep

    async def describe(self, sweep_id: str) -> SweepDescription:
        live = self._live.get(sweep_id)
        # a decision changes a live sweep's machine before its writes commit: read between decisions
        async with live.lock if live is not None else nullcontext():
            sweep = await self.get(sweep_id)
            if live is not None and not live.done.is_set():
                # index states are in memory as written: reading no index rows holds the claims' lock briefly
                ranges = index_ranges(((i, state, "") for i, state in enumerate(live.machine.states)), MAX_RANGES)
                said = [r.first for r in ranges[:MAX_RANGES] if r.state in (JobState.FAILED, JobState.CANCELLED)]
                reasons = await self.store.index_reasons(sweep_id, said) if said else {}
                ranges = [r.model_copy(update={"reason": reasons[r.first]}) if r.first in reasons else r
                          for r in ranges]
            else:
                ranges = await self.store.index_ranges(sweep_id, MAX_RANGES)
            return SweepDescription(sweep=sweep, ranges=ranges[:MAX_RANGES], ranges_truncated=len(ranges) > MAX_RANGES)

    async def cancel(self, sweep_id: str, reason: str = "cancelled by its owner") -> Sweep:
        live = self._live.get(sweep_id)
        if live is None:
            return await self.get(sweep_id)
        async with live.lock:
            if not live.sweep.state.is_terminal:
                await self._apply(live, live.machine.cancel(reason, self.clock()))
            return live.sweep

    async def retry(self, sweep_id: str) -> Sweep:
        """Put failed indexes back to run (and a cancelled sweep's cancelled ones): the sweep runs again."""
        while True:
            async with self._reviving:  # two retries at once each restored it: the second's writes were stale
                live = self._live.get(sweep_id)
                if live is None:
                    sweep = await self.get(sweep_id)
                    ended = sweep.counts.get(JobState.FAILED, 0) + sweep.counts.get(JobState.CANCELLED, 0)
                    if sweep.state not in (JobState.FAILED, JobState.CANCELLED) or not ended:
                        return sweep
                    rows = await self.store.index_states(sweep_id)
                    live = _Live(SweepMachine.restored(sweep, self.peers.node_id, rows, self.clock()))
                    self._live[sweep_id] = live
            async with live.lock:
                if live.done.is_set():  # it ended while we waited: retrying that copy left it stranded, unrun
                    continue
                await self._apply(live, live.machine.retry(self.clock()))
                return live.sweep

    def pending_indexes(self) -> int:
        """Indexes of live sweeps that no node has claimed yet (waiting for capacity)."""
        return sum(live.machine.unclaimed() for live in self._live.values())

    def work_held(self, peer: str) -> int:
        """The indexes of live sweeps ``peer`` holds: granted and not reported, or its result awaiting others'."""
        return sum(live.machine.held_by(peer) for live in self._live.values())

    # -- claims from compute nodes ----------------------------------------------------------------

    async def handle(self, peer: str, msg: Claim) -> Reply:
        live = self._live.get(msg.sweep_id)
        if live is None:
            return Reply(verdict="rejected", reason="the sweep is finished or unknown here")
        if not msg.signed_by(self.peers, peer):
            log.warning("claim %s from %s has a bad signature", msg.claim_id, peer)
            return Reply(ok=False, verdict="rejected", reason="the claim's signature does not match the node key")
        async with self.judge.probation_turn(peer), live.lock:
            if live.sweep.state.is_terminal:
                return Reply(verdict="rejected", reason=f"the sweep is {live.sweep.state.value}")
            verified = live.sweep.spec.confidence >= 2
            reply, changes = live.machine.claim(peer, msg, self.clock(),
                                                able=self.judge.able(live.sweep.spec.job, verified=verified),
                                                quarantined=self.judge.quarantined(peer, verified=verified),
                                                room=self.judge.probation_room(peer))
            await self._apply(live, changes)
            return reply
