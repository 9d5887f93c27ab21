"""Offers a compute node had no room for, held to bid on (or claim) later: bounded in number and in bytes.

Every entry holds its job's whole spec, and a spec may carry a megabyte of inline code: a peer sending
offers of 900 KB grew a node from 390 MB to 2.1 GB in 18 s, and the count alone (10,000) allowed 9 GB.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

from pydantic import BaseModel

K = TypeVar("K")
V = TypeVar("V")

MAX_BYTES = 128 * 1024**2  # of specs held at once, by default


def spec_bytes(spec: BaseModel) -> int:
    """What holding ``spec`` (a job's, or a sweep's) costs, about: its JSON's length."""
    return len(spec.model_dump_json())


class Backlog(OrderedDict[K, V], Generic[K, V]):
    """An ordered map of held offers that refuses new ones beyond ``max_entries`` or ``max_bytes``. A refresh
    of a held key keeps its place. Entries leave through ``del``, ``pop`` or ``popitem``, which give their
    bytes back, as does ``clear``."""

    def __init__(self, max_entries: int, max_bytes: int = MAX_BYTES) -> None:
        super().__init__()
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.added = 0  # new keys held so far (a refresh is not one): what fits may have changed
        self._sizes: dict[K, int] = {}

    def offer(self, key: K, value: V, size: int) -> bool:
        """Hold ``value`` under ``key`` (``size`` bytes); False, holding nothing new, when it would not fit."""
        held = self._sizes.get(key)
        if held is None and len(self) >= self.max_entries:
            return False
        if self.bytes - (held or 0) + size > self.max_bytes:
            return False
        self[key] = value
        self.bytes += size - (held or 0)
        self._sizes[key] = size
        self.added += held is None
        return True

    def __delitem__(self, key: K) -> None:
        super().__delitem__(key)
        self.bytes -= self._sizes.pop(key, 0)

    def pop(self, key: K, *default: object) -> object:  # type: ignore[override]
        if key in self:
            value = self[key]
            del self[key]
            return value
        if default:
            return default[0]
        raise KeyError(key)

    def popitem(self, last: bool = True) -> tuple[K, V]:
        if not self:
            raise KeyError("the backlog is empty")
        key = next(reversed(self)) if last else next(iter(self))
        value = self[key]
        del self[key]
        return key, value

    def clear(self) -> None:
        super().clear()
        self._sizes.clear()
        self.bytes = 0
