"""Shoal's exception tree.

    ShoalError
    ├── InvalidTransition   we tried a state change the transition table forbids (our bug)
    ├── StaleState          a guarded write found another state or revision than expected
    ├── MalformedMessage    a peer sent bytes that do not decode to a valid message (their fault)
    ├── JobRejected         a job can never run here (no engine, too large) — carries the reason
    ├── PeerError           a direct message to a peer got no reply (retryable)
    │   ├── Unreachable         the dial failed or the link broke
    │   ├── PeerTimeout         the peer did not answer in time
    │   └── Unsendable          the message was too large to send (not retryable)
    └── DuplicateKey        a write met a unique key already taken (e.g. an idempotency key)

Each layer hangs its own branch on ``ShoalError``, next to the code that raises it:
``storage.errors.StorageError`` (inputs and results), ``executors.base.ExecutorError`` (an engine
could not run the job), ``node.net.errors.NetworkError`` (the network itself; a peer's bad framing
is ``node.net.errors.RemoteProtocolError``, a ``MalformedMessage``), ``node.net.admission.AdmissionError``
(a network key or trusted-peers file), ``shoal._errors.ShoalAPIError`` (what the SDK raises) and
``shoal._context.ContextTooLarge``. ``tests/unit/test_exception_tree.py`` fails on any other root.

libp2p's own errors are mapped to ``Unreachable`` or ``PeerTimeout`` in ``node.net`` and nowhere
else; executor and storage errors are mapped inside their adapters.
"""

from __future__ import annotations


class ShoalError(Exception):
    """Base of every error Shoal raises on purpose.

    ``retryable`` says whether the same call may succeed later (a peer or service was away)
    rather than never (bad input, a rule said no).
    """

    retryable: bool = False


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


class PeerError(ShoalError):
    """A direct message to ``peer_id`` got no reply; catch this for "the peer did not answer"."""

    retryable = True

    def __init__(self, peer_id: str, why: str = "") -> None:
        super().__init__(f"peer {peer_id[-8:]} {self.what}{': ' + why if why else ''}")
        self.peer_id = peer_id
        self.why = why

    what = "did not answer"


class Unreachable(PeerError):
    """The dial failed, the stream broke, or the peer closed it before replying."""

    what = "unreachable"


class PeerTimeout(PeerError):
    """The peer was reached but did not answer within the timeout."""

    what = "timed out"


class Unsendable(PeerError):
    """The message exceeds what any peer reads (``jobs.messages.MAX_MESSAGE_BYTES``): it was not sent. A
    ``PeerError`` so that every sender handles it as the request that failed, which it is."""

    retryable = False
    what = "was not sent"


class DuplicateKey(ShoalError):
    """A write met a unique key already taken (the store raises this instead of sqlite's IntegrityError)."""
