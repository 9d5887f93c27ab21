"""Wakes the readers of a job's event log when the store writes new events for that job.

An event stream (``GET /v1/jobs/{id}/events``) listens on its job's bell instead of reading
SQLite over and over: the store rings the bell of every job whose events a committed write
added, and each listener then reads what is new. The number of jobs listened to is bounded
(``limit``); past it a listener gets no bell and falls back to reading on a timer.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import trio

MAX_BELLS = 10_000  # jobs with listeners at once; past it, streams poll (see EventBell.listening)


class _Bell:
    __slots__ = ("event", "listeners")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.listeners = 0


class EventBell:
    """One ``trio.Event`` per job that has listeners; a ring sets it and puts a fresh one in place."""

    def __init__(self, limit: int = MAX_BELLS) -> None:
        self.limit = limit
        self._bells: dict[str, _Bell] = {}

    def __len__(self) -> int:
        return len(self._bells)

    @contextmanager
    def listening(self, job_id: str) -> Iterator[_Listener]:
        """``with bell.listening(job): ... listener.next_ring()``: the listener is counted until
        the block ends, so an abandoned stream leaves no bell behind."""
        bell = self._bells.get(job_id)
        if bell is None and len(self._bells) < self.limit:
            bell = self._bells[job_id] = _Bell()
        if bell is None:
            yield _Listener(self, job_id, subscribed=False)
            return
        bell.listeners += 1
        try:
            yield _Listener(self, job_id, subscribed=True)
        finally:
            bell.listeners -= 1
            if bell.listeners == 0 and self._bells.get(job_id) is bell:
                del self._bells[job_id]

    def ring(self, job_ids: Iterable[str]) -> None:
        """Wake every listener of these jobs (called once their events are committed)."""
        for job_id in set(job_ids):
            bell = self._bells.get(job_id)
            if bell is not None:
                bell.event.set()
                bell.event = trio.Event()

    def _event(self, job_id: str) -> trio.Event | None:
        bell = self._bells.get(job_id)
        return bell.event if bell is not None else None


class _Listener:
    def __init__(self, owner: EventBell, job_id: str, *, subscribed: bool) -> None:
        self._owner = owner
        self._job_id = job_id
        self.subscribed = subscribed

    def next_ring(self) -> trio.Event | None:
        """The event the next ring sets; take it *before* reading the log, so that a write
        committed between the read and the wait is not missed. None: no bell (over the limit)."""
        return self._owner._event(self._job_id) if self.subscribed else None
