"""What the job and sweep services share: their errors, idempotent submit, signature checks,
background sends and the tick loop."""

from __future__ import annotations

import base64
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import TypeVar

import trio

from jobs import DuplicateKey, PeerError, ShoalError
from jobs.messages import Cancel, Claim, Decision, Peers, Reply, Result
from node.tasks import backoff, retry

log = logging.getLogger("shoal.requester")

T = TypeVar("T")
L = TypeVar("L", bound="Live")
REQUEST_TIMEOUT = 5.0


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
        if key is not None:
            found = await find(owner, key)
            if found is not None:
                made, known_digest = found
                if known_digest != digest:
                    raise IdempotencyConflict(f"idempotency key {key!r} was used for another {what}")
                return made, False
        try:
            return await create(), True
        except DuplicateKey:
            if key is None:
                raise


def signed_by(peers: Peers, peer: str, msg: Result | Claim) -> bool:
    """Whether a result or claim carries ``peer``'s own signature over what it states."""
    try:
        signature = base64.urlsafe_b64decode(msg.signature)
    except ValueError:
        return False
    return peers.verify(peer, msg.statement(), signature)


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


async def tick_forever(interval: float, live: Callable[[], Iterable[tuple[str, L]]],
                       tick: Callable[[L], Awaitable[None]], what: str) -> None:
    """Every ``interval`` seconds, ``tick`` each live job or sweep (id, it) under its lock; a failure is logged."""
    while True:
        await trio.sleep(interval)
        for name, item in list(live()):
            try:
                async with item.lock:
                    if not item.done.is_set():
                        await tick(item)
            except Exception:
                log.exception("ticking %s %s", what, name)
