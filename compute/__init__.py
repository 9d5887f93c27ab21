"""The compute role: decides what to bid on, runs it within limits, reports results.

Decisions live in ``machine`` (jobs) and ``claims`` (sweeps), with no I/O; ``service`` is the
trio shell that stores, runs and sends what they decide.
"""

from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from compute.ports import ComputeStore
from compute.service import ComputeService

__all__ = ["CapacityTracker", "ComputeMachine", "ComputeService", "ComputeStore"]
