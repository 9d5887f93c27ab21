"""The requester role's trio service: announce jobs, choose bids, collect results, keep deadlines.

One announcement per job (direct offers to the nodes ``candidates`` names, else gossip; repeated
with backoff while the job is short of nodes), then only direct messages to the nodes that bid.
Verdicts travel in the reply to the bid or result itself, so ``concurrency=N`` costs N round
trips of each. ``requester.machine`` decides; this shell takes the job's lock, writes what the
machine says, then sends it. A restarted requester loads its live jobs and carries on.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace

import trio

from jobs import Execution, ExecutionSide, ExecutionState, Job, JobSpec, JobState, PeerError
from jobs.messages import Announce, Bid, NodeInfo, OpenQuery, Output, Peers, Reply, Result, StatusQuery, query_parts
from jobs.views import JobDescription, Phases
from requester import trust
from requester.common import REQUEST_TIMEOUT, Driver, InFlight, Live, UnknownJob, deliver, submit_once
from requester.logs import LiveOutputs
from requester.machine import MAX_REOFFERS, QUARANTINE_AFTER, TICK, Cached, JobChanges, JobMachine, Known, Tracked
from requester.nodes import NodeTable
from requester.ports import RequesterStore
from requester.selection import Queue, waiting_reason

log = logging.getLogger("shoal.requester")

SIDE = ExecutionSide.REQUESTER
LIVENESS_INTERVAL = 1.0  # how often nodes running our executions are asked whether they still are
LIVENESS_TIMEOUT = 2.0  # a node that cannot answer a status query this fast counts as silent for that round
NODE_INFO_TTL = 30.0  # a compute node not heard from for this long is forgotten
# seconds after a start before the node table holds every node (each publishes its info every 10 s; a restarted
# requester knows only itself): until then, as while it is crowded, no job fails for want of a node. Only a
# requester that expects other nodes waits so: one told of peers to join, or one carrying on with live jobs.
NODE_TABLE_FILLS = 15.0
RESTORED_OFFERS_PER_SECOND = 500  # a restarted requester's first offers, spread: all at once trip peers' rate limits
FULL_PASS = 5.0  # every live job is ticked this often, due or not, for what the node table decides (a node left)
WAKES_PER_TICK = 2  # nodes that joined whose room is matched against the waiting jobs, each TICK
MAX_JOINED = 64  # nodes that joined kept to be matched so; beyond, the longest waiting is dropped


class _Active(Live):
    """A live job: its state as the machine sees it, behind the lock its decisions take."""

    def __init__(self, state: Tracked, spec_bytes: int = 0) -> None:
        super().__init__()
        self.woken = False  # a node with room for it appeared: announce at the next tick, not the next backoff step
        self.state = state
        self.spec_bytes = spec_bytes  # its spec's size as submitted: what the API's spec-bytes-in-flight quota counts

    @property
    def state(self) -> Tracked:
        return self._state

    @state.setter
    def state(self, state: Tracked) -> None:
        self._state = state
        self.due = 0.0 if self.woken else state.due()  # when to tick it next (``Tracked.due``)

    @property
    def job(self) -> Job:
        return self.state.job


class RequesterService(Driver[_Active]):
    def __init__(self, *, peers: Peers, store: RequesterStore, clock: Callable[[], float] = time.time,
                 max_reoffers: int = MAX_REOFFERS, quarantine_after: int = QUARANTINE_AFTER,
                 joins: bool = True) -> None:
        """``joins``: it was told of peers to join (False: a node alone until others dial it)."""
        super().__init__("job", peers, store, clock, "bids bids_accepted bids_rejected results announcements "
                                                     "offered_here reoffers retries results_refused penalties")
        self.machine = JobMachine(peers.node_id, max_reoffers=max_reoffers, quarantine_after=quarantine_after)
        self.reputation: dict[str, trust.Standing] = {}  # by peer
        self.nodes = NodeTable(ttl=NODE_INFO_TTL)
        self.outputs = LiveOutputs()  # running jobs' output, shown live
        self._queue = Queue(lambda: (aj.state.waiting_since for aj in self._live.values() if aj.state.is_open()))
        self._in_flight: dict[str, InFlight] = {}  # owner -> live jobs and their specs' sizes (the API's quotas)
        # Silence is measured on trio's clock, which a step of the wall clock (NTP, a VM resumed, ``date -s``) does
        # not move: an hour's step back left a dead node's executions "running" for that hour.
        self._last_heard: dict[str, float] = {}  # node -> when it last answered or wrote to us
        self._running_since: dict[str, float] = {}  # execution id -> when the liveness loop first saw it running
        self._up_since = 0.0  # when it (re)started: every node gets a full silence window then
        self._joins = joins
        self._table_fills_until = 0.0  # see ``_restore``
        self._checking: set[str] = set()
        self._joined: OrderedDict[str, NodeInfo] = OrderedDict()  # nodes new or restarted, whose room wakes jobs
        self.latencies: deque[float] = deque(maxlen=1000)  # submit -> terminal of recently finished jobs
        self._next_full_pass = 0.0
        self._waiting = 0  # jobs short of nodes, as of the last full pass
        self.sweep_work: Callable[[str], int] = lambda peer: 0  # the sweep indexes a node holds here (``SweepService``)
        self._probation = trio.Lock()  # one decision at a time on the work of nodes on probation

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            await nursery.start(super().run)
            nursery.start_soon(self._liveness_loop)
            nursery.start_soon(self._wake_loop)
            task_status.started()

    async def _restore(self) -> None:
        now, self._up_since = self.clock(), trio.current_time()
        self.reputation = {peer: trust.Standing(*row) for peer, row in (await self.store.reputations()).items()}
        secrets = await self.store.live_secrets()
        for i, job in enumerate(await self.store.live_jobs()):
            executions = {ex.id: ex for ex in await self.store.executions_of(SIDE, job.id)
                          if ex.attempt >= job.first_attempt}  # earlier ones belong to runs that were retried
            # the min_bids wait goes on from the first bid as stored: waiting afresh outlasts the bids nodes hold
            bids = [x.created_at for x in executions.values() if x.state is ExecutionState.BIDDING]
            aj = self._track(Tracked(job=job, executions=executions, secrets=secrets.get(job.id) or {},
                                     waiting_since=now, next_announce=now + i / RESTORED_OFFERS_PER_SECOND,
                                     first_bid_at=min(bids, default=None), resumed_at=now))
            if job.id in secrets and secrets[job.id] is None:
                await self._apply(aj, self.machine.finish(
                    aj.state, JobState.FAILED, "its secret_env could not be read after a restart "
                                               "(the store's key file is missing or another one)", now, self._known()))
        if self._joins or self._live:  # nodes it knew before may not have been heard of yet
            self._table_fills_until = self._up_since + NODE_TABLE_FILLS

    def known_nodes(self) -> list[NodeInfo]:
        return self.nodes.known(trio.current_time())

    def able(self, spec: JobSpec, *, verified: bool) -> set[str]:
        """The known nodes that could run ``spec`` and are not quarantined for work ``verified`` or not: no sweep
        claim takes more than its share of them."""
        return self.machine.able(spec, self._known(), self.clock(), verified=verified)

    def nodes_for_refusal(self) -> list[NodeInfo]:
        """The known nodes, to judge that none could ever run a job: none while the table is crowded (a
        full table may have dropped the one that could) or still filling."""
        return self.known_nodes() if self._table_complete() else []

    def _table_complete(self) -> bool:
        now = trio.current_time()
        return now >= self._table_fills_until and not self.nodes.crowded(now)

    def _known(self) -> Known:
        return Known(nodes=self.known_nodes(), reputation=self.reputation, complete=self._table_complete(),
                     waiting=self._waiting)

    def on_node_info(self, origin: str, info: NodeInfo) -> None:
        if origin != info.peer_id:
            return
        vouched = self.reputation.get(origin, trust.Standing()).accepted > 0  # it ran jobs for us: a flood keeps it
        # new, or restarted: announce what it has room for (the table keeps trio's time, which no wall step moves)
        if self.nodes.update(info, trio.current_time(), vouched=vouched):
            self._joined[origin] = info
            self._joined.move_to_end(origin)
            while len(self._joined) > MAX_JOINED:
                self._joined.popitem(last=False)

    async def _wake_loop(self) -> None:
        """Wake the waiting jobs nodes that joined have room for, a few nodes a tick: each look goes over every
        waiting job (20 ms at 10,000), and fresh identities cost a flooding peer nothing."""
        while True:
            await trio.sleep(TICK)
            for _ in range(min(WAKES_PER_TICK, len(self._joined))):
                _, info = self._joined.popitem(last=False)
                for job_id in self.machine.to_wake((aj.state for aj in self._live.values()), info, self.clock()):
                    self._live[job_id].woken = True  # applied under the job's lock, by its next tick
                    self._live[job_id].due = 0.0

    # -- performing the machine's changes --------------------------------------------------------

    async def _apply(self, aj: _Active, changes: JobChanges) -> None:
        """Write what a decision says, in order; then send and announce what it says."""
        for write, state in changes.writes:
            await self.store.save(**vars(write))
            self._add_reputation(getattr(write, "reputation", None) or {}, getattr(write, "judged_at", 0.0))
            aj.state = state
        aj.state = changes.state
        await self._tally(changes)
        for send in changes.sends:
            self._tasks.spawn(deliver, self.peers, send.peer, send.message)
        if changes.finished:
            self._forget(aj)
        elif changes.announce:
            await self._announce(aj)

    def _track(self, state: Tracked) -> _Active:
        aj = self._live[state.job.id] = _Active(state=state, spec_bytes=len(state.job.spec.model_dump_json()))
        self._in_flight[state.job.owner] = self.in_flight(state.job.owner) + InFlight(1, aj.spec_bytes)
        return aj

    def _forget(self, aj: _Active) -> None:
        job = aj.job
        del self._live[job.id]
        self.outputs.forget(job.id)
        aj.done.set()
        self._in_flight[job.owner] = left = self.in_flight(job.owner) + InFlight(-1, -aj.spec_bytes)
        if left.count <= 0:
            del self._in_flight[job.owner]
        self.latencies.append(job.updated_at - job.created_at)

    # -- submit, cancel, describe ----------------------------------------------------------------

    async def submit(self, spec: JobSpec, owner: str, idempotency_key: str | None = None, *,
                     use_cache: bool = True, counted: Callable[[], None] = lambda: None) -> tuple[Job, bool]:
        """Create and announce a job. Returns (job, created); an idempotent repeat returns the first job.

        A deterministic job whose result is cached completes at once, running nothing. ``counted`` is called
        once the job counts in ``in_flight``, before it is announced (the API's quota reservation ends then).
        """
        digest = spec.digest()

        async def create() -> Job:
            now = self.clock()
            secrets, bare = dict(spec.secret_env), spec.without_secrets()  # secrets go in their own table
            job = Job(id=f"j-{uuid.uuid4().hex}", owner=owner, spec=bare, requester=self.peers.node_id,
                      created_at=now, updated_at=now)
            key = bare.cache_key() if bare.cache and use_cache and not secrets else None
            job, events = self.machine.admit(job, self.nodes_for_refusal(),
                                             await self._cached(key, owner) if key else None)
            await self.store.save(new_job=job, events=events, idempotency_key=idempotency_key, request_digest=digest,
                                  secrets=secrets)
            if not job.state.is_terminal:
                aj = self._track(Tracked(job=job, waiting_since=now, secrets=secrets))
                counted()
                await self._announce(aj)
            return job

        return await submit_once(self.store.find_idempotent, create, owner=owner, key=idempotency_key, digest=digest,
                                 what="job spec")

    async def _cached(self, key: str, owner: str) -> Cached | None:
        if (cached := await self.store.cached_result(key, owner)) is None:
            return None
        source, result, verified = cached
        source_job = await self.store.get_job(source)
        mine = source_job is not None and source_job.owner == owner  # never reveal another client's job
        return Cached(source=source, result=result, verified=verified, mine=mine)

    async def _announce(self, aj: _Active) -> None:
        own = self.peers.node_id
        plan, aj.state = self.machine.announce(aj.state, self.clock(), self._known(), self.nodes.get(own))
        self.counters["announcements"] += 1
        if plan.here and await self._offer(own, self._announcement(aj.state, [own])):
            self.counters["offered_here"] += 1
            return
        ann = self._announcement(aj.state, plan.ask)
        if plan.ask:  # a few direct messages instead of gossip through the whole mesh (N nodes x its degree)
            for node in plan.ask:
                info = self.nodes.get(node)
                self._tasks.spawn(self._offer, node, ann, info.addrs if info else ())
        else:
            await self.peers.publish(ann)

    def _announcement(self, state: Tracked, ask: list[str]) -> Announce:
        spec = state.job.spec
        return Announce(job_id=state.job.id, spec=spec, requester=self.peers.node_id,
                        requester_addrs=self.peers.addrs(), attempt=state.job.attempt, candidates=ask,
                        bid_deadline=state.waiting_since + spec.deadlines.bid_limit)

    async def _offer(self, node: str, ann: Announce, addrs: Sequence[str] = ()) -> bool:
        """Announce straight to one named node; True if it is bidding (a Bid follows). Best effort, like
        gossip: if the nodes asked do not take the job, the next announcement goes to everyone."""
        try:
            return (await self.peers.request(node, ann, timeout=REQUEST_TIMEOUT, addrs=addrs)).verdict == "pending"
        except PeerError as e:
            log.debug("offering %s to %s: %s", ann.job_id, node, e)
            return False

    async def get(self, job_id: str) -> Job:
        job = self.live_job(job_id) or await self.store.get_job(job_id)
        if job is None:
            raise UnknownJob(job_id)
        return job

    def live_job(self, job_id: str, stored: Job | None = None) -> Job | None:
        """A live job as the API shows it: one short of nodes says where it stands in the queue. None when
        ``stored``, the job as a listing read it, is newer: a decision's write lands before its live state does."""
        aj = self._live.get(job_id)
        if aj is None or (stored is not None and stored.revision > aj.job.revision):
            return None
        state, now = aj.state, self.clock()
        if not state.is_open() or state.waiting_since > now or state.slots() > state.job.spec.deal.concurrency:
            return aj.job  # running, waiting out a retry's backoff, or asking one more node to break a tie
        known = self._known()
        reason = waiting_reason(state.job.spec, known.nodes, state.held(), self._queue.ahead(state.waiting_since, now),
                                barred=self.machine.barred(state, known, now))
        return aj.job if reason == aj.job.reason else aj.job.model_copy(update={"reason": reason})

    async def cancel(self, job_id: str, reason: str = "cancelled by its owner") -> Job:
        aj = self._live.get(job_id)
        if aj is None:
            return await self.get(job_id)  # already terminal: cancelling is a no-op
        async with aj.lock:
            if not aj.job.state.is_terminal:
                await self._apply(aj, self.machine.finish(aj.state, JobState.CANCELLED, reason, self.clock(),
                                                          self._known()))
            return aj.job

    def in_flight(self, owner: str) -> InFlight:
        """``owner``'s live jobs (neither completed, failed nor cancelled): how many, and their specs' bytes."""
        return self._in_flight.get(owner, InFlight())

    def take_output(self, peer: str, message: Output) -> Reply:
        """Output of a running execution, shown live (``requester/logs.py``); only its node may send it."""
        aj = self._live.get(message.job_id)
        x = aj.state.executions.get(message.execution_id) if aj else None
        runner = x.node_id if x is not None and x.state is ExecutionState.ACCEPTED else None
        return self.outputs.take(peer, message, runner)

    async def describe(self, job_id: str) -> JobDescription:
        aj, job = self._live.get(job_id), await self.get(job_id)
        if aj and not job.retried:
            executions = list(aj.state.executions.values())
        else:  # the store has the executions of every run
            executions = await self.store.executions_of(SIDE, job_id)
        executions = [x.model_copy(update={"spec": None}) for x in executions]
        events = await self.store.events(job_id, limit=10_000)
        return JobDescription(job=job, executions=executions, phases=Phases.of(events, executions))

    def waiting(self) -> int:
        """Jobs still short of nodes (the work waiting for capacity: what an autoscaler scales on)."""
        return sum(1 for aj in self._live.values() if aj.state.is_open())

    # -- messages from compute nodes -------------------------------------------------------------

    async def handle(self, peer: str, message: Bid | Result | OpenQuery) -> Reply:
        self._last_heard[peer] = trio.current_time()
        if isinstance(message, OpenQuery):
            return Reply(states={j: "open" if j in self._live and self._live[j].state.is_open() else "closed"
                                 for j in message.job_ids})
        aj = self._live.get(message.job_id)
        if aj is None:
            return Reply(ok=True, verdict="rejected", reason="the job is finished or unknown here")
        async with self.probation_turn(peer) if isinstance(message, Bid) else contextlib.nullcontext(), aj.lock:
            now, known = self.clock(), self._known()
            if isinstance(message, Bid):
                reply, changes = self.machine.on_bid(aj.state, peer, message, now, known,
                                                     room=self.probation_room(peer))
            else:
                reply, changes = self.machine.on_result(aj.state, peer, message, now, known,
                                                        signed=message.signed_by(self.peers, peer))
            await self._apply(aj, changes)
            return reply

    def quarantined(self, peer: str, *, verified: bool = False) -> bool:
        return trust.quarantined(self.reputation.get(peer, trust.Standing()), self.machine.quarantine_after,
                                 self.clock(), verified=verified)

    def on_probation(self, peer: str) -> bool:
        return trust.on_probation(self.reputation.get(peer, trust.Standing()), self.machine.quarantine_after,
                                  self.clock())

    def probation_room(self, peer: str) -> int | None:
        """The verified work ``peer`` may still take here, jobs and sweeps together, while on probation (None:
        it is not): ``trust.PROBATION_WORK`` less the job slots it bids on or holds till their verdicts, and
        sweep indexes. Asked in its ``probation_turn``."""
        if not self.on_probation(peer):
            return None
        held = sum(1 for aj in self._live.values() for x in aj.state.executions.values()
                   if x.node_id == peer and x.state in (ExecutionState.BIDDING, ExecutionState.ACCEPTED,
                                                        ExecutionState.PROPOSED))
        return max(0, trust.PROBATION_WORK - held - self.sweep_work(peer))

    @contextlib.asynccontextmanager
    async def probation_turn(self, peer: str) -> AsyncIterator[None]:
        """Held around a bid or claim of a node on probation, from ``probation_room`` until what it took is
        written and tracked: five bids at once each found room, as none had been written yet. Taken without a
        schedule point when free, so its bids race others' as before."""
        if not self.quarantined(peer):  # for any work: a quarantine may lapse while its bids wait for their jobs
            yield
            return
        try:
            self._probation.acquire_nowait()
        except trio.WouldBlock:
            await self._probation.acquire()
        try:
            yield
        finally:
            self._probation.release()

    async def penalize(self, peer: str, reason: str) -> None:
        """Count a refused message against ``peer`` as a rejected result (quarantine follows)."""
        self.counters["penalties"] += 1
        log.warning("refused from %s: %s", peer, reason)
        await self._judge({peer: (0, 1)})

    async def credit(self, peers: list[str]) -> None:
        """Count verified results (a sweep's) for their nodes, in one write: as a job's are, so a node's good
        work weighs against its rejections (``trust.quarantined``)."""
        await self._judge({peer: (n, 0) for peer, n in Counter(peers).items()})

    async def _judge(self, added: dict[str, tuple[int, int]]) -> None:
        now = self.clock()
        self._add_reputation(added, now)
        await self.store.save(reputation=added, judged_at=now)

    def _add_reputation(self, added: dict[str, tuple[int, int]], at: float) -> None:
        """Add to peers' counts here what is added to them in the store: changes, never counts read earlier,
        so two decisions about one peer both count."""
        for peer, (accepted, rejected) in added.items():
            was = self.reputation.get(peer, trust.Standing())
            self.reputation[peer] = trust.Standing(was.accepted + accepted, was.rejected + rejected,
                                                   max(was.rejected_at, at) if rejected else was.rejected_at)

    # -- deadlines, re-announcements, liveness ----------------------------------------------------

    def _to_tick(self, now: float) -> list[tuple[str, _Active]]:
        """The jobs a deadline or an announcement is due for (``Tracked.due``), and every FULL_PASS all of them:
        ticking thousands of waiting jobs every TICK would take most of the CPU."""
        if trio.current_time() < self._next_full_pass:
            return [(job_id, aj) for job_id, aj in self._live.items() if aj.due <= now]
        self._next_full_pass = trio.current_time() + FULL_PASS
        self._waiting = self.waiting()
        return list(self._live.items())

    async def _tick(self, aj: _Active) -> None:
        now = self.clock()
        if aj.woken:
            aj.state, aj.woken = replace(aj.state, next_announce=min(aj.state.next_announce, now), woken_at=now), False
        await self._apply(aj, self.machine.tick(aj.state, now, self._known()))

    async def _liveness_loop(self) -> None:
        """Ask each node running our executions whether it still is: one query per node (never per job),
        at most one in flight per node."""
        while True:
            await trio.sleep(LIVENESS_INTERVAL)
            by_node: dict[str, list[Execution]] = {}
            running: set[str] = set()
            since: dict[str, float] = {}
            now, wall = trio.current_time(), self.clock()
            for aj in self._live.values():
                for x in aj.state.executions.values():
                    if x.state is ExecutionState.ACCEPTED and x.node_id != self.peers.node_id:
                        running.add(x.node_id)
                        # first seen: running since its record says, as far as a pass can have missed
                        seen = self._running_since.get(x.id)
                        since[x.id] = seen if seen is not None else now - min(max(wall - x.updated_at, 0.0),
                                                                              LIVENESS_INTERVAL)
                        if now - since[x.id] > LIVENESS_INTERVAL:
                            by_node.setdefault(x.node_id, []).append(x)
            # only the nodes running our executions are asked after: a peer id that merely wrote once is dropped
            self._last_heard = {node: at for node, at in self._last_heard.items() if node in running}
            self._running_since = since
            for node, executions in by_node.items():
                if node not in self._checking:
                    self._checking.add(node)
                    self._tasks.spawn(self._check_node, node, executions)

    async def _check_node(self, node: str, executions: list[Execution]) -> None:
        """Re-offer the executions ``node`` no longer knows, or all of them once it is silent too long
        (measured from the last time we heard from it at all). A node running many asks in several queries."""
        try:
            for part in query_parts([x.id for x in executions]):
                some = executions[part]
                try:
                    reply = await self.peers.request(node, StatusQuery(execution_ids=[x.id for x in some]),
                                                     timeout=LIVENESS_TIMEOUT)
                except PeerError:
                    heard = self._last_heard.get(node, self._up_since)
                    for x in executions[part.start:]:
                        silent = trio.current_time() - max(heard, self._running_since.get(x.id, self._up_since))
                        await self._lose(x, f"node {node[-8:]} silent for {silent:.0f} s", silent)
                    return
                self._last_heard[node] = trio.current_time()
                for x in some:
                    if reply.states.get(x.id, "unknown") == "unknown":
                        await self._lose(x, f"node {node[-8:]} no longer knows the execution")
        finally:
            self._checking.discard(node)

    async def _lose(self, x: Execution, reason: str, silent: float | None = None) -> None:
        aj = self._live.get(x.job_id)
        if aj is not None:
            async with aj.lock:
                if not aj.done.is_set():
                    await self._apply(aj, self.machine.lose(aj.state, x.id, reason, self.clock(), self._known(),
                                                            silent=silent))
