"""Event records: the append-only log the store keeps and the API streams."""

from __future__ import annotations

from enum import StrEnum

from pydantic import BaseModel, ConfigDict

from jobs.states import JobState


class EventKind(StrEnum):
    CREATED = "Created"
    ANNOUNCED = "Announced"
    BID = "Bid"
    BID_ACCEPTED = "BidAccepted"
    BID_REJECTED = "BidRejected"
    RUNNING = "Running"
    RESULTS_PROPOSED = "ResultsProposed"
    RESULTS_ACCEPTED = "ResultsAccepted"
    RESULTS_REJECTED = "ResultsRejected"
    RESULTS_PUBLISHED = "ResultsPublished"
    REOFFERED = "Reoffered"
    CLAIMED = "Claimed"  # a compute node took a range of a sweep's indexes
    RETRIED = "Retried"  # failed indexes of a sweep were put back to run again
    ERROR = "Error"
    CANCELLED = "Cancelled"
    COMPLETED = "Completed"
    FAILED = "Failed"

    @property
    def is_terminal(self) -> bool:
        """The last event of a job: a stream that saw it is finished, not broken."""
        return self in (EventKind.COMPLETED, EventKind.FAILED, EventKind.CANCELLED)


def ending(state: JobState) -> EventKind:
    """The event that ends a job or sweep in terminal ``state``."""
    return _ENDINGS[state]


_ENDINGS = {JobState.COMPLETED: EventKind.COMPLETED, JobState.FAILED: EventKind.FAILED,
            JobState.CANCELLED: EventKind.CANCELLED}


class Event(BaseModel):
    model_config = ConfigDict(frozen=True)

    seq: int = 0  # assigned by the store; SSE event id
    job_id: str
    at: float
    kind: EventKind
    execution_id: str | None = None
    node_id: str | None = None
    message: str = ""
