"""The requester role: owns each job and sweep from submission to a terminal state.

``machine`` and ``sweep_machine`` decide, with no I/O, using the rules in ``trust``, ``selection``
and ``sweep_rules``; ``service`` and ``sweeps`` carry the decisions out (trio, the
store declared in ``ports``, the peers); ``common`` is what those two share.
"""

from requester.common import IdempotencyConflict, UnknownJob
from requester.service import RequesterService

__all__ = ["IdempotencyConflict", "RequesterService", "UnknownJob"]
