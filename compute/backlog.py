"""Offers a compute node had no room for, held to bid on (or claim) later: bounded in number and in bytes,
as every entry holds its job's whole spec, which may carry a megabyte of inline code.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

from pydantic import BaseModel

V = TypeVar("V")
Key = tuple[str, str]  # (requester, job or sweep id)

MAX_BYTES = 128 * 1024**2  # of specs held at once, by default


def spec_bytes(spec: BaseModel) -> int:
    """What holding ``spec`` (a job's, or a sweep's) costs, about: its JSON's length."""
    return len(spec.model_dump_json())


class Backlog(OrderedDict[Key, V], Generic[V]):
    """An ordered map of held offers, keyed by (requester, id), that holds no more than ``max_entries`` or
    ``max_bytes``. A refresh of a held key keeps its place. Entries leave through ``del``, ``pop`` or
    ``popitem``, which give their bytes back, as does ``clear``.

    A requester alone may fill it; once full, an offer of a requester holding less takes the place of the
    newest entry of the one holding most (its weight: its bytes, each entry counted as at least its share
    of ``max_bytes``), so that one requester's flood does not keep every other's jobs out."""

    def __init__(self, max_entries: int, max_bytes: int = MAX_BYTES) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.added = 0  # new keys held so far (a refresh is not one): what fits may have changed
        self._sizes: dict[Key, int] = {}
        self._unit = max(1, max_bytes // max(1, max_entries))
        self._keys: dict[str, dict[Key, None]] = {}  # requester -> its keys, oldest first
        self._weights: dict[str, int] = {}  # requester -> what its entries weigh
        # (-weight, requester), some of them stale: the heaviest requester without a scan of them all
        self._heaviest: list[tuple[int, str]] = []

    def offer(self, key: Key, value: V, size: int) -> bool:
        """Hold ``value`` under ``key`` (``size`` bytes); False, holding nothing new, when it would not fit."""
        held = self._sizes.get(key)
        if size > self.max_bytes:
            return False
        owner = key[0]
        weight = self._weights.get(owner, 0) + self._weight(size) - (0 if held is None else self._weight(held))
        entries = int(held is None and len(self) >= self.max_entries)
        excess = self.bytes - (held or 0) + size - self.max_bytes
        if entries or excess > 0:
            drop = self._evictions(owner, weight, entries, excess)
            if drop is None:
                return False
            for victim in drop:
                del self[victim]
        self[key] = value
        self.bytes += size - (held or 0)
        self._sizes[key] = size
        self._keys.setdefault(owner, {})[key] = None
        self._weigh(owner, weight)
        self.added += held is None
        return True

    def _evictions(self, owner: str, weight: int, entries: int, excess: int) -> list[Key] | None:
        """The entries to drop so that ``entries`` more fit and ``excess`` bytes go: each the newest of the
        requester weighing most, while it weighs more than ``owner`` would (``weight``). None: the offer does
        not fit so, and nothing may be dropped (a refused offer must cost no one their entries)."""
        weights: dict[str, int] = {}  # as they would be after the drops so far
        newest: dict[str, Iterator[Key]] = {}
        heap, drop = self._heaviest.copy(), []
        while entries > 0 or excess > 0:
            while heap and -heap[0][0] != weights.get(heap[0][1], self._weights.get(heap[0][1])):
                heapq.heappop(heap)  # stale
            if not heap or heap[0][1] == owner or -heap[0][0] <= weight:
                return None
            heaviest = heap[0][1]
            victim = next(newest.setdefault(heaviest, reversed(self._keys[heaviest])))
            drop.append(victim)
            entries, excess = entries - 1, excess - self._sizes[victim]
            weights[heaviest] = -heap[0][0] - self._weight(self._sizes[victim])
            heapq.heappush(heap, (-weights[heaviest], heaviest))
        return drop

    def _weight(self, size: int) -> int:
        return max(size, self._unit)

    def _weigh(self, owner: str, weight: int) -> None:
        if weight:
            self._weights[owner] = weight
            heapq.heappush(self._heaviest, (-weight, owner))
        else:
            del self._weights[owner], self._keys[owner]
        if len(self._heaviest) > 2 * len(self._weights) + 64:  # mostly stale: start it again
            self._heaviest = [(-w, o) for o, w in self._weights.items()]
            heapq.heapify(self._heaviest)

    def __delitem__(self, key: Key) -> None:
        super().__delitem__(key)
        if (size := self._sizes.pop(key, None)) is None:
            return  # set directly, not offered: it weighed nothing
        self.bytes -= size
        owner = key[0]
        del self._keys[owner][key]
        self._weigh(owner, self._weights[owner] - self._weight(size))

    def pop(self, key: Key, *default: object) -> object:  # type: ignore[override]
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self, last: bool = True) -> tuple[Key, V]:
        if not self:
            raise KeyError("the backlog is empty")
        key = next(reversed(self)) if last else next(iter(self))
        value = self[key]
        del self[key]
        return key, value

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self._keys.clear()
        self._weights.clear()
        self._heaviest.clear()
        self.bytes = 0
