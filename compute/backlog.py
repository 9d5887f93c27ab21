"""Jobs this node could run but had no room for when they were announced.

FIFO with a stated bound; an entry lives until its bid deadline or until it has not been
re-announced for ``stale_after`` seconds (the requester stops re-announcing a job once it
has its nodes, so a stale entry is almost surely taken).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

from jobs.messages import Announce


@dataclass(frozen=True)
class BacklogStatistics:
    size: int
    capacity: int
    refused: int
    expired: int


class Backlog:
    def __init__(self, capacity: int, stale_after: float = 120.0) -> None:
        self.capacity = capacity
        self.stale_after = stale_after
        # keyed by (requester, job id): a peer announcing another requester's job id shadows nothing
        self._entries: OrderedDict[tuple[str, str], tuple[Announce, float]] = OrderedDict()
        self._refused = 0
        self._expired = 0

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    def add(self, announce: Announce, now: float) -> bool:
        """Remember (or refresh) a job; False when full (counted)."""
        if announce.key in self._entries:
            self._entries[announce.key] = (announce, now)  # refresh; keeps its place in line
            return True
        if len(self._entries) >= self.capacity:
            self._refused += 1
            return False
        self._entries[announce.key] = (announce, now)
        return True

    def discard(self, key: tuple[str, str]) -> None:
        self._entries.pop(key, None)

    def pending(self, now: float) -> list[Announce]:
        """Live entries in arrival order; drops expired ones."""
        out = []
        for key, (ann, seen) in list(self._entries.items()):
            if (ann.bid_deadline is not None and now > ann.bid_deadline) or now - seen > self.stale_after:
                del self._entries[key]
                self._expired += 1
            else:
                out.append(ann)
        return out

    def statistics(self) -> BacklogStatistics:
        return BacklogStatistics(len(self._entries), self.capacity, self._refused, self._expired)
