"""Job and Execution records: what the store keeps and the API describes."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from jobs.spec import JobSpec
from jobs.states import ExecutionState, JobState, check_execution_transition, check_job_transition

R = TypeVar("R", bound=BaseModel)

# A job, sweep, execution or claim id (``j-``, ``s-``, ``e-``, ``c-`` + hex), a peer id (base58) or a client id
# (``c`` + hex). Peers and nodes send them, and the CLI writes them to terminals, into rich markup and into
# directory names: letters, digits and ``.``, ``_``, ``-`` only, never a separator, a control or a bracket.
Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]


def moved(record: R, state: object, reason: str, now: float, changes: dict[str, object]) -> R:
    """``record`` in ``state`` (a job, execution or sweep whose move the transition table allowed):
    the reason and time of the move, the next revision, and any other ``changes``."""
    update = {"state": state, "reason": reason, "updated_at": now, "revision": record.revision + 1, **changes}
    return record.model_copy(update=update)


MAX_CAPTURE = 1 << 20  # bytes of stdout and of stderr an executor keeps, its last ones; beyond that, truncated


class RunResult(BaseModel):
    """What an executor reports about one finished run."""

    model_config = ConfigDict(frozen=True, allow_inf_nan=False)  # a peer's times are numbers the CLI can show

    exit_code: int = 0
    stdout: str = ""  # the tail, capped; the full text is in the published results
    stderr: str = ""
    stdout_truncated: bool = False
    stderr_truncated: bool = False
    # published outputs (stdout, stderr, exitCode, declared outputs): a CID's letters and digits only, as a
    # peer's text that reaches terminals and paths (it once carried escape sequences to the user's terminal)
    cid: str | None = Field(None, pattern=r"^[A-Za-z0-9]{1,128}$")
    # bytes in each declared output (what success checks look at), by its name as ``OutputSpec`` allows it
    output_sizes: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9._-]{1,64}$")], Annotated[int, Field(ge=0)]] = \
        Field({}, max_length=256)
    started_at: float | None = None
    finished_at: float | None = None
    engine: str = ""  # the executor that ran it (a --noop node runs every engine as noop)
    engine_version: str = ""

    def digest(self) -> str:
        """What the compute node signs and verification compares: every field the requester records.

        The results' CID, the exit code, hashes of the stdout and stderr tails, the output sizes,
        the truncation flags, the engine and its version. A result whose fields were altered has
        another digest, so no field is taken from a message on trust. Timestamps are not part of
        it: two honest nodes differ there.
        """
        material = {
            "cid": self.cid, "exit_code": self.exit_code,
            "stdout": _sha256(self.stdout), "stderr": _sha256(self.stderr),
            "stdout_truncated": self.stdout_truncated, "stderr_truncated": self.stderr_truncated,
            "output_sizes": self.output_sizes, "engine": self.engine, "engine_version": self.engine_version,
        }
        return "sha256:" + _sha256(json.dumps(material, sort_keys=True, separators=(",", ":")))

    def last_line(self) -> str:
        """The last line of stdout that is not blank: what the program printed last (often its answer;
        a ``Client.map`` runner's reply)."""
        return next((line for line in reversed(self.stdout.splitlines()) if line.strip()), "")

    def files(self) -> dict[str, str]:
        """The results directory's own files, by name, with this record's text (a published directory
        also holds ``outputs/<name>`` for each declared output)."""
        return {"stdout": self.stdout, "stderr": self.stderr, "exitCode": str(self.exit_code)}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


class Job(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: Identifier
    owner: Identifier
    spec: JobSpec
    state: JobState = JobState.PENDING
    reason: str = ""
    requester: Identifier | Literal[""] = ""  # peer id of the node that orchestrates it
    attempt: int = 0  # bumped on every re-offer
    retried: int = 0  # runs that failed and were run again (``spec.retries`` allows how many)
    first_attempt: int = 0  # of the current run: executions of earlier attempts belong to runs that failed
    created_at: float
    updated_at: float
    revision: int = 0
    result: RunResult | None = None  # the accepted result, once the job completed (or failed with one)
    cached_from: str | None = None  # the job whose verified result this one reused, running nothing
    results_removed_at: float | None = None  # results unpinned after the retention time

    def transition(self, state: JobState, reason: str, now: float, **changes: object) -> Job:
        check_job_transition(self.state, state)
        return moved(self, state, reason, now, changes)


class Execution(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: Identifier
    job_id: Identifier
    node_id: Identifier  # the compute node
    requester: Identifier  # the requester node
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
        return moved(self, state, reason, now, changes)
