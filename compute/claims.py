"""One sweep claim's rules, with no I/O: how many indexes to ask for, when to report.

A node holds one claim per sweep, with as many slots (copies of the template's resources) as fit
(``ComputeMachine`` claims). It runs one index per slot and keeps a short queue: each report asks for
about as many indexes as the node finishes in two report intervals, so fast indexes (noop) come in large
ranges and slow ones one at a time (an idle node can then pick up the tail). Reports go out when results
are ready (at most every REPORT_INTERVAL), when the queue runs dry, and as a heartbeat that keeps the lease.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from jobs import Execution
from jobs.messages import IndexResult, Reply, SweepAnnounce

REPORT_INTERVAL = 0.25
BATCH_BYTES = 128 * 1024  # characters of output per Claim: even at 6 bytes each (JSON escapes) under 1 MiB


@dataclass
class Claim:
    ann: SweepAnnounce
    claim_id: str
    slots: list[str]  # capacity reservations, one per worker
    queue: deque[int] = field(default_factory=deque)
    results: list[IndexResult] = field(default_factory=list)
    running: set[int] = field(default_factory=set)
    finished_at: deque[float] = field(default_factory=lambda: deque(maxlen=10_000))
    exhausted: bool = False  # the requester had nothing left when we last asked
    stopped: int = 0  # running indexes stopped because the requester ended the claim
    last_sent: float = 0.0
    last_answer: float = 0.0
    ever_answered: bool = False  # a claim the requester never answered gives up as soon as a bid does

    def rate(self, now: float) -> float:
        """Indexes finished per second over the last second."""
        while self.finished_at and now - self.finished_at[0] > 1.0:
            self.finished_at.popleft()
        return len(self.finished_at)

    def want(self, now: float) -> int:
        """Enough to keep every slot busy for about two report intervals."""
        target = len(self.slots) + int(self.rate(now) * 2 * REPORT_INTERVAL)
        return max(0, target - len(self.queue) - len(self.running))

    def start_next(self, node_id: str, now: float) -> tuple[int, Execution] | None:
        """The next index to run and its execution (None: the queue is dry, ask for more, or every slot
        still held is busy: a claim the requester ran dry gave back its idle ones)."""
        if not self.queue or len(self.running) >= len(self.slots):
            return None
        index = self.queue.popleft()
        self.running.add(index)
        return index, Execution(id=f"{self.claim_id}-{index}", job_id=self.ann.sweep_id, node_id=node_id,
                                requester=self.ann.requester, created_at=now, updated_at=now,
                                spec=self.ann.spec.job_for(index))

    def finished(self, result: IndexResult, now: float) -> None:
        self.running.discard(result.index)
        self.results.append(result)
        self.finished_at.append(now)

    def next_report(self, now: float, heartbeat: float) -> float | None:
        """Seconds until the next report is due (0: now; a finished index may make it sooner), or None
        when the claim is over: the requester has nothing left and we nothing to report."""
        if self.exhausted and not self.queue and not self.running and not self.results:
            return None
        starving = self.want(now) > 0 and not self.queue and not (self.exhausted and self.running)
        since = now - self.last_sent
        if starving or since >= heartbeat or (self.results and since >= REPORT_INTERVAL):
            return 0.0
        return min(heartbeat, REPORT_INTERVAL if self.results else heartbeat) - since

    def take_batch(self, now: float) -> list[IndexResult]:
        """The results that fit in one report (each carries up to 64 KiB of stdout and of stderr)."""
        self.last_sent = now
        size, n = 0, 0
        for r in self.results:
            size += 256 + (len(r.result.stdout) + len(r.result.stderr) if r.result else 0) + len(r.error or "")
            if n and size > BATCH_BYTES:
                break
            n += 1
        batch, self.results = self.results[:n], self.results[n:]
        return batch

    def unsent(self, batch: list[IndexResult]) -> None:
        """The report did not get through: keep its results for the next one."""
        self.results[:0] = batch

    def answered(self, reply: Reply, want: int, now: float) -> list[int] | None:
        """The requester's verdict on a report: the indexes it granted, or None when it ended the claim."""
        self.last_answer, self.ever_answered = now, True
        if reply.verdict == "rejected":
            self.stopped = len(self.running)
            return None
        granted = self._within(reply.ranges, want)
        self.queue.extend(granted)
        self.exhausted = want > 0 and not granted
        return granted

    def _within(self, ranges: list[tuple[int, int]], want: int) -> list[int]:
        """The granted indexes this claim can take: inside the sweep and no more than it asked for.
        Whatever else a requester grants (an index past the end, a billion of them) is not run."""
        count, granted = self.ann.spec.count, []
        for start, end in ranges:
            start = max(start, 0)
            granted += range(start, min(end, count, start + want - len(granted)))
            if len(granted) >= want:
                break
        return granted
