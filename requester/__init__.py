"""The requester role: owns each job from submission to a terminal state."""

from requester.service import IdempotencyConflict, RequesterService, UnknownJob

__all__ = ["IdempotencyConflict", "RequesterService", "UnknownJob"]
