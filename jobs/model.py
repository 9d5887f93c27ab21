"""Job and Execution records: what the store keeps and the API describes."""

from __future__ import annotations

import hashlib
import json

from pydantic import BaseModel, ConfigDict, Field

from jobs.spec import JobSpec
from jobs.states import ExecutionState, JobState, check_execution_transition, check_job_transition


class RunResult(BaseModel):
    """What an executor reports about one finished run."""

    model_config = ConfigDict(frozen=True)

    exit_code: int = 0
    stdout: str = ""  # the tail, capped; the full text is in the published results
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    cid: str | None = None  # published outputs (stdout, stderr, exitCode, declared outputs)
    output_sizes: dict[str, int] = {}  # bytes in each declared output (what success checks look at)
    started_at: float | None = None
    finished_at: float | None = None

    def digest(self) -> str:
        """What verification compares: the results' CID when published, else a hash of the outcome.

        Timestamps are not part of it: two honest nodes differ there.
        """
        if self.cid:
            return self.cid
        outcome = json.dumps([self.exit_code, self.stdout, self.stderr], separators=(",", ":")).encode()
        return "sha256:" + hashlib.sha256(outcome).hexdigest()


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    owner: str
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: str = ""
    requester: str = ""  # peer id of the node that orchestrates it
    attempt: int = 0  # bumped on every re-offer
    created_at: float
    updated_at: float
    revision: int = 0
    result: RunResult | None = None  # the accepted result, once the job completed (or failed with one)
    cached_from: str | None = None  # the job whose verified result this one reused, running nothing
    results_removed_at: float | None = None  # results unpinned after the retention time

    def transition(self, state: JobState, reason: str, now: float, **changes: object) -> Job:
        check_job_transition(self.state, state)
        return self.model_copy(
            update={"state": state, "reason": reason, "updated_at": now, "revision": self.revision + 1, **changes}
        )


class Execution(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    job_id: str
    node_id: str  # the compute node
    requester: str  # the requester node
    state: ExecutionState = ExecutionState.BIDDING
    reason: str = ""
    attempt: int = 0  # the job attempt this execution bid on
    result: RunResult | None = None
    error: str | None = None
    retryable: bool = False
    created_at: float
    updated_at: float
    revision: int = 0
    spec: JobSpec | None = Field(None, description="kept on the compute side so a restarted node can report")
    results_removed_at: float | None = None  # the compute node unpinned the results it published
    requester_addrs: list[str] = []

    def transition(self, state: ExecutionState, reason: str, now: float, **changes: object) -> Execution:
        check_execution_transition(self.state, state)
        return self.model_copy(
            update={"state": state, "reason": reason, "updated_at": now, "revision": self.revision + 1, **changes}
        )
