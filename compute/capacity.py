"""Total vs per-job limits, and reservations held on behalf of executions."""

from __future__ import annotations

from dataclasses import dataclass

from jobs import Resources


@dataclass(frozen=True)
class CapacityStatistics:
    total: Resources
    used: Resources
    free: Resources
    max_per_job: Resources
    reservations: int


class CapacityTracker:
    """``max_per_job`` answers "could it ever run here?"; ``try_reserve`` answers "now?"."""

    def __init__(self, total: Resources, max_per_job: Resources | None = None) -> None:
        self.total = total
        self.max_per_job = max_per_job or total
        self._held: dict[str, Resources] = {}
        self._used = Resources(cpu=0, memory=0, disk=0, gpu=0)
        self.free = total  # kept up to date: asked for every backlog entry, built only on changes

    def try_reserve(self, holder: str, need: Resources) -> bool:
        """Reserve ``need`` (at least what any run takes here: ``Resources.reserved``) for ``holder`` if it
        fits in what is free now. Never blocks."""
        if holder in self._held:
            return True
        need = need.reserved(self.max_per_job)
        if not need.fits_in(self.free):
            return False
        self._held[holder] = need
        self._used = self._used + need
        self.free = self.total - self._used
        return True

    def release(self, holder: str) -> bool:
        """Give back what ``holder`` reserved; False if it held nothing (safe to call twice)."""
        need = self._held.pop(holder, None)
        if need is None:
            return False
        self._used = self._used - need
        self.free = self.total - self._used
        return True

    def statistics(self) -> CapacityStatistics:
        return CapacityStatistics(self.total, self._used, self.free, self.max_per_job, len(self._held))
