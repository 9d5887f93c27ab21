"""The executor interface. Inputs arrive already prepared by storage; executors never fetch."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import trio

from jobs import JobSpec, Resources, RunResult, ShoalError
from jobs.messages import LIVE_CAP

DISK_POLL = 0.1  # seconds between checks of what a job has written to its outputs against resources.disk
# Files and folders a job's outputs may hold, also while it runs, unless the node says otherwise
# (--max-output-entries): Kubo took over a minute to add 300,000 empty files (the publish timed out, and the job
# ran again on every node), and a job making files without end used up the inodes of the node's file system.
MAX_OUTPUT_ENTRIES = 50_000


@dataclass(frozen=True)
class Mount:
    """A host path the job sees at ``target`` (inputs read-only; outputs writable)."""

    source: Path
    target: str
    read_only: bool = True


Stream = Literal["stdout", "stderr"]


class LiveOutput:
    """A run's output as it is written, for ``shoal logs -f``: executors ``write`` (from any thread),
    the compute node ``take``s what is new. Bounded: past ``cap`` bytes of a stream, the rest is left
    to the final result, which stays the record."""

    def __init__(self, cap: int = LIVE_CAP) -> None:
        self.cap = cap
        self._lock = threading.Lock()
        self._pending: dict[Stream, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
        self._written: dict[Stream, int] = {"stdout": 0, "stderr": 0}

    def write(self, stream: Stream, data: bytes) -> None:
        with self._lock:
            room = self.cap - self._written[stream]
            if room > 0 and data:
                self._pending[stream] += data[:room]
                self._written[stream] += min(room, len(data))

    def take(self, stream: Stream) -> tuple[int, bytes]:
        """(offset, bytes) written since the last take; offset counts from the start of the stream."""
        with self._lock:
            data = bytes(self._pending[stream])
            self._pending[stream].clear()
            return self._written[stream] - len(data), data

    def give_back(self, stream: Stream, offset: int, data: bytes) -> None:
        """Put back what could not be delivered, in front of what came since (so order holds)."""
        with self._lock:
            assert offset == self._written[stream] - len(self._pending[stream]) - len(data)
            self._pending[stream][:0] = data


def disk_limit(spec: JobSpec, limits: Resources | None) -> int:
    """Bytes of disk a job's inputs and outputs may take, what its node reserved for it: its
    ``resources.disk``, else ``DEFAULT_DISK`` held to the node's per-job maximum ``limits`` (no ``limits``:
    none, 0)."""
    return spec.resources.reserved(limits).disk


@dataclass(frozen=True)
class RunRequest:
    job_id: str
    execution_id: str
    spec: JobSpec
    work_dir: Path  # scratch space owned by this execution, removed afterwards
    outputs_dir: Path  # declared output NAME lives at outputs_dir / NAME, seen by the job at its path
    inputs: tuple[Mount, ...] = ()  # already fetched by storage, seen by the job at their paths
    seed: bytes = b""  # deterministic engines seed clocks and randomness from this (same on every node)
    staged_bytes: int = 0  # disk the staged inputs take: they count against resources.disk
    live: LiveOutput | None = None  # where output also goes as it is written (None: only to the result)
    # Whose run this is (the requester and its job or sweep): runs of one owner may share a worker process
    # (a sweep's indexes), runs of different owners never do. Empty: share with nobody.
    owner: str = ""
    # The node's per-job maximum (``--limit-job-*``): a job that states no disk (0, the default) is held to
    # ``DEFAULT_DISK``, or to the node's per-job disk where that is less.
    limits: Resources | None = None
    max_entries: int = MAX_OUTPUT_ENTRIES  # files and folders its outputs may hold, also while it runs

    @property
    def disk_limit(self) -> int:
        return disk_limit(self.spec, self.limits)

    @property
    def write_limit(self) -> int:
        """Bytes the job may write to its outputs: ``disk_limit`` less its staged inputs (0: no limit)."""
        disk = self.disk_limit
        return max(1, disk - self.staged_bytes) if disk else 0

    def output_mounts(self) -> list[Mount]:
        return [Mount(self.outputs_dir / o.name, o.path, read_only=False) for o in self.spec.outputs]


class ExecutorError(ShoalError):
    """The executor could not run the job (engine missing, daemon gone). The job may succeed elsewhere.

    A job that ran and exited non-zero is *not* an ExecutorError: that is a RunResult.
    """

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


class Executor(Protocol):
    """One engine. ``name``, ``is_installed`` and ``run`` are required; the rest are optional
    capabilities whose defaults here say "none": an executor subclasses ``Executor`` to inherit them.
    """

    name: str
    needs_workspace: bool = True  # False: it reads and writes no files, so the node creates no scratch dir
    max_parallel: int | None = None  # runs worth starting at once on this node (None: as capacity allows)
    # seconds ``run`` may spend getting a worker ready (an interpreter's start) before the job's code starts:
    # an executor that sets it holds the job to its ``timeout`` itself, from then (raising trio.TooSlowError)
    start_allowance: float = 0.0

    def is_installed(self) -> bool:
        """Whether this node can run the engine now; decides what the node advertises and bids on."""
        ...

    def problem(self) -> str | None:
        """Why the engine is not offered here, for the operator (None: nothing to say)."""
        return None

    def containment_note(self) -> str | None:
        """How this node holds the engine's jobs less than it could, and why, for the operator (None: nothing
        to say). Blocking the first time."""
        return None

    async def prepare(self, request: RunRequest) -> None:
        """Get ready to run ``request`` (pull an image, compile a module), outside the job's timeout."""

    async def run(self, request: RunRequest) -> RunResult:
        """Run to completion. Cancellation (timeout, job cancel) must stop the work and clean up."""
        ...

    async def cleanup_leftovers(self) -> list[str]:
        """Remove what a crashed run of this node left behind (e.g. containers); what was removed."""
        return []

    async def run_pool(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep warm workers until cancelled (e.g. loaded interpreters); by default there are none."""
        task_status.started()
