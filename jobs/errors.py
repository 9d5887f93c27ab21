"""Shoal's exception tree.

    ShoalError
    ├── InvalidTransition   we tried a state change the transition table forbids (our bug)
    ├── StaleState          a guarded write found another state or revision than expected
    ├── MalformedMessage    a peer sent bytes that do not decode to a valid message (their fault)
    ├── JobRejected         a job can never run here (no engine, too large) — carries the reason
    └── Unreachable         a peer did not answer a direct message in time (or the link broke)

libp2p's own errors are mapped to ``Unreachable`` in ``node`` and nowhere else; executor and
storage errors are mapped inside their adapters.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose."""


class InvalidTransition(ShoalError):
    def __init__(self, what: str, old: str, new: str) -> None:
        super().__init__(f"{what}: illegal transition {old} -> {new}")
        self.old, self.new = old, new


class StaleState(ShoalError):
    """A conditional update lost: the stored record is not in the state the writer expected."""


class MalformedMessage(ShoalError):
    """A remote peer sent something that is not a valid Shoal message."""


class JobRejected(ShoalError):
    """The job can never run on this network or node; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class Unreachable(ShoalError):
    """A direct message to ``peer_id`` got no reply (dial failed, stream broke, timeout)."""

    def __init__(self, peer_id: str, why: str = "") -> None:
        super().__init__(f"peer {peer_id[-8:]} unreachable{': ' + why if why else ''}")
        self.peer_id = peer_id
