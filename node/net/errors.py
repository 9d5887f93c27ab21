"""Exceptions raised across the ``node.net`` boundary (never libp2p's own).

A request that gets no reply raises the names every role catches, from ``jobs.errors``:
``Unreachable`` when the dial or the stream fails, ``PeerTimeout`` when the peer does not answer
in time (both ``PeerError``). What is defined here is about the network itself.

    ShoalError (jobs)
    ├── NetworkError            the network cannot do what was asked: not running, a listen
    │                           address taken, libp2p failed underneath it
    └── MalformedMessage (jobs)
        └── RemoteProtocolError a peer broke the wire framing (bad length, oversized frame)
"""

from __future__ import annotations

from jobs.errors import MalformedMessage, ShoalError


class NetworkError(ShoalError):
    """The network cannot do what was asked: it is not running, or cannot start or go on."""


class RemoteProtocolError(MalformedMessage):
    """The remote side broke the wire protocol (oversized frame, bad length, …): malformed bytes
    one level below the messages, so the stream they came on is closed."""
