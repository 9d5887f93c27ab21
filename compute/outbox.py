"""What the compute role sends to requesters: messages signed with the node's key, sent until a verdict.

Bids, results (jobs) and claims (sweeps) all ask the requester for a verdict; ``request_verdict``
is the one way they do, retrying over the caller's delays.
"""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterable, Sequence
from typing import TypeVar

from jobs import Unreachable
from jobs.messages import Bid, Claim, Peers, Reply, Result
from node.tasks import retry

log = logging.getLogger("shoal.compute")

REQUEST_TIMEOUT = 5.0

Signed = TypeVar("Signed", Result, Claim)


def signed(message: Signed, peers: Peers) -> Signed:
    """``message`` with this node's signature over its statement."""
    signature = base64.urlsafe_b64encode(peers.sign(message.statement())).decode()
    return message.model_copy(update={"signature": signature})


async def request_verdict(peers: Peers, requester: str, message: Bid | Result | Claim, *,
                          addrs: Sequence[str] = (), delays: Iterable[float] = ()) -> Reply:
    """Send ``message`` until ``requester`` gives a verdict, sleeping ``delays`` between tries (none: once).

    An answer without a verdict (the requester is still starting, or failed internally) counts as
    silence: only the requester's explicit word ends the exchange.

    Raises:
        PeerError: no verdict by the last try.
    """
    async def once() -> Reply:
        reply = await peers.request(requester, message, timeout=REQUEST_TIMEOUT, addrs=addrs)
        if reply.verdict is None:
            log.info("no verdict from %s on %s (%s)", requester[-8:], message.kind, reply.reason)
            raise Unreachable(requester, f"no verdict: {reply.reason}")
        return reply

    return await retry(once, delays)
