"""Cheaper signed peer records in py-libp2p's pubsub (applied once, by ``node.net.host``).

Every pubsub RPC carries the sender's signed peer record. py-libp2p rebuilds ours for each RPC
it sends (listing and parsing our listen addresses) and checks the Ed25519 signature of the
peer's for each one it receives; with one announcement per job that was about a quarter of the
gossip code's CPU under load (py-spy, ``shoal bench``). A peer sends the same bytes until its
addresses change, so:

- received: a record already verified for that peer (same bytes) is not verified again for
  ``VERIFIED_TTL`` seconds; new or changed bytes are checked exactly as before;
- sent: our own record is reused for ``OWN_RECORD_TTL`` seconds before asking libp2p again
  (which re-issues it when our addresses changed).

What goes on the wire is unchanged, so nodes with and without this interoperate.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

from libp2p.pubsub import gossipsub, pubsub

VERIFIED_TTL = 600.0
OWN_RECORD_TTL = 5.0
MAX_VERIFIED = 4096

_Consume = Callable[[Any, Any, Any], bool]
_Issue = Callable[[Any], tuple[bytes, bool]]


def remember_verified(consume: _Consume, clock: Callable[[], float] = time.monotonic) -> _Consume:
    """Wrap ``maybe_consume_signed_record``: skip records this peer already proved."""
    verified: OrderedDict[tuple[bytes, bytes], float] = OrderedDict()

    def maybe_consume_signed_record(msg: Any, host: Any, peer_id: Any) -> bool:
        if not msg.HasField("senderRecord"):
            return True
        key = (peer_id.to_bytes(), msg.senderRecord)
        now = clock()
        at = verified.get(key)
        if at is not None and now - at < VERIFIED_TTL:
            return True
        ok = consume(msg, host, peer_id)
        if ok:
            verified[key] = now
            verified.move_to_end(key)
            while len(verified) > MAX_VERIFIED:
                verified.popitem(last=False)
        return ok

    return maybe_consume_signed_record


def reuse_own(issue: _Issue, clock: Callable[[], float] = time.monotonic) -> _Issue:
    """Wrap ``env_to_send_in_RPC``: our record, asked for again at most every few seconds."""
    cached: WeakKeyDictionary[Any, tuple[float, bytes]] = WeakKeyDictionary()  # host -> (when, envelope)

    def env_to_send_in_RPC(host: Any) -> tuple[bytes, bool]:
        now = clock()
        hit = cached.get(host)
        if hit is not None and now - hit[0] < OWN_RECORD_TTL:
            return hit[1], False
        envelope, fresh = issue(host)
        cached[host] = (now, envelope)
        return envelope, fresh

    return env_to_send_in_RPC


def install() -> None:
    """Patch both pubsub modules (idempotent)."""
    if getattr(pubsub, "_shoal_records_installed", False):
        return
    consume = remember_verified(pubsub.maybe_consume_signed_record)
    issue = reuse_own(pubsub.env_to_send_in_RPC)
    for module in (pubsub, gossipsub):
        module.maybe_consume_signed_record = consume  # type: ignore[attr-defined]
        module.env_to_send_in_RPC = issue  # type: ignore[attr-defined]
    pubsub._shoal_records_installed = True  # type: ignore[attr-defined]
