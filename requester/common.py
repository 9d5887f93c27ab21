"""What the job and sweep services share: their errors, idempotent submit, background sends, and the live
jobs or sweeps they drive."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import trio

from jobs import DuplicateKey, Job, PeerError, ShoalError
from jobs.messages import Cancel, Decision, Peers, Reply
from jobs.sweep import Sweep
from node.tasks import Spawner, backoff, retry
from requester.machine import TICK, Changes
from requester.ports import RequesterStore

log = logging.getLogger("shoal.requester")

T = TypeVar("T", Job, Sweep)  # what a submit makes
L = TypeVar("L", bound="Live")
REQUEST_TIMEOUT = 5.0


@dataclass(frozen=True)
class InFlight:
    """A client's live jobs or sweeps on this node: how many, and the bytes of their specs (each held in
    memory and announced again while it waits). The API's quotas bound both."""

    count: int = 0
    spec_bytes: int = 0

    def __add__(self, other: InFlight) -> InFlight:
        return InFlight(self.count + other.count, self.spec_bytes + other.spec_bytes)


class UnknownJob(ShoalError):
    """No job or sweep with this id here; ``args[0]`` is the id."""


class IdempotencyConflict(ShoalError):
    """The idempotency key was used before with another request body."""


async def submit_once(find: Callable[[str, str], Awaitable[tuple[T, str] | None]], create: Callable[[], Awaitable[T]],
                      *, owner: str, key: str | None, digest: str, what: str) -> tuple[T, bool]:
    """Create a job or sweep once per idempotency ``key``: returns (it, created).

    A repeat with the same request body returns the first one; with another body it is a conflict.
    A concurrent submit with the same key that wins the store's unique index is found on a second look.
    """
    while True:
        if key is not None and (found := await find(owner, key)) is not None:
            made, known_digest = found
            if known_digest != digest:
                raise IdempotencyConflict(f"idempotency key {key!r} was used for another {what} ({made.id})")
            return made, False
        try:
            return await create(), True
        except DuplicateKey:
            if key is None:
                raise


async def deliver(peers: Peers, peer: str, message: Decision | Cancel, *,
                  delays: Iterable[float] | None = None) -> Reply | None:
    """Send ``message`` until ``peer`` answers (a few tries, backing off); None when it never did."""
    try:
        return await retry(lambda: peers.request(peer, message, timeout=REQUEST_TIMEOUT),
                           backoff(0.2, attempts=5) if delays is None else delays)
    except PeerError as e:  # the last try's failure
        log.info("gave up sending %s to %s: %s", message.kind, peer, e)
        return None


@dataclass(eq=False)
class Live:
    """A job or sweep being driven: one decision at a time, and a signal when it ends."""

    lock: trio.Lock = field(default_factory=trio.Lock, init=False)
    done: trio.Event = field(default_factory=trio.Event, init=False)


class Driver(Generic[L]):
    """A service driving live jobs or sweeps (``what``) by id: each ticked every TICK under its lock."""

    penalize: Callable[[str, str], Awaitable[None]]  # (peer, why): a refused message counts against the peer
    credit: Callable[[list[str]], Awaitable[None]]  # peers whose results were verified count them in their favour

    def __init__(self, what: str, peers: Peers, store: RequesterStore, clock: Callable[[], float],
                 counters: str) -> None:
        self.what = what
        self.peers = peers
        self.store = store
        self.clock = clock
        self.counters = Counter(dict.fromkeys(counters.split(), 0))
        self._live: dict[str, L] = {}
        self._tasks = Spawner(f"{what}s")

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._tasks.attach(nursery)
            await self._restore()
            if self._live:
                log.info("resuming %d live %ss", len(self._live), self.what)
            nursery.start_soon(self._tick_forever)
            task_status.started()

    async def _restore(self) -> None:
        raise NotImplementedError

    async def _tick(self, item: L) -> None:
        raise NotImplementedError

    def _to_tick(self, now: float) -> list[tuple[str, L]]:
        """The live items to tick now, by id: all of them, unless a service knows which are due."""
        return list(self._live.items())

    async def _tick_forever(self) -> None:
        while True:
            await trio.sleep(TICK)
            for name, item in self._to_tick(self.clock()):
                try:
                    async with item.lock:
                        if not item.done.is_set():
                            await self._tick(item)
                except Exception:
                    log.exception("ticking %s %s", self.what, name)

    async def _tally(self, changes: Changes) -> None:
        """Count what a decision counted; hold what it refused against the sender, what it verified for it."""
        self.counters.update(changes.counts)
        for peer, why in changes.penalties:
            await self.penalize(peer, why)
        if changes.credits:
            await self.credit(changes.credits)

    async def wait(self, name: str, timeout: float) -> None:
        item = self._live.get(name)
        if item is not None:
            with trio.move_on_after(timeout):
                await item.done.wait()
