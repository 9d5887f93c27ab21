"""What the REST API returns, shared by the node's API and the ``shoal`` SDK."""

from __future__ import annotations

from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, Field, field_validator

from jobs.events import Event, EventKind
from jobs.messages import NodeInfo
from jobs.model import Execution, Job, RunResult
from jobs.spec import JobSpec, Resources
from jobs.sweep import IndexRange, IndexRecord, Sweep, SweepSpec

MAX_PAGE = 1000  # jobs, sweeps or index records in one listing, at most
MAX_INDEX_PAGE = 10_000  # a sweep's index records in one listing (GET .../indexes), at most

class SubmitRequest(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # a validation error never echoes a secret_env

    spec: JobSpec

    @field_validator("spec")
    @classmethod
    def _admissible(cls, spec: JobSpec) -> JobSpec:
        """A new job has a finite deadline and inputs a node can fetch (stored jobs keep loading)."""
        problem = spec.submission_problem()
        if problem:
            raise ValueError(problem)
        return spec


class Phases(BaseModel):
    """Unix timestamps of each phase of a job, from the requester's own clock."""

    submitted: float | None = None
    announced: float | None = None
    first_bid: float | None = None
    accepted: float | None = None
    started: float | None = None
    proposed: float | None = None
    finished: float | None = None

    @classmethod
    def of(cls, events: Iterable[Event], executions: Iterable[Execution]) -> Phases:
        """Each phase's time: its first event (``started``: the earliest run any node reported)."""
        first: dict[EventKind, float] = {}
        for e in events:
            first.setdefault(e.kind, e.at)
        started = [x.result.started_at for x in executions if x.result and x.result.started_at]
        finished = next((first[k] for k in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)
                         if k in first), None)
        return cls(submitted=first.get(EventKind.CREATED), announced=first.get(EventKind.ANNOUNCED),
                   first_bid=first.get(EventKind.BID), accepted=first.get(EventKind.BID_ACCEPTED),
                   started=min(started) if started else None, proposed=first.get(EventKind.RESULTS_PROPOSED),
                   finished=finished)


class JobDescription(BaseModel):
    job: Job
    executions: list[Execution] = []
    phases: Phases = Phases()

    def shown_result(self) -> RunResult | None:
        """The result a job's logs and downloads show: the job's accepted (or cached) result, else a
        completed execution's, else any execution's that ran. The node serves this one's files and
        ``shoal get`` checks them against its CID."""
        if self.job.result is not None:
            return self.job.result
        ran = [x for x in self.executions if x.result is not None]
        ran.sort(key=lambda x: x.state != "completed")
        return ran[0].result if ran else None


class ContextStored(BaseModel):
    """A working directory stored for jobs: give it as input ``ipfs://<cid>`` at ``/context``."""

    cid: str


class JobList(BaseModel):
    jobs: list[Job]
    total: int


class Capacity(BaseModel):
    total: Resources
    free: Resources
    max_per_job: Resources


class NodeStatus(BaseModel):
    peer_id: str
    addrs: list[str]
    roles: list[str]
    engines: list[str]
    labels: dict[str, str] = {}  # what job selectors match (``shoal serve --label``)
    unavailable_engines: dict[str, str] = {}  # engine -> why this node does not offer it
    containment_notes: dict[str, str] = {}  # engine -> how this node holds its jobs less than it could, and why
    capacity: Capacity
    running: int
    backlog: int
    version: str


class PeerList(BaseModel):
    peers: list[str]


class Reputation(BaseModel):
    """What a requester thinks of a compute node, from the verified results it saw."""

    accepted: int = 0
    rejected: int = 0
    quarantined: bool = False  # its bids and claims are refused
    quarantined_until: float | None = None  # when it goes on probation
    probation: bool = False  # it takes work other nodes verify only (confidence 2 or more); its next rejection
    # quarantines it anew


class NodeList(BaseModel):
    nodes: list[NodeInfo]
    reputation: dict[str, Reputation] = {}  # by peer id: nodes whose results this requester verified


class ErrorBody(BaseModel):
    code: str
    message: str
    fields: list[str] = []


class ErrorResponse(BaseModel):
    error: ErrorBody


class SweepSubmitRequest(BaseModel):
    model_config = ConfigDict(hide_input_in_errors=True)  # a validation error never echoes a secret_env

    spec: SweepSpec

    @field_validator("spec")
    @classmethod
    def _admissible(cls, spec: SweepSpec) -> SweepSpec:
        problem = spec.job.submission_problem()
        if problem:
            raise ValueError(f"job.{problem}")
        return spec


class SweepDescription(BaseModel):
    """A sweep at a glance: counts per state and ranges of indexes, never one row per index."""

    sweep: Sweep
    ranges: list[IndexRange] = []
    ranges_truncated: bool = False  # more ranges than a description carries: page through /indexes


class SweepList(BaseModel):
    sweeps: list[Sweep]
    total: int


class IndexList(BaseModel):
    indexes: list[IndexRecord]
    total: int


class ShareRequest(BaseModel):
    """Let another client read one of your jobs or sweeps: its key, as ``shoal key show`` prints it."""

    key: str = Field(pattern=r"^[A-Za-z0-9_-]{43}=?$",
                     description="urlsafe base64 of the reader's raw 32-byte Ed25519 public key")


class Share(BaseModel):
    """A job or sweep ``id`` that the client ``client_id`` (key ``key``) may now read."""

    id: str
    key: str
    client_id: str
