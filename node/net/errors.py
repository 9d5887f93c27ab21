"""Exceptions raised across the ``node.net`` boundary (never libp2p's own)."""

from __future__ import annotations


class NetworkError(Exception):
    """Base class for every error ``node.net`` raises."""


class PeerUnreachable(NetworkError):
    """A request could not be delivered or answered: dial or stream failure,
    timeout, or the peer closed the stream before replying."""

    def __init__(self, peer_id: str, reason: str = "") -> None:
        self.peer_id = peer_id
        self.reason = reason
        super().__init__(f"peer {peer_id} unreachable" + (f": {reason}" if reason else ""))


class RemoteProtocolError(NetworkError):
    """The remote side broke the wire protocol (oversized frame, bad length, …)."""
