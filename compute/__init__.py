"""The compute role: decides what to bid on, runs it within limits, reports results.

Decisions live in ``machine`` (jobs) and ``claims`` (sweeps), with no I/O; ``service`` and
``sweeps`` are the trio shells that store, run and send what those decide.
"""

from compute.capacity import CapacityTracker
from compute.machine import ComputeMachine
from compute.ports import ComputeStore
from compute.service import ComputeService

__all__ = ["CapacityTracker", "ComputeMachine", "ComputeService", "ComputeStore"]
