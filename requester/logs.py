"""Running jobs' output as their compute nodes send it, for ``shoal logs -f``.

Bounded and in memory only: live output is shown, never recorded. The signed result, verified as
before, stays the job's record; a follower is sent the rest of it once the job ends.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

import trio

from jobs.messages import LIVE_CAP, Output, Reply

KEEP = 256 * 1024  # bytes of each stream kept per job: a follower further behind skips ahead
BUDGET = 64 * 1024**2  # bytes kept over all jobs; the jobs written to longest ago are forgotten first


@dataclass
class _Stream:
    start: int = 0  # the stream offset of buf[0]
    buf: bytearray = field(default_factory=bytearray)

    @property
    def end(self) -> int:
        return self.start + len(self.buf)


@dataclass
class _JobOutput:
    execution_id: str  # whose output is shown: the first execution to send any
    streams: dict[str, _Stream] = field(default_factory=lambda: {"stdout": _Stream(), "stderr": _Stream()})
    changed: trio.Event = field(default_factory=trio.Event)

    @property
    def size(self) -> int:
        return sum(len(s.buf) for s in self.streams.values())


class LiveOutputs:
    """What running executions wrote, by job. ``take`` is the only way in and checks the sender."""

    def __init__(self, *, keep: int = KEEP, budget: int = BUDGET) -> None:
        self.keep = keep
        self.budget = budget
        self._jobs: OrderedDict[str, _JobOutput] = OrderedDict()  # least recently written first
        self._size = 0

    def take(self, sender: str, message: Output, runner: str | None) -> Reply:
        """Keep ``message`` if it continues its stream. ``runner``: the node running that execution of a
        live job (None: no such running execution). Rejected means: send this execution's output no more."""
        if runner != sender:
            return Reply(ok=False, verdict="rejected", reason="no running execution of yours by that id")
        if message.offset + len(message.data) > LIVE_CAP:  # each follower is sent it: no node streams without end
            return Reply(verdict="rejected", reason=f"live output ends after {LIVE_CAP} bytes of a stream")
        job = self._jobs.setdefault(message.job_id, _JobOutput(message.execution_id))
        if job.execution_id != message.execution_id:
            return Reply(verdict="rejected", reason="another execution's output is shown")
        stream = job.streams[message.stream]
        if message.offset > stream.end:  # a part the node could not deliver is lost: skip ahead
            self._size -= len(stream.buf)
            stream.start, stream.buf = message.offset, bytearray()
        new = message.data[stream.end - message.offset:]  # a re-sent overlap is kept once
        if new:
            stream.buf += new
            self._size += len(new)
            cut = max(0, len(stream.buf) - self.keep)
            del stream.buf[:cut]
            stream.start += cut
            self._size -= cut
            self._jobs.move_to_end(message.job_id)
            job.changed.set()
            job.changed = trio.Event()
            self._evict()
        return Reply(verdict="accepted")

    def read(self, job_id: str, stream: str, offset: int) -> tuple[int, bytes]:
        """(where the bytes start, the bytes) of ``stream`` from ``offset`` on, as far as held: from
        the oldest byte held when ``offset`` is older."""
        job = self._jobs.get(job_id)
        if job is None:
            return offset, b""
        s = job.streams[stream]
        start = max(offset, s.start)
        return start, bytes(s.buf[start - s.start:])

    def changed(self, job_id: str) -> trio.Event | None:
        """Set when the job's output next grows (None: none yet; poll)."""
        job = self._jobs.get(job_id)
        return job.changed if job else None

    def forget(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._size -= job.size
            job.changed.set()

    def _evict(self) -> None:
        while self._size > self.budget and len(self._jobs) > 1:
            self.forget(next(iter(self._jobs)))  # the least recently written
