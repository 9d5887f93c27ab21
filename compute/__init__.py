"""The compute role: decides what to bid on, runs it within limits, reports results."""

from compute.capacity import CapacityTracker
from compute.service import ComputeService

__all__ = ["CapacityTracker", "ComputeService"]
