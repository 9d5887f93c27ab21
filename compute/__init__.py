"""The compute role: decides what to bid on, runs it within limits, reports results.

Decisions live in ``machine`` (jobs) and ``claims`` (sweeps), with no I/O; ``service`` is the
trio shell that stores, runs and sends what they decide.
"""

from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from compute.service import ComputeService, ComputeStore

__all__ = ["CapacityTracker", "ComputeMachine", "ComputeService", "ComputeStore"]
