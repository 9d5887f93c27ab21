"""The task helpers every service shares: a bounded spawner, one retry loop, and how blocking work runs.

A role's background work (sending a decision, cancelling a claim, delivering a result) is spawned
into the service's nursery through a ``Spawner``, which bounds how many run at once and keeps one
task's failure to that task; and every
"send until it gets through" is ``retry`` over a ``backoff`` schedule, instead of a hand-written loop.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol, TypeVar, TypeVarTuple

import trio

from jobs.errors import PeerError

log = logging.getLogger("shoal.node")

T = TypeVar("T")
Args = TypeVarTuple("Args")


class RunBlocking(Protocol):
    """How a service runs a blocking call (SQLite, the file system): ``trio.to_thread.run_sync`` in a node.

    An in-memory test network runs the call inline instead, so that a virtual clock, which jumps
    to the next deadline whenever every task waits, never jumps while a worker thread is busy.
    """

    async def __call__(self, fn: Callable[[*Args], T], /, *args: *Args,
                       limiter: trio.CapacityLimiter | None = None) -> T: ...


class Spawner:
    """Starts background tasks in a service's nursery, at most ``limit`` running at once.

    Tasks beyond the limit wait for a slot (they do not fail), so a burst of peers cannot make a
    node run an unbounded number of sends at the same time. A task that raises is logged and ends
    alone: most are started by what a peer sent, and no peer's message may end the service (the
    nursery) with it, as a request handler's exception ends only that request.
    """

    def __init__(self, name: str, limit: int = 256) -> None:
        self.name = name
        self._limiter = trio.CapacityLimiter(limit)
        self._nursery: trio.Nursery | None = None

    def attach(self, nursery: trio.Nursery) -> None:
        self._nursery = nursery

    @property
    def running(self) -> int:
        return self._limiter.borrowed_tokens

    def spawn(self, fn: Callable[..., Awaitable[Any]], *args: Any) -> None:
        if self._nursery is None:
            raise RuntimeError(f"{self.name} is not running")
        self._nursery.start_soon(self._bounded, fn, args)

    async def _bounded(self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...]) -> None:
        async with self._limiter:
            try:
                await fn(*args)
            except Exception:
                log.exception("%s: background task %s failed", self.name, getattr(fn, "__qualname__", fn))


def backoff(first: float, *, factor: float = 2.0, cap: float = 5.0, attempts: int | None = None,
            give_up: float | None = None, clock: Callable[[], float] | None = None) -> Iterator[float]:
    """The delays between tries: ``first``, then times ``factor``, never above ``cap``.

    Bounded by ``attempts`` (that many tries, so one delay fewer) and/or by ``give_up``, a time on
    ``clock`` after which no try starts.
    """
    delay, tries = first, 1
    while attempts is None or tries < attempts:
        if give_up is not None and clock is not None and clock() + delay > give_up:
            return
        yield delay
        delay, tries = min(delay * factor, cap), tries + 1


async def retry(call: Callable[[], Awaitable[T]], delays: Iterable[float], *,
                retry_on: type[BaseException] | tuple[type[BaseException], ...] = PeerError) -> T:
    """Await ``call()`` until it returns; after each ``retry_on`` failure sleep the next delay.

    When the delays run out the last failure propagates, so the caller decides what giving up means.
    """
    for delay in delays:
        try:
            return await call()
        except retry_on:
            await trio.sleep(delay)
    return await call()
